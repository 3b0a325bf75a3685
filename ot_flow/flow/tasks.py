"""The data of flow-matching experiments: a source to flow from, a target to flow to, the finite data
set a run trains on, held-out points, and the true OT map where one is known (seed 002, section 4.2),
so that reconstruction error can be measured.

Every draw goes through a torch.Generator: the tasks' own data come from streams keyed on `seed`, and
the samplers take the caller's generator, so that runs repeat exactly and never touch the global RNG.
"""

import functools
import math
import os

import numpy as np
import torch

# One independent random stream per purpose, so that e.g. changing num_train does not move the test set.
_STREAMS = ("params", "fit", "train", "test", "split")


def _generator(seed, stream):
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"argument 'seed' must be a non-negative int, got {seed!r}")
    state = np.random.SeedSequence([seed, _STREAMS.index(stream)]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def _count(name, value, minimum=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"argument '{name}' must be an int >= {minimum}, got {value!r}")
    return value


def _check_generator(generator):
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"argument 'generator' must be a torch.Generator, got {type(generator).__name__}")
    return generator


class Task:
    """One experiment's data. Subclasses set `train_data` and `test_data` (tensors (N, *shape)) and,
    where the OT map from the source is known, `test_source` with test_data = true_map(test_source)."""

    is_image = False
    # Nats added to the mean -log p(x) before dividing by dim * log 2, so that bits per dimension come
    # out in the data's own units rather than the model's.
    log_scale = 0.0
    test_source = None

    def __init__(self, name, shape):
        self.name = name
        self.shape = tuple(shape)

    @property
    def dim(self):
        return math.prod(self.shape)

    def sample_source(self, n, generator):
        """n draws of N(0, I), float32, shape (n, *shape)."""
        n = _count("n", n)
        return torch.randn((n, *self.shape), generator=_check_generator(generator))

    def sample_target(self, n, generator):
        """n fresh target points, float32, shape (n, *shape)."""
        raise NotImplementedError

    def true_map(self, x0):
        """The OT map from the source applied to x0, or None where none is known."""
        return None

    def _check_points(self, name, x):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            kind = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"argument '{name}' must be a floating-point torch.Tensor, got {kind}")
        if x.dim() != 1 + len(self.shape) or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"argument '{name}' must have shape (n, {', '.join(map(str, self.shape))}), "
                             f"got {tuple(x.shape)}")
        return x


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


class DatasetTask(Task):
    """A finite data set (N, *shape), split at random into train and test by `seed`; targets are
    draws from the training split with replacement. Source N(0, I); no known map.

    The model works in units x related to the data's own units y by y = shift + scale * x:
    - `levels` (int): the data are integers v in [0, levels); y = v + u with u ~ U[0, 1) uniform
      dequantisation, fresh at every draw, mapped onto [-1, 1] (shift = scale = levels / 2).
      `train_data` holds the cell centres (u = 1/2), `test_data` is dequantised once.
    - `standardize`: each feature is centred and divided by its standard deviation on the train split.
    - neither: x = y.
    `log_scale` = sum over dims of log(scale) converts densities of x into densities of y.
    """

    def __init__(self, name, data, *, levels=None, standardize=False, seed=0, test_fraction=0.1):
        _check_data("argument 'data'", data)
        super().__init__(name, data.shape[1:])
        self.is_image = len(self.shape) == 3  # (channels, height, width)
        self.seed = seed
        num_test = round(test_fraction * data.shape[0]) if isinstance(test_fraction, (int, float)) else 0
        if not 0 < num_test < data.shape[0]:
            raise ValueError(f"argument 'test_fraction' must leave at least one point in each split of "
                             f"{data.shape[0]}, got {test_fraction!r}")
        order = torch.randperm(data.shape[0], generator=_generator(seed, "split"))
        train, test = data[order[num_test:]].float(), data[order[:num_test]].float()
        self.levels = levels
        if levels is not None:
            if standardize:
                raise ValueError("argument 'standardize' cannot be combined with 'levels': "
                                 "discrete data are mapped onto [-1, 1]")
            _count("levels", levels, minimum=2)
            values = data.double()
            if (values < 0).any() or (values >= levels).any() or (values != values.round()).any():
                raise ValueError(f"argument 'levels' is {levels} but the data are not integers in [0, {levels})")
            self.shift = self.scale = levels / 2
            self.train_data = self._encode(train + 0.5)
            self.test_data = self._dequantise(self._encode(test + 0.5), _generator(seed, "test"))
        else:
            if standardize:
                std = train.std(0)
                # A constant feature would divide by zero; left unscaled it stays constant.
                self.shift, self.scale = train.mean(0), torch.where(std > 0, std, torch.ones_like(std))
            else:
                self.shift, self.scale = 0.0, 1.0
            self.train_data, self.test_data = self._encode(train), self._encode(test)
        self.log_scale = float(torch.as_tensor(self.scale, dtype=torch.float64).log().expand(self.shape).sum())

    def _encode(self, y):
        return (y - self.shift) / self.scale

    def _dequantise(self, centres, generator):
        # Moves each cell centre uniformly within its cell of width 1 (1 / scale in model units).
        return centres + (torch.rand(centres.shape, generator=generator) - 0.5) / self.scale

    def sample_target(self, n, generator):
        n = _count("n", n)
        rows = torch.randint(self.train_data.shape[0], (n,), generator=_check_generator(generator))
        points = self.train_data[rows]
        return points if self.levels is None else self._dequantise(points, generator)


