import math
import sys

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from ot_flow.flow.tasks import (TASKS, DigitsTask, GaussianTask, ImageFolderTask, PiecewiseAffineTask,
                                TensorFileTask, ToyTask, make_task)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def bits_per_dim(log_prob, dim, log_scale=0.0):
    # The definition the tasks' log_scale is made for (the metrics' bits per dimension).
    return (-log_prob.mean() + log_scale) / (dim * math.log(2))


@pytest.fixture(scope="module")
def affine32():
    return PiecewiseAffineTask(32, num_train=300, num_test=200)


@pytest.fixture(scope="module")
def affine64():
    return PiecewiseAffineTask(64, seed=3, num_train=300, num_test=200)


@pytest.fixture(scope="module")
def gaussian():
    return GaussianTask(6, seed=1, num_train=300, num_test=200)


@pytest.fixture(scope="module")
def digits():
    return DigitsTask(seed=0)


# --- piecewise affine -------------------------------------------------------------------------------

def test_piecewise_affine_shapes_and_attributes(affine32, affine64):
    for task, d, k in ((affine32, 32, 2), (affine64, 64, 4)):
        assert (task.name, task.shape, task.dim, task.num_pieces) == ("piecewise_affine", (d,), d, k)
        assert not task.is_image and task.log_scale == 0.0
        assert task.factors.shape == (k, d, d // 2) and task.means.shape == (k, d) and task.offsets.shape == (k,)
        assert torch.allclose(task.means.mean(0), torch.zeros(d, dtype=torch.float64), atol=1e-12)
        for tensor, n in ((task.train_data, 300), (task.test_data, 200), (task.test_source, 200),
                          (task.sample_source(7, gen(0)), 7), (task.sample_target(7, gen(0)), 7)):
            assert tensor.shape == (n, d) and tensor.dtype == torch.float32 and torch.isfinite(tensor).all()
    assert PiecewiseAffineTask(8, num_pieces=4, num_train=1, num_test=1).num_pieces == 4


def test_piecewise_affine_map_is_gradient_of_potential(affine32, affine64):
    for task, seed in ((affine32, 1), (affine64, 2)):
        x = 2 * torch.randn(500, task.dim, generator=gen(seed), dtype=torch.float64)
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(task.potential(x).sum(), x)
        mapped = task.true_map(x.detach())
        assert mapped.dtype == torch.float64
        torch.testing.assert_close(mapped, grad, rtol=1e-10, atol=1e-10)


def test_piecewise_affine_map_is_strongly_monotone(affine64):
    # u - |x|^2/2 is convex, so <T(x) - T(y), x - y> >= |x - y|^2 for every pair.
    x = torch.randn(1000, 64, generator=gen(4), dtype=torch.float64)
    y = torch.randn(1000, 64, generator=gen(5), dtype=torch.float64)
    assert (affine64.pieces(x) != affine64.pieces(y)).float().mean() > 0.5  # most pairs cross pieces
    inner = ((affine64.true_map(x) - affine64.true_map(y)) * (x - y)).sum(1)
    assert (inner >= (x - y).square().sum(1) * (1 - 1e-9)).all()


def test_piecewise_affine_pieces_used_equally(affine32, affine64):
    for task in (affine32, affine64):
        x = task.sample_source(32768, gen(6))
        share = torch.bincount(task.pieces(x), minlength=task.num_pieces).double() / x.shape[0]
        assert (share * task.num_pieces - 1).abs().max() < 0.05, share


def test_piecewise_affine_target_scale_does_not_grow_with_dim(affine32, affine64):
    for task in (affine32, affine64):
        std = task.sample_target(4000, gen(7)).std(0)
        assert 1.5 < std.mean() < 5.0, (task.dim, std.mean())


def test_piecewise_affine_test_data_is_map_of_test_source(affine32):
    torch.testing.assert_close(affine32.test_data, affine32.true_map(affine32.test_source), rtol=0, atol=0)


def test_piecewise_affine_deterministic_in_seed(affine32):
    # The held-out set has its own stream: a larger data set does not move it.
    same = PiecewiseAffineTask(32, num_train=400, num_test=200)
    other = PiecewiseAffineTask(32, seed=1, num_train=300, num_test=200)
    for name in ("factors", "means", "offsets", "test_data", "test_source"):
        assert torch.equal(getattr(affine32, name), getattr(same, name)), name
        assert not torch.equal(getattr(affine32, name), getattr(other, name)), name
    assert not torch.equal(affine32.train_data, other.train_data)
    assert torch.equal(affine32.sample_target(9, gen(8)), same.sample_target(9, gen(8)))
    assert not torch.equal(affine32.sample_target(9, gen(8)), affine32.sample_target(9, gen(9)))


@pytest.mark.parametrize("make", [lambda: PiecewiseAffineTask(32, num_train=1, num_test=1),
                                  lambda: GaussianTask(5, num_train=1, num_test=1)])
def test_known_map_is_optimal_for_the_discrete_problem(make):
    # The graph of an OT map is cyclically monotone, so on samples x_i and y_i = T(x_i) the exact
    # discrete OT (an assignment problem) pairs each x_i with its own image.
    task = make()
    x = task.sample_source(150, gen(10)).double()
    y = task.true_map(x)
    cost = torch.cdist(x, y).square().numpy()
    rows, cols = linear_sum_assignment(cost)
    identity = cost.trace()
    assert identity <= cost[rows, cols].sum() * (1 + 1e-9)
    assert identity < cost[np.arange(150), np.random.default_rng(0).permutation(150)].sum()


def test_piecewise_affine_bad_arguments(affine32):
    with pytest.raises(ValueError, match="'dim'"):
        PiecewiseAffineTask(1)
    with pytest.raises(ValueError, match="'num_pieces'"):
        PiecewiseAffineTask(32, num_pieces=0)
    with pytest.raises(ValueError, match="'seed'"):
        PiecewiseAffineTask(32, seed=-1)
    with pytest.raises(ValueError, match="'num_train'"):
        PiecewiseAffineTask(32, num_train=0)
    with pytest.raises(ValueError, match="'x0'"):
        affine32.true_map(torch.zeros(3, 31))
    with pytest.raises(ValueError, match="'generator'"):
        affine32.sample_source(3, None)
    with pytest.raises(ValueError, match="'n'"):
        affine32.sample_target(0, gen(0))


# --- gaussian ----------------------------------------------------------------------------------------

def test_gaussian_map_pushes_to_target_moments(gaussian):
    y = gaussian.true_map(gaussian.sample_source(200_000, gen(11)).double())
    torch.testing.assert_close(y.mean(0), gaussian.mean, rtol=0, atol=0.02)
    torch.testing.assert_close(y.T.cov(), gaussian.covariance, rtol=0, atol=0.03)
    eigenvalues = torch.linalg.eigvalsh(gaussian.covariance)
    assert eigenvalues.min() >= 0.25 - 1e-9 and eigenvalues.max() <= 2.0 + 1e-9
    torch.testing.assert_close(gaussian.covariance_sqrt @ gaussian.covariance_sqrt, gaussian.covariance)


def test_gaussian_transport_cost_matches_w2(gaussian):
    x = gaussian.sample_source(200_000, gen(12)).double()
    cost = (gaussian.true_map(x) - x).square().sum(1)
    assert abs(cost.mean() - gaussian.w2_squared()) < 4 * cost.std() / math.sqrt(x.shape[0])
    # Any other coupling costs more, e.g. the map through the Cholesky factor (same target law).
    chol = gaussian.mean + x @ torch.linalg.cholesky(gaussian.covariance).T
    assert (chol - x).square().sum(1).mean() > gaussian.w2_squared() + 0.05


def test_gaussian_splits(gaussian):
    assert gaussian.train_data.shape == (300, 6) and gaussian.train_data.dtype == torch.float32
    torch.testing.assert_close(gaussian.test_data, gaussian.true_map(gaussian.test_source), rtol=0, atol=0)
    assert not torch.equal(GaussianTask(6, seed=2).mean, gaussian.mean)


# --- toys --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ToyTask.NAMES)
def test_toy_shapes_and_determinism(name):
    task = make_task(name, num_train=400, num_test=100)
    assert (task.name, task.shape, task.dim, task.train_data.shape, task.test_data.shape) == (
        name, (2,), 2, (400, 2), (100, 2))
    assert task.true_map(task.test_data) is None and task.test_source is None
    y = task.sample_target(5000, gen(13))
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert torch.equal(y, task.sample_target(5000, gen(13)))
    assert not torch.equal(y, task.sample_target(5000, gen(14)))
    assert torch.equal(task.train_data, ToyTask(name, num_train=400, num_test=100).train_data)
    assert 1.0 < y.std(0).min() and y.abs().max() < 8


def test_toy_geometry():
    g = ToyTask("eight_gaussians", num_train=1, num_test=1).sample_target(20_000, gen(15))
    radius = g.norm(dim=1)
    assert abs(radius.mean() - 4) < 0.05 and abs(radius.std() - 0.3) < 0.03
    c = ToyTask("checkerboard", num_train=1, num_test=1).sample_target(20_000, gen(16))
    assert c.abs().max() <= 4
    cells = (c / 2).floor().long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()  # only the squares of one colour
    with pytest.raises(ValueError, match="'name'"):
        ToyTask("spirals")


# --- digits ------------------------------------------------------------------------------------------

def test_digits_split_and_levels(digits):
    from sklearn.datasets import load_digits

    assert (digits.shape, digits.dim, digits.is_image, digits.levels) == ((1, 8, 8), 64, True, 17)
    assert digits.train_data.shape == (1438, 1, 8, 8) and digits.test_data.shape == (359, 1, 8, 8)
    for x in (digits.train_data, digits.test_data):
        assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    # train_data sits on the cell centres; undoing the scale gives the integer levels back.
    centres = (digits.train_data.double() + 1) * 8.5 - 0.5
    torch.testing.assert_close(centres, centres.round(), rtol=0, atol=1e-5)
    # test_data is dequantised within its cells; together the splits are the whole data set.
    test_levels = ((digits.test_data.double() + 1) * 8.5).floor()
    assert not torch.equal(test_levels + 0.5, (digits.test_data.double() + 1) * 8.5)
    everything = torch.cat([centres.round(), test_levels]).flatten(1)
    expected = torch.from_numpy(load_digits().data)
    assert torch.equal(everything.unique(dim=0, return_counts=True)[1].sort()[0],
                       expected.unique(dim=0, return_counts=True)[1].sort()[0])
    assert torch.equal(everything.sum(0), expected.sum(0))
    other = DigitsTask(seed=1)
    assert not torch.equal(other.train_data, digits.train_data)
    assert torch.equal(DigitsTask(seed=0).test_data, digits.test_data)


def test_digits_samples_are_dequantised_training_images(digits):
    x = digits.sample_target(3000, gen(17))
    assert x.shape == (3000, 1, 8, 8) and x.min() >= -1 - 1e-6 and x.max() <= 1 + 1e-6
    # Each sample lies in the cell (side 1 in level units) of some training image.
    y = ((x.double() + 1) * 8.5).flatten(1)
    centres = ((digits.train_data.double() + 1) * 8.5).flatten(1)
    distance, nearest = torch.cdist(y, centres, p=float("inf")).min(1)
    assert distance.max() <= 0.5 + 1e-5
    offset = y - centres[nearest]
    assert abs(offset.mean()) < 0.01 and abs(offset.var() - 1 / 12) < 0.005
    assert torch.equal(x, digits.sample_target(3000, gen(17)))


def test_digits_bits_per_dim_in_level_units(digits):
    d = digits.dim
    assert digits.log_scale == pytest.approx(d * math.log(17 / 2))
    # Uniform on [0, 17)^d in level units is uniform on [-1, 1)^d for the model: log2(17) bits.
    log_prob_uniform = torch.full((10,), -d * math.log(2.0))
    assert bits_per_dim(log_prob_uniform, d, digits.log_scale) == pytest.approx(math.log2(17))
    # A Gaussian density in model units, against the same law written directly in level units.
    x = 0.4 * torch.randn(1000, d, generator=gen(18), dtype=torch.float64)
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 0.4)
    log_px = normal.log_prob(x).sum(1)
    log_pv = torch.distributions.Normal(normal.loc + 8.5, 0.4 * 8.5).log_prob((x + 1) * 8.5).sum(1)
    assert bits_per_dim(log_px, d, digits.log_scale) == pytest.approx(float(bits_per_dim(log_pv, d)), rel=1e-12)


