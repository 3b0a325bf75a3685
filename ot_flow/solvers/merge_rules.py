"""How partial results over column chunks and over ranks combine: the one home of each rule.

The solvers and samplers stream the columns (target points) in chunks, or pass column shards
round the ranks, and every pass ends by merging what each part found. Written once here, the
rules cannot disagree with themselves:

- **best** (argmax of a score, MIPS or Gumbel-max): the larger value wins and equal values go
  to the lower global index, whatever the order the parts arrive in (a ring visits shards
  starting from each rank's own);
- **top two**: the two largest scores and the index of the best, with the same tie rule;
- **log-sum-exp**: the parts' log-sum-exps merge by ``logaddexp``;
- **softmax-weighted means**: (mean, lse) pairs merge by their lse, the weights of a
  log-sum-exp merge.

Every function takes (n,)-shaped per-row tensors; an empty part is a value of -inf and an
index of -1 (nothing found), which every merge keeps only while nothing better arrived.
"""

import math

import torch
import torch.distributed as dist

__all__ = ["merge_best", "best_of", "best_over_ranks", "merge_top_two", "top_two_of", "top_two_over_ranks",
           "lse_of", "lse_over_ranks", "merge_means", "means_of"]


def _nothing(n, device, width=None):
    shape = (n,) if width is None else (n, width)
    return (torch.full(shape, -math.inf, dtype=torch.float64, device=device),
            torch.full((n,), -1, dtype=torch.long, device=device))


def _wins(value, index, other_value, other_index):
    """Whether `other` beats the current best: a larger value, or an equal one at a lower index
    (nothing found, index -1, is never replaced by an equal -inf)."""
    return (other_value > value) | ((other_value == value) & (other_index < index))


def _gather(t, process_group):
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(process_group))]
    dist.all_gather(parts, t.contiguous(), group=process_group)
    return parts


def merge_best(value, index, other_value, other_index):
    """The better of two (value, index) per row: the larger value, ties to the lower index."""
    wins = _wins(value, index, other_value, other_index)
    return torch.where(wins, other_value, value), torch.where(wins, other_index, index)


def best_of(parts, n, device):
    """(value float64 (n,), index (n,)) of the winner over `parts`, an iterable of (values, global
    indices) per row; -inf and -1 for a row that no part reached."""
    value, index = _nothing(n, device)
    for part_value, part_index in parts:
        value, index = merge_best(value, index, part_value.double(), part_index)
    return value, index


def best_over_ranks(value, index, process_group):
    """The winner over every rank's (value, index), the same on every rank."""
    return best_of(zip(_gather(value, process_group), _gather(index, process_group)), value.shape[0], value.device)


def merge_top_two(top, index, other_top, other_index):
    """Top two scores (n, 2) and the best's index over the union of two sets of targets."""
    wins = _wins(top[:, 0], index, other_top[:, 0], other_index)
    first = torch.where(wins, other_top[:, 0], top[:, 0])
    second = torch.where(wins, torch.maximum(top[:, 0], other_top[:, 1]), torch.maximum(top[:, 1], other_top[:, 0]))
    return torch.stack([first, second], 1), torch.where(wins, other_index, index)


def top_two_of(parts, n, device):
    """(top two scores float64 (n, 2), index of the best) over `parts`, an iterable of (scores
    (n, k) with k in {1, 2}, sorted descending, global index of each row's first score)."""
    top, index = _nothing(n, device, width=2)
    for scores, part_index in parts:
        scores = torch.nn.functional.pad(scores.double(), (0, 2 - scores.shape[1]), value=-math.inf)
        top, index = merge_top_two(top, index, scores, part_index)
    return top, index


def top_two_over_ranks(top, index, process_group):
    """Top two and the best's index over every rank's (top, index), the same on every rank."""
    return top_two_of(zip(_gather(top, process_group), _gather(index, process_group)), top.shape[0], top.device)


def lse_of(parts, like):
    """log sum exp over `parts`, an iterable of per-row log-sum-exps (-inf for none), in like's
    dtype and device."""
    total = torch.full((like.shape[0],), -math.inf, dtype=like.dtype, device=like.device)
    for part in parts:
        total = torch.logaddexp(total, part.to(like.dtype))
    return total


def lse_over_ranks(row_lse, process_group):
    """The log-sum-exp over every rank's per-row log-sum-exps, the same on every rank."""
    return torch.logsumexp(torch.stack(_gather(row_lse, process_group)), dim=0)


def merge_means(mean, total, part_mean, part_lse):
    """Two softmax-weighted means over disjoint column sets, each with its log-sum-exp of weights:
    the mean over their union and its log-sum-exp."""
    merged = torch.logaddexp(total, part_lse)
    keep = torch.where(torch.isinf(merged), 0.0, torch.exp(total - merged))
    return keep[:, None] * mean + (1 - keep)[:, None] * part_mean, merged


def means_of(parts, like):
    """(mean, lse) of a softmax-weighted mean over column blocks, from each block's (mean, lse);
    `like` (n, width) gives the shape, dtype and device."""
    mean = torch.zeros_like(like)
    total = torch.full((like.shape[0],), -math.inf, dtype=like.dtype, device=like.device)
    for part_mean, part_lse in parts:
        mean, total = merge_means(mean, total, part_mean, part_lse)
    return mean, total