class DigitsTask(DatasetTask):
    """scikit-learn's handwritten digits: 1797 grey images (1, 8, 8) with 17 levels 0..16, shipped
    inside the package (no download). Bits per dimension with `log_scale` are in grey-level units, so
    that a uniform density over the 17 levels scores log2(17)."""

    def __init__(self, seed=0, test_fraction=0.2):
        try:
            from sklearn.datasets import load_digits
        except ImportError as err:
            raise ImportError("DigitsTask needs scikit-learn: pip install scikit-learn") from err
        images = torch.from_numpy(load_digits().images).unsqueeze(1)
        super().__init__("digits", images, levels=17, seed=seed, test_fraction=test_fraction)


def _check_data(what, data):
    if not isinstance(data, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(data).__name__}")
    if data.dim() < 2 or data.shape[0] < 2 or data[0].numel() == 0:
        raise ValueError(f"{what} must have shape (N, ...) with N >= 2 points of at least one feature "
                         f"(use (N, 1) for scalars), got {tuple(data.shape)}")
    if data.dtype == torch.bool or data.is_complex():
        raise ValueError(f"{what} must be real numbers, got {data.dtype}")
    if data.is_floating_point() and not torch.isfinite(data).all():
        raise ValueError(f"{what} contains NaN or Inf")


def _load_tensor_file(path):
    if not os.path.isfile(path):
        raise ValueError(f"argument 'path': no such file {os.fspath(path)!r}")
    suffix = os.path.splitext(path)[1]
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
        if array.dtype.kind not in "iuf":
            raise ValueError(f"data in {os.fspath(path)!r} must be numeric, got dtype {array.dtype}")
        data = torch.from_numpy(np.ascontiguousarray(array))
    elif suffix in (".pt", ".pth"):
        data = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(data, dict):
            if "data" not in data:
                raise ValueError(f"{os.fspath(path)!r} holds a dict without the key 'data' (keys: {sorted(data)})")
            data = data["data"]
    else:
        raise ValueError(f"argument 'path' must name a .pt, .pth or .npy file, got {os.fspath(path)!r}")
    _check_data(f"data in {os.fspath(path)!r}", data)
    return data


class TensorFileTask(DatasetTask):
    """User data (N, ...) from a .npy file or a .pt file (torch.save of a tensor, or of a dict with
    the key "data"). uint8 data are read as 8-bit images (levels=256, onto [-1, 1]) unless `levels`
    says otherwise; see DatasetTask for `levels` and `standardize`."""

    def __init__(self, path, *, levels=None, standardize=False, seed=0, test_fraction=0.1):
        data = _load_tensor_file(path)
        if levels is None and data.dtype == torch.uint8 and not standardize:
            levels = 256
        super().__init__("tensor_file", data, levels=levels, standardize=standardize, seed=seed,
                         test_fraction=test_fraction)


class ImageFolderTask(DatasetTask):
    """Images under root/<class>/<file> (torchvision's ImageFolder layout), resized and centre-cropped
    to image_size x image_size RGB, read into memory as 8-bit levels mapped onto [-1, 1]."""

    def __init__(self, root, image_size=32, *, seed=0, test_fraction=0.1):
        if not os.path.isdir(root):
            raise ValueError(f"argument 'root': no such folder {os.fspath(root)!r}")
        image_size = _count("image_size", image_size)
        try:
            from torchvision import datasets, transforms
        except ImportError as err:
            raise ImportError("ImageFolderTask needs torchvision, which is not installed: "
                              "pip install torchvision (matching your torch version)") from err
        resize = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size),
                                     transforms.PILToTensor()])
        try:
            folder = datasets.ImageFolder(os.fspath(root), transform=resize)
        except FileNotFoundError as err:
            raise ValueError(f"argument 'root': {err}") from err
        images = torch.stack([image for image, _ in folder])
        super().__init__("image_folder", images, levels=256, seed=seed, test_fraction=test_fraction)


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
