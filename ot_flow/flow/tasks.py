"""The data of flow-matching experiments: a source to flow from, a target to flow to, the finite data
set a run trains on, held-out points, and the true OT map where one is known (seed 002, section 4.2),
so that reconstruction error can be measured.

Here the synthetic tasks, whose targets have an unlimited supply (the piecewise-affine benchmark and
the Gaussian, both with their exact OT map; the 2-D toys), and the registry of every task by name
(``TASKS``, ``make_task``); the tasks over finite data sets (scikit-learn's digits, user files, image
folders) are in ``ot_flow.flow.datasets`` and importable from here too. The base class and the
seeded random streams are in ``ot_flow.flow.task_base``.
"""

import functools
import math

import torch

from ot_flow.flow.datasets import DatasetTask, DigitsTask, ImageFolderTask, TensorFileTask
from ot_flow.flow.task_base import Task, _check_generator, _count, _generator

__all__ = ["Task", "PiecewiseAffineTask", "GaussianTask", "ToyTask", "DatasetTask", "DigitsTask", "TensorFileTask",
           "ImageFolderTask", "TASKS", "task_class", "make_task"]


class _SyntheticTask(Task):
    """A target with an unlimited supply: the data set and the held-out set are draws from their own streams."""

    def _draw_data(self, seed, num_train, num_test):
        self.seed = seed
        self.train_data = self.sample_target(_count("num_train", num_train), _generator(seed, "train"))
        self._draw_test(_count("num_test", num_test), _generator(seed, "test"))

    def _draw_test(self, n, generator):
        self.test_data = self.sample_target(n, generator)


class _KnownMapTask(_SyntheticTask):
    """A target that is the image of the source under a known OT map."""

    def sample_target(self, n, generator):
        return self.true_map(self.sample_source(n, generator))

    def _draw_test(self, n, generator):
        # The held-out targets keep their source points, for the reconstruction error.
        self.test_source = self.sample_source(n, generator)
        self.test_data = self.true_map(self.test_source)


