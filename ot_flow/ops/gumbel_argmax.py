"""ot_flow.ops.gumbel_argmax: one draw per row from an implicit row-softmax (Gumbel-max)."""

import torch

from ot_flow.ops import _args, precision as _precision

__all__ = ["gumbel_argmax", "seed_from"]

_SEED_RANGE = 1 << 62


def seed_from(generator=None):
    """A 62-bit seed drawn from ``generator`` (default: torch's global CPU generator, which
    ``torch.manual_seed`` sets). Drawing advances the generator, so consecutive calls differ and
    a run is reproducible from its seed."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(
            f"ot_flow.gumbel_argmax: argument 'generator' must be a torch.Generator or None, got "
            f"{type(generator).__name__} {generator!r} (a fixed integer goes in 'seed')"
        )
    gen = torch.default_generator if generator is None else generator
    return int(torch.randint(0, _SEED_RANGE, (), generator=gen, device=gen.device))


def gumbel_argmax(x, y, h=None, scale=1.0, *, generator=None, seed=None, offset=0, row_offset=0,
                  col_offset=0, return_value=False, precision="highest", validate=True):
    """For each row i one column ``j ~ softmax_j(scale * <x_i, y_j> + h_j)``, streamed.

    Computes ``argmax_j scale * <x_i, y_j> + h_j + G_ij`` with ``G_ij`` Gumbel(0, 1) noise that
    is a pure function of ``(seed, offset, row_offset + i, col_offset + j)``: the draw is the
    same for any tiling, thread count or device, and a shard of rows or columns (given its
    offsets) draws exactly what the unsharded call draws for it.

    Args:
        x: (n, d) float16/bfloat16/float32/float64 points (rows; 16-bit ones computed in float32).
        y: (m, d) points (columns), same dtype and device.
        h: optional (m,) bias; ``-inf`` entries are never drawn.
        scale: the factor on the dot products (``1 / eps`` for a Sinkhorn coupling).
        generator: where the seed comes from when ``seed`` is None (default: torch's global
            CPU generator, whatever the device of ``x``).
        seed, offset: the key of the noise, integers in [-2**63, 2**63 - 1] (the int64 range); a
            fixed seed gives a fixed draw, and distinct offsets give independent draws with one seed.
        row_offset, col_offset: the global index of the first row of ``x`` and of ``y``.
        return_value: also return the winning perturbed logits (float64), with which draws
            over shards of columns merge exactly (larger value wins, lower index on ties).
        precision: how the dot products are formed, ``"highest"``, ``"tf32"`` or ``"bf16"`` (see
            :mod:`ot_flow.ops.precision`); the draw is exact only where the logits are.
        validate: ``False`` skips the checks that read the values of the inputs (NaN, Inf, the
            range of the scores; a host synchronisation per call on CUDA), as
            :func:`ot_flow.ops.lse`'s: for callers that checked the data once (the solvers).

    Batched: x (B, n, d), y (B, m, d), h (B, m); ``scale`` one number or B numbers (the op's
    ``scales``); ``seed`` one integer or B integers (the op's ``seeds``), and with ``seed=None``
    ``generator`` one generator (one seed drawn, used by every problem) or a sequence of B
    generators (problem b's seed drawn from generator b). The noise is keyed on (seed, offset,
    row, column) only, so problem b draws exactly what the 2-D call on (x[b], y[b], h[b]) draws
    with its seed. Outputs are (B, n).

    Returns:
        LongTensor (n,) of column indices (-1 for a row whose every bias is -inf), and with
        ``return_value`` the (n,) float64 values, whatever the inputs' dtype. Neither is
        differentiable.
    """
    op = "ot_flow.gumbel_argmax"
    if seed is None:
        if isinstance(generator, (list, tuple)):
            seed = [seed_from(g) for g in generator]
        else:
            seed = seed_from(generator)
    scale, scales = _args.per_problem(op, "scale", scale, x)
    seed, seeds = _args.per_problem(op, "seed", seed, x, kind=lambda name, v: _args.integer(op, name, v), unused=0)
    index, value = torch.ops.ot_flow.gumbel_argmax.default(
        x, y, h, scale, seed, _args.integer(op, "offset", offset),
        _args.integer(op, "row_offset", row_offset), _args.integer(op, "col_offset", col_offset), scales, seeds,
        _precision.checked(op, precision), bool(validate)
    )
    return (index, value) if return_value else index


@torch.library.register_fake("ot_flow::gumbel_argmax")
def _gumbel_argmax_fake(x, y, h=None, scale=1.0, seed=0, offset=0, row_offset=0, col_offset=0, scales=None,
                        seeds=None, precision="highest", validate=True):
    _args.streaming_inputs("ot_flow.gumbel_argmax", x, y, h, scales=scales)
    _precision.checked("ot_flow.gumbel_argmax", precision)
    torch._check(seeds is None or (x.dim() == 3 and len(seeds) == x.shape[0]),
                 lambda: "ot_flow.gumbel_argmax: 'seeds' must hold one seed per problem of a batched call")
    shape = x.shape[:-1]
    return x.new_empty(shape, dtype=torch.long), x.new_empty(shape, dtype=torch.float64)


# The draw is piecewise constant in the inputs and the value a merge key: neither output is
# differentiable, so they are marked as such (an attempt to backpropagate through them fails
# with "does not require grad" instead of silently giving no gradient).


def _setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(*output)


def _backward(ctx, grad_index, grad_value):
    return (None,) * 12  # nothing flows back: the outputs are marked non-differentiable


torch.library.register_autograd("ot_flow::gumbel_argmax", _backward, setup_context=_setup_context)
