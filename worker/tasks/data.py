"""Data sets that need no download: scikit-learn's bundled 8x8 digits, generated synthetic problems, and
local files (MNIST in IDX format, LIBSVM text; see files.py). Nothing is ever fetched from the network.

Every data set is a fixed train/test split: the split (and synthetic data) depends only on the
data seed, never on the experiment seed, so runs with different seeds train on the same data.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import torch

from protocol.config.schema import DEFAULT_PATHS, ExperimentConfig, TaskConfig
from protocol.errors import ConfigError
from worker.tasks.files import (
    MAX_DENSE_FLOATS,
    LibsvmSummary,
    check_mnist_pair,
    read_libsvm,
    read_mnist_pair,
    scan_libsvm,
)

T = TypeVar("T")

SPLIT_SEED = 20240607  # fixed: the digits (and libsvm without a test file) train/test split never changes
MNIST_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the customary normalization of MNIST pixels in [0, 1]
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530  # the same for Fashion-MNIST's training images
PIXEL_NORMS = {"mnist": (MNIST_MEAN, MNIST_STD), "fashion_mnist": (FASHION_MEAN, FASHION_STD)}
FASHION_PACKAGE = "dataset-fashion-mnist"  # Debian's package of the official IDX files
DIGITS_SAMPLES, DIGITS_CLASSES = 1797, 10  # scikit-learn's bundled digits (the pre-launch check does not load them)


class ModelInput(Protocol):
    """What build_model (worker/tasks/models.py) reads of a data set to size the model: a Dataset, or the
    stand-in the pre-launch check makes of a DataShape (launch/preflight.py)."""

    @property
    def num_classes(self) -> int | None: ...

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    @property
    def features(self) -> int: ...


@dataclass
class Dataset:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int | None  # None: regression (targets are float, shape (n, 1))
    input_shape: tuple[int, ...]  # per-sample shape, e.g. (64,) or (1, 8, 8)

    @property
    def features(self) -> int:
        return int(np.prod(self.input_shape))

    def to(self, device: torch.device) -> Dataset:
        return Dataset(
            self.x_train.to(device),
            self.y_train.to(device),
            self.x_test.to(device),
            self.y_test.to(device),
            self.num_classes,
            self.input_shape,
        )


def load_dataset(cfg: TaskConfig) -> Dataset:
    if cfg.dataset == "digits":
        return _digits(cfg.test_fraction, image=cfg.model == "cnn")
    if cfg.dataset == "synthetic" and cfg.synthetic.kind == "quadratic":
        raise ValueError("the synthetic quadratic has no data set (see worker/tasks/quadratic.py)")
    if cfg.dataset == "synthetic":
        return _synthetic(cfg)
    if cfg.dataset in PIXEL_NORMS:
        return _mnist(data_path(cfg), image=cfg.model == "cnn", norm=PIXEL_NORMS[cfg.dataset])
    if cfg.dataset == "libsvm":
        return _libsvm(cfg)
    raise ValueError(f"unknown dataset {cfg.dataset!r}")


def _split(
    x: torch.Tensor, y: torch.Tensor, test_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): test_fraction of the samples (at least one) held out at random."""
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    n_test = max(1, int(round(len(x) * test_fraction)))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def _digits(test_fraction: float, image: bool) -> Dataset:
    pixels, labels = digits_arrays()
    x = torch.tensor(pixels, dtype=torch.float32) / 16.0
    y = torch.tensor(labels, dtype=torch.int64)
    shape: tuple[int, ...] = (1, 8, 8) if image else (64,)
    x = x.reshape(-1, *shape)
    return Dataset(*_split(x, y, test_fraction, SPLIT_SEED), num_classes=10, input_shape=shape)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1797 x 64 pixels in 0..16, labels 0..9), no download.

    Read straight from the package's digits.csv.gz, as load_digits does, because importing
    sklearn.datasets costs ~1.2 s of CPU in every worker and evaluator process at start-up.
    """
    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is None or not path.is_file():  # another layout: let scikit-learn find it
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.data, d.target
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(np.int64)


def _synthetic(cfg: TaskConfig) -> Dataset:
    s = cfg.synthetic
    g = torch.Generator().manual_seed(s.data_seed)
    x = torch.randn(s.samples, s.dim, generator=g)
    if s.kind == "logistic":
        teacher = torch.randn(s.dim, s.classes, generator=g) / s.dim**0.5
        y = (x @ teacher).argmax(dim=1)
        flip = torch.rand(s.samples, generator=g) < s.noise
        y[flip] = torch.randint(0, s.classes, (int(flip.sum()),), generator=g)
        classes: int | None = s.classes
    else:
        teacher = torch.randn(s.dim, 1, generator=g) / s.dim**0.5
        y = x @ teacher + s.noise * torch.randn(s.samples, 1, generator=g)
        classes = None
    return Dataset(*_split(x, y, cfg.test_fraction, s.data_seed), num_classes=classes, input_shape=(s.dim,))


def mnist_file(folder: Path, name: str) -> Path:
    """`name` or `name.gz` in the folder, whichever exists."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{folder / name} (or .gz) does not exist")