class PiecewiseAffineTask(_KnownMapTask):
    """Seed paper 002's benchmark: the target is grad u of the source N(0, I_d), where

        u(x) = max_i [ |x|^2/2 + (x - m_i)^T A_i (x - m_i)/2 - c_i ],   i < k.

    u is convex, so grad u(x) = x + A_i*(x - m_i*) (i* the argmax piece) is the exact OT map for the
    squared Euclidean cost (Brenier). A_i = F_i F_i^T with F_i = `factors[i]`, m_i = `means[i]`,
    c_i = `offsets[i]`, k = `num_pieces`.
    """

    fit_samples_per_piece = 4096
    fit_steps = 100

    def __init__(self, dim, num_pieces=None, seed=0, num_train=10_000, num_test=2_000):
        dim = _count("dim", dim, minimum=2)
        k = max(2, dim // 16) if num_pieces is None else _count("num_pieces", num_pieces)
        super().__init__("piecewise_affine", (dim,))
        self.num_pieces = k
        gen = _generator(seed, "params")
        rank = dim // 2
        # A_i ~ Wishart(rank, I_d) / rank, rank-deficient as in the paper. Without the 1/rank, A_i would
        # have eigenvalues of order d and the target's scale would grow with d, so that the benchmark's
        # dimensions would differ in difficulty by scale alone; with it E[A_i] = I at every d.
        self.factors = torch.randn(k, dim, rank, generator=gen, dtype=torch.float64) / math.sqrt(rank)
        means = math.sqrt(3.0) * torch.randn(k, dim, generator=gen, dtype=torch.float64)
        self.means = means - means.mean(0)
        self.offsets = self._balanced_offsets(_generator(seed, "fit"))
        self._draw_data(seed, num_train, num_test)

    def _quadratics(self, x):
        """(n, k): (x - m_i)^T A_i (x - m_i) / 2 for every piece, in x's dtype and device."""
        factors, means = self.factors.to(x), self.means.to(x)
        return torch.stack([0.5 * ((x - means[i]) @ factors[i]).square().sum(1) for i in range(self.num_pieces)], 1)

    def _balanced_offsets(self, generator):
        # Choosing c so that each piece takes 1/k of the source is a small semidiscrete OT problem from
        # the source onto k equal atoms; its dual gradient in c is (share of piece i) - 1/k. The
        # quadratics do not depend on c, so they are computed once on a fixed sample.
        quad = self._quadratics(self.sample_source(self.fit_samples_per_piece * self.num_pieces, generator))
        k = self.num_pieces
        # Steps are relative to the spread of the quadratics, which sets how far c must move; the
        # 1/sqrt(t) decay settles the hard-assignment (sub)gradient iteration.
        lr = k * float(quad.std(0).mean())
        offsets = torch.zeros(k, dtype=quad.dtype)
        for step in range(self.fit_steps):
            share = torch.bincount((quad - offsets).argmax(1), minlength=k) / quad.shape[0]
            offsets += lr / math.sqrt(1 + step) * (share - 1 / k)
        return (offsets - offsets.mean()).double()

    def pieces(self, x):
        """LongTensor (n,): the argmax piece i* at each point of x (n, dim)."""
        x = self._check_points("x", x)
        return (self._quadratics(x) - self.offsets.to(x)).argmax(1)

    def potential(self, x):
        """u(x), shape (n,); differentiable, its gradient is `true_map`."""
        x = self._check_points("x", x)
        return 0.5 * x.square().sum(1) + (self._quadratics(x) - self.offsets.to(x)).amax(1)

    def true_map(self, x0):
        """grad u(x0) = x0 + A_i*(x0 - m_i*), shape (n, dim), in x0's dtype and device."""
        piece = self.pieces(self._check_points("x0", x0))
        factors, means = self.factors.to(x0), self.means.to(x0)
        out = x0.clone()
        for i in range(self.num_pieces):
            rows = piece == i
            out[rows] += (x0[rows] - means[i]) @ factors[i] @ factors[i].T
        return out


class GaussianTask(_KnownMapTask):
    """Source N(0, I), target N(mean, covariance) with a random mean and a random well-conditioned
    covariance S; the OT map x -> mean + S^{1/2} x is linear with a symmetric PSD matrix, hence Brenier."""

    def __init__(self, dim, seed=0, num_train=10_000, num_test=2_000):
        dim = _count("dim", dim)
        super().__init__("gaussian", (dim,))
        gen = _generator(seed, "params")
        self.mean = torch.randn(dim, generator=gen, dtype=torch.float64)
        basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
        # Eigenvalues in [0.25, 2]: condition number at most 8, scale of order one.
        eigenvalues = 0.25 + 1.75 * torch.rand(dim, generator=gen, dtype=torch.float64)
        self.covariance = (basis * eigenvalues) @ basis.T
        self.covariance_sqrt = (basis * eigenvalues.sqrt()) @ basis.T
        self._draw_data(seed, num_train, num_test)

    def true_map(self, x0):
        """mean + S^{1/2} x0, shape (n, dim), in x0's dtype and device."""
        x0 = self._check_points("x0", x0)
        return self.mean.to(x0) + x0 @ self.covariance_sqrt.to(x0)  # S^{1/2} is symmetric

    def w2_squared(self):
        """W2^2 = E|T(x) - x|^2 (no 1/2) = |mean|^2 + tr(I + S - 2 S^{1/2})."""
        trace = self.dim + self.covariance.trace() - 2 * self.covariance_sqrt.trace()
        return float(self.mean.square().sum() + trace)


class ToyTask(_SyntheticTask):
    """2-D toy targets without a known map. eight_gaussians: 8 modes on the circle of radius 4, std
    0.3 (as in this project's examples); moons: torchcfm's 3 * moons - 1, with isotropic Gaussian noise
    of std 0.1 before scaling (torchdyn's generator adds one uniform shift to both coordinates
    instead); checkerboard: FFJORD's, 8 squares of side 2 in [-4, 4]^2."""

    NAMES = ("eight_gaussians", "moons", "checkerboard")

    def __init__(self, name, seed=0, num_train=10_000, num_test=2_000):
        if name not in self.NAMES:
            raise ValueError(f"argument 'name' must be one of {self.NAMES}, got {name!r}")
        super().__init__(name, (2,))
        self._draw_data(seed, num_train, num_test)

    def sample_target(self, n, generator):
        n = _count("n", n)
        _check_generator(generator)
        if self.name == "eight_gaussians":
            angle = torch.randint(8, (n,), generator=generator) * (math.pi / 4)
            centres = 4 * torch.stack([angle.cos(), angle.sin()], 1)
            return centres + 0.3 * torch.randn(n, 2, generator=generator)
        if self.name == "moons":
            angle = math.pi * torch.rand(n, generator=generator)
            upper = torch.rand(n, generator=generator) < 0.5
            x = torch.where(upper, angle.cos(), 1 - angle.cos())
            y = torch.where(upper, angle.sin(), 0.5 - angle.sin())
            moons = torch.stack([x, y], 1) + 0.1 * torch.randn(n, 2, generator=generator)
            return 3 * moons - 1
        x = 4 * torch.rand(n, generator=generator) - 2
        y = torch.rand(n, generator=generator) - 2 * torch.randint(2, (n,), generator=generator)
        return 2 * torch.stack([x, y + x.floor().remainder(2)], 1)


_FACTORIES = {
    "piecewise_affine": PiecewiseAffineTask,
    "gaussian": GaussianTask,
    **{name: functools.partial(ToyTask, name) for name in ToyTask.NAMES},
    "digits": DigitsTask,
    "tensor_file": TensorFileTask,
    "image_folder": ImageFolderTask,
}
TASKS = tuple(_FACTORIES)


def task_class(name):
    """The constructor behind `name` (one of TASKS): configs check their keys against it."""
    if name not in _FACTORIES:
        raise ValueError(f"argument 'name' must be one of {TASKS}, got {name!r}")
    return _FACTORIES[name]


def make_task(name, **kwargs):
    """The task called `name` (one of TASKS), built with the keyword arguments of its class."""
    return task_class(name)(**kwargs)
