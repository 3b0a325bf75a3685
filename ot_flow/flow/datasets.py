"""Tasks over finite data sets: a data set (N, *shape) split into train and test, targets drawn
from the training split, the source N(0, I), no known map; with the units the model works in
(dequantised levels onto [-1, 1], or standardised features) and the log-scale that turns its
densities back into the data's. scikit-learn's digits (shipped, no download), user tensors from
.npy / .pt files, and image folders (with torchvision). ``make_task`` builds them by name
(``ot_flow.flow.tasks``).
"""

import os

import numpy as np
import torch

from ot_flow.flow.task_base import Task, _check_generator, _count, _generator

__all__ = ["DatasetTask", "DigitsTask", "TensorFileTask", "ImageFolderTask"]


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