def data_path(cfg: TaskConfig) -> Path:
    """task.path, or the data set's default location (fashion_mnist: Debian's package)."""
    return Path(cfg.path or DEFAULT_PATHS.get(cfg.dataset, ""))


def _mnist(folder: Path, image: bool, norm: tuple[float, float] = (MNIST_MEAN, MNIST_STD)) -> Dataset:
    """The official split: 60000 training and 10000 test images (fewer in a smaller file of the same format)."""
    parts = []
    for split in ("train", "test"):
        images, labels = read_mnist_pair(*(mnist_file(folder, name) for name in MNIST_SPLITS[split]))
        parts.append((images, labels))
    (train_x, train_y), (test_x, test_y) = parts
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(f"{folder}: training images are {train_x.shape[1:]}, test images {test_x.shape[1:]}")
    rows, cols = train_x.shape[1:]
    shape: tuple[int, ...] = (1, rows, cols) if image else (rows * cols,)
    return Dataset(
        _pixels(train_x, shape, norm),
        torch.from_numpy(train_y.astype(np.int64)),
        _pixels(test_x, shape, norm),
        torch.from_numpy(test_y.astype(np.int64)),
        num_classes=10,
        input_shape=shape,
    )


def _pixels(images: np.ndarray, shape: tuple[int, ...], norm: tuple[float, float]) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32))  # a copy: the file's buffer is read-only
    mean, std = norm
    return x.div_(255.0).sub_(mean).div_(std).reshape(-1, *shape)


def _libsvm(cfg: TaskConfig) -> Dataset:
    d = read_libsvm(cfg.path, cfg.features, cfg.test_path or None)
    x, y = torch.from_numpy(d.x_train), torch.from_numpy(d.y_train)
    if d.x_test is None:
        parts = _split(x, y, cfg.test_fraction, SPLIT_SEED)
    else:
        parts = (x, y, torch.from_numpy(d.x_test), torch.from_numpy(d.y_test))
    return Dataset(*parts, num_classes=len(d.classes), input_shape=(x.shape[1],))


@dataclass(frozen=True)
class DataShape:
    """What the pre-launch check learns of a data set without loading it: enough to size the model."""

    input_shape: tuple[int, ...]  # per sample, as Dataset.input_shape
    classes: int | None  # None: regression
    train_samples: int


def check_data(cfg: ExperimentConfig) -> DataShape | None:
    """Fail before any process starts if the data cannot train: files missing or malformed (every byte is
    read, a chunk at a time: see files.py), or fewer training samples than the workers need. Returns the
    data's shape (None for the synthetic quadratic, which has no data).

    Raises ConfigError naming the key to fix (task.path, task.test_path, task.features, ...).
    """
    task = cfg.task
    if task.dataset == "synthetic" and task.synthetic.kind == "quadratic":
        return None
    if task.dataset in PIXEL_NORMS:
        shape = _as_config_error("task.path", lambda: _check_mnist(task, image=task.model == "cnn"))
    elif task.dataset == "libsvm":
        shape = _check_libsvm(task)
    else:
        shape = _builtin_shape(task)
    _check_train_samples(cfg, shape.train_samples)
    return shape


def _builtin_shape(task: TaskConfig) -> DataShape:
    if task.dataset == "digits":
        shape = (1, 8, 8) if task.model == "cnn" else (64,)
        return DataShape(shape, DIGITS_CLASSES, _held_out(DIGITS_SAMPLES, task.test_fraction))
    s = task.synthetic
    classes = s.classes if s.kind == "logistic" else None
    return DataShape((s.dim,), classes, _held_out(s.samples, task.test_fraction))


