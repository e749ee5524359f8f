"""Data sets that need no download: scikit-learn's bundled 8x8 digits, and generated synthetic problems.

Every data set is a fixed train/test split: the split (and synthetic data) depends only on the
data seed, never on the experiment seed, so runs with different seeds train on the same data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from protocol.config import TaskConfig

SPLIT_SEED = 20240607  # fixed: the digits train/test split never changes


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
        return Dataset(self.x_train.to(device), self.y_train.to(device), self.x_test.to(device),
                       self.y_test.to(device), self.num_classes, self.input_shape)


def load_dataset(cfg: TaskConfig) -> Dataset:
    if cfg.dataset == "digits":
        return _digits(cfg.test_fraction, image=cfg.model == "cnn")
    if cfg.dataset == "synthetic":
        return _synthetic(cfg)
    raise ValueError(f"unknown dataset {cfg.dataset!r}")


def _split(x: torch.Tensor, y: torch.Tensor, test_fraction: float, seed: int):
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    n_test = max(1, int(round(len(x) * test_fraction)))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def _digits(test_fraction: float, image: bool) -> Dataset:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    shape: tuple[int, ...] = (1, 8, 8) if image else (64,)
    x = x.reshape(-1, *shape)
    return Dataset(*_split(x, y, test_fraction, SPLIT_SEED), num_classes=10, input_shape=shape)


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