# --- user data and the factory -----------------------------------------------------------------------

def test_tensor_file_round_trip(tmp_path):
    data = torch.randn(50, 3, generator=gen(19)) * torch.tensor([1.0, 5.0, 0.1]) + 2
    torch.save(data, tmp_path / "plain.pt")
    torch.save({"data": data, "labels": torch.arange(50)}, tmp_path / "dict.pt")
    np.save(tmp_path / "array.npy", data.numpy())
    for file in ("plain.pt", "dict.pt", "array.npy"):
        task = TensorFileTask(tmp_path / file, seed=2)
        assert (task.name, task.shape, task.is_image, task.log_scale) == ("tensor_file", (3,), False, 0.0)
        assert task.train_data.shape == (45, 3) and task.test_data.shape == (5, 3)
        both = torch.cat([task.train_data, task.test_data])
        assert torch.equal(both[both[:, 0].argsort()], data[data[:, 0].argsort()])
        y = task.sample_target(200, gen(20))
        assert all((row == task.train_data).all(1).any() for row in y)
    scaled = TensorFileTask(tmp_path / "array.npy", standardize=True, seed=2)
    torch.testing.assert_close(scaled.train_data.mean(0), torch.zeros(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(scaled.train_data.std(0), torch.ones(3), rtol=0, atol=1e-5)
    assert scaled.log_scale == pytest.approx(float(task.train_data.std(0).log().sum()), rel=1e-5)
    torch.testing.assert_close(scaled.test_data * scaled.scale + scaled.shift, task.test_data)


def test_tensor_file_uint8_images(tmp_path):
    images = torch.randint(256, (20, 3, 4, 4), generator=gen(21), dtype=torch.uint8)
    torch.save(images, tmp_path / "images.pt")
    task = TensorFileTask(tmp_path / "images.pt")
    assert task.is_image and task.levels == 256 and task.shape == (3, 4, 4)
    assert task.log_scale == pytest.approx(48 * math.log(128))
    levels = (task.train_data.double() + 1) * 128 - 0.5  # the cell centres, back in 0..255
    torch.testing.assert_close(levels, levels.round().clamp(0, 255), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="'levels'"):
        TensorFileTask(tmp_path / "images.pt", levels=100)


def test_tensor_file_errors(tmp_path):
    with pytest.raises(ValueError, match="missing.pt"):
        TensorFileTask(tmp_path / "missing.pt")
    torch.save(torch.randn(10), tmp_path / "flat.pt")
    with pytest.raises(ValueError, match=r"\(N, \.\.\.\)"):
        TensorFileTask(tmp_path / "flat.pt")
    torch.save({"x": torch.randn(10, 2)}, tmp_path / "nokey.pt")
    with pytest.raises(ValueError, match="'data'"):
        TensorFileTask(tmp_path / "nokey.pt")
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="'path'"):
        TensorFileTask(tmp_path / "data.csv")
    torch.save(torch.tensor([[0.0], [float("nan")]]), tmp_path / "nan.pt")
    with pytest.raises(ValueError, match="NaN"):
        TensorFileTask(tmp_path / "nan.pt")
    torch.save(torch.randn(10, 2), tmp_path / "ok.pt")
    with pytest.raises(ValueError, match="'test_fraction'"):
        TensorFileTask(tmp_path / "ok.pt", test_fraction=0.01)


def test_image_folder_needs_torchvision(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="'root'"):
        ImageFolderTask(tmp_path / "nowhere")
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as if it were not installed
    with pytest.raises(ImportError, match="pip install torchvision"):
        make_task("image_folder", root=tmp_path)


def test_make_task():
    assert TASKS == ("piecewise_affine", "gaussian", "eight_gaussians", "moons", "checkerboard", "digits",
                     "tensor_file", "image_folder")
    task = make_task("gaussian", dim=3, seed=4, num_train=10, num_test=5)
    assert isinstance(task, GaussianTask) and torch.equal(task.mean, GaussianTask(3, seed=4).mean)
    assert make_task("piecewise_affine", dim=16, num_train=10, num_test=5).num_pieces == 2
    with pytest.raises(ValueError, match="piecewise_affine.*image_folder"):
        make_task("swiss_roll")
