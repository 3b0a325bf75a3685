"""Data plumbing: datasets that feed coupled pairs to a DataLoader."""

from ot_flow.data.ot_pair_dataset import OTPairDataset

__all__ = ["OTPairDataset"]
