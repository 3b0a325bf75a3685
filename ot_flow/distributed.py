"""The torch.distributed plumbing of the sharded solvers and the data streams: which rank and
which rows draw what (and reproducible seeds for them), gathering blocks of uneven size, sums
over ranks, and a ring that passes every rank's shard round all ranks while the current one
is being used. NCCL on GPUs, Gloo on CPUs: tensors stay on the
device of the data they carry.
"""

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["rank_and_world", "derived_seed", "checked_together", "checked_on_ranks", "same_on_all_ranks", "group_info", "even_blocks", "all_gather_uneven", "all_sum", "broadcast_int", "broadcast_ints", "shard_sizes", "ring"]


def group_info(process_group):
    """(rank, world size) in `process_group` (the default group for ``dist.group.WORLD``)."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("argument 'process_group': torch.distributed is not initialised "
                         "(call torch.distributed.init_process_group first, or torchrun)")
    if process_group is dist.GroupMember.NON_GROUP_MEMBER or (
            isinstance(process_group, int) and process_group == dist.GroupMember.NON_GROUP_MEMBER):
        raise ValueError("argument 'process_group': this process is not a member of the group "
                         "(torch.distributed.new_group returned NON_GROUP_MEMBER here)")
    if not isinstance(process_group, dist.ProcessGroup):
        raise ValueError(f"argument 'process_group' must be a torch.distributed ProcessGroup, "
                         f"got {type(process_group).__name__}")
    rank = dist.get_rank(process_group)
    if rank < 0:
        raise ValueError("argument 'process_group': this process is not a member of the group")
    return rank, dist.get_world_size(process_group)


def even_blocks(n, world):
    """[(start, end)] of `world` contiguous blocks of range(n), sizes differing by at most one."""
    base, extra = divmod(n, world)
    bounds, start = [], 0
    for r in range(world):
        end = start + base + (r < extra)
        bounds.append((start, end))
        start = end
    return bounds


def all_gather_uneven(block, sizes, process_group, dim=0):
    """Concatenation over ranks of each rank's `block` (sizes[r] rows on rank r), along `dim`
    (1: the rows of a batch of problems (B, rows, ...))."""
    if dim:
        return all_gather_uneven(block.movedim(dim, 0), sizes, process_group).movedim(0, dim)
    width = max(sizes)
    padded = block.new_zeros((width, *block.shape[1:]))
    padded[: block.shape[0]] = block
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous(), group=process_group)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def all_sum(values, process_group):
    """Sums a float64 tensor over ranks (every rank gets the same bits)."""
    values = values.double().clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM, group=process_group)
    return values


def broadcast_int(value, device, process_group):
    """Rank 0's value of an integer (a seed), on every rank."""
    return broadcast_ints([value], device, process_group)[0]


def broadcast_ints(values, device, process_group):
    """Rank 0's values of a list of integers (seeds), on every rank, in one broadcast."""
    t = torch.tensor(values, dtype=torch.long, device=device)
    dist.broadcast(t, src=dist.get_global_rank(process_group, 0), group=process_group)
    return [int(v) for v in t.tolist()]


def shard_sizes(n_local, device, process_group):
    """The number of rows every rank holds, as a list."""
    world = dist.get_world_size(process_group)
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([n_local], dtype=torch.long, device=device), group=process_group)
    return [int(s) for s in sizes]


def ring(payload, sizes, process_group, dim=0):
    """Yields (owner rank, payload of that owner's shard) for every rank's shard, own first.

    `payload` is this rank's shard (sizes[rank] rows along `dim`: 1 for a batch of problems
    (B, rows, ...)); it travels to the next rank while the caller works on the current one, so
    compute and communication overlap. Shards are padded to max(sizes) rows on the wire and
    trimmed on the way out.
    """
    if dim:
        for owner, shard in ring(payload.movedim(dim, 0), sizes, process_group):
            yield owner, shard.movedim(0, dim)
        return
    rank, world = dist.get_rank(process_group), dist.get_world_size(process_group)
    width = max(sizes)
    current = payload.new_zeros((width, *payload.shape[1:]))
    current[: payload.shape[0]] = payload
    spare = torch.empty_like(current)
    send_to = dist.get_global_rank(process_group, (rank + 1) % world)
    recv_from = dist.get_global_rank(process_group, (rank - 1) % world)
    for step in range(world):
        owner = (rank - step) % world
        requests = []
        if step < world - 1:
            requests = dist.batch_isend_irecv([dist.P2POp(dist.isend, current, send_to, process_group),
                                               dist.P2POp(dist.irecv, spare, recv_from, process_group)])
        yield owner, current[: sizes[owner]]
        for request in requests:
            request.wait()
        current, spare = spare, current


def checked_together(check, process_group):
    """Runs `check()` (argument checks) on every rank and raises the same ValueError on all of
    them when any rank's check failed, instead of leaving the others waiting in a collective."""
    try:
        result, message = check(), None
    except ValueError as err:
        result, message = None, str(err)
    messages = [None] * dist.get_world_size(process_group)
    dist.all_gather_object(messages, message, group=process_group)
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if failed:
        raise ValueError("; ".join(f"rank {r}: {m}" for r, m in failed))
    return result


def checked_on_ranks(check, process_group):
    """``check()`` on this process when ``process_group`` is None (a solve on one process), else on
    every rank of the group together (:func:`checked_together`)."""
    return check() if process_group is None else checked_together(check, process_group)


def same_on_all_ranks(settings, what, process_group):
    """Raises the same ValueError on every rank unless every rank passed equal `settings` (a
    dict of name -> value): ranks that disagree on shapes or parameters would otherwise mix
    incompatible messages or wait for each other forever."""
    everyone = [None] * dist.get_world_size(process_group)
    dist.all_gather_object(everyone, settings, group=process_group)
    for rank, other in enumerate(everyone):
        differ = sorted(k for k in settings if other.get(k) != settings[k])
        if differ:
            detail = ", ".join(f"{k}: {settings[k]!r} here, {other.get(k)!r} on rank {rank}" for k in differ)
            raise ValueError(f"{what}: the ranks of 'process_group' disagree ({detail})")


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
