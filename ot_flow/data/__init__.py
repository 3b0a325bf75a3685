"""Data plumbing (fourth floor: on the samplers): map-style datasets that feed coupled pairs to a
DataLoader, with DDP sharding and resumable epochs."""

from ot_flow.data.ot_pair_dataset import OTPairDataset
from ot_flow.data.semidiscrete_pair_dataset import SemidiscretePairDataset

__all__ = ["OTPairDataset", "SemidiscretePairDataset"]
