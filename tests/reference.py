"""Dense float64 references of the streaming ops, for small inputs only."""

import torch


def lse_reference(x, y, h=None, scale=1.0):
    logits = scale * (x.double() @ y.double().T)
    if h is not None:
        logits = logits + h.double()
    return torch.logsumexp(logits, dim=1)


def dense_sinkhorn(cost, a, b, eps, iters=100_000, tol=1e-12):
    """Plain log-domain Sinkhorn on a dense float64 cost matrix: (f, g, P)."""
    cost, a, b = cost.double(), a.double(), b.double()
    f = torch.zeros_like(a)
    g = torch.zeros_like(b)
    for _ in range(iters):
        f = -eps * torch.logsumexp((g[None, :] - cost) / eps + b.log()[None, :], dim=1)
        g = -eps * torch.logsumexp((f[:, None] - cost) / eps + a.log()[:, None], dim=0)
        plan = a[:, None] * b[None, :] * torch.exp((f[:, None] + g[None, :] - cost) / eps)
        if (plan.sum(1) - a).abs().sum() < tol:
            break
    return f, g, plan
