"""Particles flowing to a target by gradient descent on the Sinkhorn divergence.

    python examples/sinkhorn_flow.py [--n 2000] [--steps 30]

Each step moves the source cloud along -grad S(x, y) (computed through the envelope theorem,
no unrolled Sinkhorn loop) and prints the divergence, which falls towards 0.
"""

import argparse
import math

import torch

import ot_flow


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--eps", type=float, default=0.01)
    args = parser.parse_args()
    torch.manual_seed(0)
    # Target: a ring; source: a small Gaussian blob off centre.
    angle = 2 * math.pi * torch.rand(args.n)
    y = torch.stack([angle.cos(), angle.sin()], dim=1) * 2 + 0.05 * torch.randn(args.n, 2)
    x = 0.3 * torch.randn(args.n, 2) + torch.tensor([3.0, 0.0])
    for step in range(args.steps + 1):
        x.requires_grad_(True)
        loss = ot_flow.sinkhorn_divergence(x, y, eps=args.eps)
        (grad,) = torch.autograd.grad(loss, x)
        if step % 5 == 0:
            print(f"step {step:3d}  S(x, y) = {loss.item():.5f}")
        # grad_x S = a_i (T_aa(x_i) - T_ab(x_i)): a step of n * lr moves each particle by lr
        # times its displacement towards the target's barycentric image.
        x = (x - 0.5 * args.n * grad).detach()


if __name__ == "__main__":
    main()