def _held_out(n: int, test_fraction: float) -> int:
    """Training samples left when _split holds out test_fraction of n."""
    return n - max(1, int(round(n * test_fraction)))


def _check_train_samples(cfg: ExperimentConfig, n: int) -> None:
    if cfg.task.sampling == "shard":
        need, key = cfg.workers, "task.sampling"
        why = f"shard gives each of the {cfg.workers} workers its own slice of the training samples"
    else:
        need, key, why = 1, "task.test_fraction", "a worker samples its minibatches from the training samples"
    if n < need:
        raise ConfigError(key, f"{why}, but the data leaves {n} for training (at least {need} needed)")


def _check_mnist(task: TaskConfig, image: bool) -> DataShape:
    folder = data_path(task)
    if not folder.is_dir() and not task.path and task.dataset == "fashion_mnist":
        raise FileNotFoundError(
            f"{folder} does not exist: install Debian's {FASHION_PACKAGE} package "
            f"(apt-get install {FASHION_PACKAGE}), or set task.path to a folder of the four IDX files"
        )
    if not folder.is_dir():
        name = "Fashion-MNIST" if task.dataset == "fashion_mnist" else "MNIST"
        hint = (
            f"; Debian's {FASHION_PACKAGE} package puts them in {DEFAULT_PATHS['fashion_mnist']}"
            if name == "Fashion-MNIST"
            else ""
        )
        raise FileNotFoundError(f"{folder} is not a folder (it should hold the four {name} IDX files{hint})")
    dims = [check_mnist_pair(*(mnist_file(folder, name) for name in MNIST_SPLITS[s])) for s in ("train", "test")]
    if dims[0][1:] != dims[1][1:]:
        raise ValueError(f"{folder}: training images are {dims[0][1:]}, test images {dims[1][1:]}")
    rows, cols = dims[0][1:]
    return DataShape((1, rows, cols) if image else (rows * cols,), 10, dims[0][0])


def _check_libsvm(task: TaskConfig) -> DataShape:
    """Every line of both files parsed (the readers' own errors), then what read_libsvm would refuse."""
    train = _as_config_error("task.path", lambda: scan_libsvm(_file(task.path)))
    test = _as_config_error("task.test_path", lambda: scan_libsvm(_file(task.test_path))) if task.test_path else None
    if len(train.labels) < 2:
        raise ConfigError(
            "task.path",
            f"{train.path}: only one label ({next(iter(train.labels)):g}); classification needs at least two",
        )
    unknown = {label: line for label, line in (test.labels.items() if test else ()) if label not in train.labels}
    if unknown:
        assert test is not None  # only a test file's labels can be unknown
        label, line = min(unknown.items(), key=lambda item: item[1])
        known = ", ".join(f"{c:g}" for c in sorted(train.labels))
        message = (
            f"{test.path}:{line}: label {label:g} does not occur in the training file {train.path} (labels: {known})"
        )
        raise ConfigError("task.test_path", message)
    features = task.features or max(train.max_index, test.max_index if test else 0)
    if features == 0:
        raise ConfigError("task.path", f"{train.path}: no sample has a feature (and task.features is 0)")
    for key, scan in (("task.path", train), ("task.test_path", test)):
        _check_libsvm_size(key, scan, features, task.features)
    n_train = train.samples if test else _held_out(train.samples, task.test_fraction)
    return DataShape((features,), len(train.labels), n_train)


def _check_libsvm_size(key: str, scan: LibsvmSummary | None, features: int, given: int) -> None:
    if scan is None:
        return
    if given and scan.max_index > given:
        where = f"{scan.path}:{scan.max_index_line}"
        raise ConfigError(
            "task.features", f"{where}: feature index {scan.max_index} exceeds the number of features ({given})"
        )
    if scan.samples * features > MAX_DENSE_FLOATS:
        raise ConfigError(
            key,
            f"{scan.path}: {scan.samples} samples x {features} features is too large "
            f"to hold densely (limit {MAX_DENSE_FLOATS} floats)",
        )


def _file(path: str) -> Path:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    return Path(path)


def _as_config_error(key: str, check: Callable[[], T]) -> T:
    try:
        return check()
    except (OSError, ValueError) as err:
        raise ConfigError(key, str(err)) from None
