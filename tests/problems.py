"""Random inputs of the streaming ops: points x (n, d), y (m, d) and a bias h (m,)."""

import torch


def random_problem(n, m, d, dtype, device="cpu", seed=None, spread=1.0):
    """Fresh inputs (a new seed each call unless one is given); `spread` scales the bias."""
    g = torch.Generator().manual_seed(seed if seed is not None else torch.seed())
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randn(m, d, generator=g, dtype=dtype)
    h = spread * torch.randn(m, generator=g, dtype=dtype)
    return x.to(device), y.to(device), h.to(device)
