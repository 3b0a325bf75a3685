"""ot_flow.ops.gumbel_argmax: one draw per row from an implicit row-softmax (Gumbel-max)."""

import torch

__all__ = ["gumbel_argmax", "seed_from"]

_SEED_RANGE = 1 << 62


def seed_from(generator=None):
    """A 62-bit seed drawn from ``generator`` (default: torch's global CPU generator, which
    ``torch.manual_seed`` sets). Drawing advances the generator, so consecutive calls differ and
    a run is reproducible from its seed."""
    gen = torch.default_generator if generator is None else generator
    return int(torch.randint(0, _SEED_RANGE, (), generator=gen, device=gen.device))


def gumbel_argmax(x, y, h=None, scale=1.0, *, generator=None, seed=None, offset=0, row_offset=0,
                  col_offset=0, return_value=False):
    """For each row i one column ``j ~ softmax_j(scale * <x_i, y_j> + h_j)``, streamed.

    Computes ``argmax_j scale * <x_i, y_j> + h_j + G_ij`` with ``G_ij`` Gumbel(0, 1) noise that
    is a pure function of ``(seed, offset, row_offset + i, col_offset + j)``: the draw is the
    same for any tiling, thread count or device, and a shard of rows or columns (given its
    offsets) draws exactly what the unsharded call draws for it.

    Args:
        x: (n, d) float32/float64 points (rows).
        y: (m, d) points (columns), same dtype and device.
        h: optional (m,) bias; ``-inf`` entries are never drawn.
        scale: the factor on the dot products (``1 / eps`` for a Sinkhorn coupling).
        generator: where the seed comes from when ``seed`` is None (default: torch's global
            CPU generator, whatever the device of ``x``).
        seed, offset: the key of the noise; a fixed seed gives a fixed draw, and distinct
            offsets give independent draws with one seed.
        row_offset, col_offset: the global index of the first row of ``x`` and of ``y``.
        return_value: also return the winning perturbed logits (float64), with which draws
            over shards of columns merge exactly (larger value wins, lower index on ties).

    Returns:
        LongTensor (n,) of column indices (-1 for a row whose every bias is -inf), and with
        ``return_value`` the (n,) float64 values.
    """
    if seed is None:
        seed = seed_from(generator)
    index, value = torch.ops.ot_flow.gumbel_argmax.default(
        x, y, h, float(scale), int(seed), int(offset), int(row_offset), int(col_offset)
    )
    return (index, value) if return_value else index


@torch.library.register_fake("ot_flow::gumbel_argmax")
def _gumbel_argmax_fake(x, y, h=None, scale=1.0, seed=0, offset=0, row_offset=0, col_offset=0):
    torch._check(x.dim() == 2 and y.dim() == 2, lambda: "ot_flow.gumbel_argmax: 'x' and 'y' must be 2-D")
    torch._check(x.shape[1] == y.shape[1], lambda: "ot_flow.gumbel_argmax: 'x' and 'y' must have the same dimension")
    torch._check(x.dtype == y.dtype, lambda: "ot_flow.gumbel_argmax: 'x' and 'y' must have one dtype")
    if h is not None:
        torch._check(h.shape == (y.shape[0],), lambda: "ot_flow.gumbel_argmax: 'h' must have shape (m,)")
    n = x.shape[0]
    return x.new_empty(n, dtype=torch.long), x.new_empty(n, dtype=torch.float64)
