"""Who draws what: the rank and world size a dataset serves, and seeds derived from tuples of
integers (base seed, epoch, round or rank, worker), so that every stream is reproducible and
streams with different keys are independent."""

import numpy as np
import torch

__all__ = ["rank_and_world", "derived_seed"]


def rank_and_world(rank, world_size):
    """(rank, world_size): as given, else from torch.distributed when initialised, else (0, 1)."""
    if rank is None and world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1
    if rank is None or world_size is None:
        raise ValueError("arguments 'rank' and 'world_size' go together: give both or neither")
    if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
        raise ValueError(f"arguments 'rank' and 'world_size' must satisfy 0 <= rank < world_size, got {rank}, {world_size}")
    return rank, world_size


def derived_seed(*keys):
    """A 63-bit seed from non-negative integer keys (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> 1)
