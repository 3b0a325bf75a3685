"""Velocity networks v(x, t): an MLP with Fourier time features (seed paper 002) and a small UNet
for images. Both take x of shape (B, *event_shape) and t of shape (B,) and return a tensor
shaped like x."""

import math

import torch
from torch import nn

from ot_flow.flow.checks import check_int

__all__ = ["FourierTimeFeatures", "VelocityMLP", "VelocityUNet", "make_velocity_model"]


class FourierTimeFeatures(nn.Module):
    """t in [0, 1] -> (t, sin(pi k t), cos(pi k t)) for k = 1..num_frequencies.

    Integer multiples of pi keep every feature periodic over [0, 2] and distinct on [0, 1], so
    the encoding can tell t = 0 from t = 1 while staying smooth (the ODE solvers evaluate
    between grid points)."""

    def __init__(self, num_frequencies):
        super().__init__()
        check_int("num_frequencies", num_frequencies, 1)
        self.register_buffer("frequencies", math.pi * torch.arange(1, num_frequencies + 1, dtype=torch.float32))
        self.out_features = 2 * num_frequencies + 1

    def forward(self, t):
        angles = t[:, None].to(self.frequencies.dtype) * self.frequencies
        return torch.cat([t[:, None].to(angles.dtype), angles.sin(), angles.cos()], dim=1)


class VelocityMLP(nn.Module):
    """Seed paper 002's velocity field: ``depth`` hidden layers of ``width`` units (SiLU) on the
    flattened point and d/8 Fourier time encodings.

    Args:
        shape: event shape of one point, e.g. (32,) or (1, 8, 8).
        width: hidden units (paper: 512 for d <= 64, 1024 above).
        depth: hidden layers (paper: 5).
        time_frequencies: Fourier frequencies of t (default max(1, d // 8), the paper's d/8).
    """

    def __init__(self, shape, width=512, depth=5, time_frequencies=None):
        super().__init__()
        self.shape = _event_shape(shape)
        dim = math.prod(self.shape)
        check_int("width", width, 1)
        check_int("depth", depth, 1)
        self.time = FourierTimeFeatures(time_frequencies or max(1, dim // 8))
        layers, features = [], dim + self.time.out_features
        for _ in range(depth):
            layers += [nn.Linear(features, width), nn.SiLU()]
            features = width
        layers.append(nn.Linear(features, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x, t):
        flat = x.reshape(x.shape[0], -1)
        out = self.net(torch.cat([flat, self.time(t).to(flat.dtype)], dim=1))
        return out.reshape(x.shape)


class _ResidualBlock(nn.Module):
    """Two 3x3 convolutions with the time embedding added in between (a per-channel shift)."""

    def __init__(self, channels_in, channels_out, time_dim):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(8, channels_in), channels_in)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.time = nn.Linear(time_dim, channels_out)
        self.norm2 = nn.GroupNorm(min(8, channels_out), channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.skip = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()

    def forward(self, x, embedding):
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.time(embedding)[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return h + self.skip(x)


class VelocityUNet(nn.Module):
    """A two-level UNet for small images (C, H, W) with even H and W (8x8 digits, 32x32 CIFAR):
    residual blocks at full and half resolution, skip connections, time through an MLP on
    Fourier features."""

    def __init__(self, shape, channels=32, time_frequencies=16):
        super().__init__()
        self.shape = _event_shape(shape)
        if len(self.shape) != 3 or self.shape[1] % 2 or self.shape[2] % 2:
            raise ValueError(f"argument 'shape' must be (C, H, W) with even H and W for the UNet, got {self.shape}")
        check_int("channels", channels, 1)
        c_in, c = self.shape[0], channels
        self.time = FourierTimeFeatures(time_frequencies)
        time_dim = 4 * c
        self.time_mlp = nn.Sequential(nn.Linear(self.time.out_features, time_dim), nn.SiLU(),
                                      nn.Linear(time_dim, time_dim))
        self.stem = nn.Conv2d(c_in, c, 3, padding=1)
        self.down = _ResidualBlock(c, c, time_dim)
        self.pool = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.middle = _ResidualBlock(2 * c, 2 * c, time_dim)
        self.upsample = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.up = _ResidualBlock(2 * c, c, time_dim)
        self.head = nn.Sequential(nn.GroupNorm(min(8, c), c), nn.SiLU(), nn.Conv2d(c, c_in, 3, padding=1))

    def forward(self, x, t):
        embedding = self.time_mlp(self.time(t).to(x.dtype))
        h0 = self.down(self.stem(x), embedding)
        h1 = self.middle(self.pool(h0), embedding)
        h = self.up(torch.cat([self.upsample(h1), h0], dim=1), embedding)
        return self.head(h)


def make_velocity_model(shape, kind="mlp", **kwargs):
    """``VelocityMLP(shape, **kwargs)`` or ``VelocityUNet(shape, **kwargs)``."""
    if kind == "mlp":
        return VelocityMLP(shape, **kwargs)
    if kind == "unet":
        return VelocityUNet(shape, **kwargs)
    raise ValueError(f"argument 'kind' must be 'mlp' or 'unet', got {kind!r}")


def _event_shape(shape):
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if not shape or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ValueError(f"argument 'shape' must be a tuple of positive ints (the shape of one point), got {shape!r}")
    return shape
