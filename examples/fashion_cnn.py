"""A custom CNN on Fashion-MNIST, read straight from the official IDX files: a task factory to copy.

    python -m launch examples/fashion_cnn.yaml

The launcher calls build(task) in every process (after seeding torch, so all build the same initial
model); task.args carries the settings of examples/fashion_cnn.yaml.
"""

import gzip
from pathlib import Path

import numpy as np
import torch
from torch import nn

from worker.tasks.api import TaskSpec

DEFAULT_PATH = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist puts the files
MEAN, STD = 0.2860, 0.3530  # of the training pixels in [0, 1]


def read_idx(path: Path, header: int) -> np.ndarray:
    """The bytes after an IDX file's header (16 bytes for images, 8 for labels); gzip or not."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return np.frombuffer(data, dtype=np.uint8, offset=header)


def load_split(folder: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, 28, 28) standardised, labels (N,)) of the 'train' or 't10k' files."""
    images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"), header=16).reshape(-1, 1, 28, 28)
    labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"), header=8)
    x = (torch.from_numpy(images.astype(np.float32)) / 255.0 - MEAN) / STD
    return x, torch.from_numpy(labels.astype(np.int64))


def _find(folder: Path, name: str) -> Path:
    for path in (folder / f"{name}.gz", folder / name):
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{folder / name}(.gz) not found: install the Fashion-MNIST files (Debian: apt-get install "
        "dataset-fashion-mnist) or set task.args.path to a folder holding them"
    )


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv, BatchNorm, ReLU, then halve the resolution."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),  # no bias: BatchNorm's shift does its job
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class FashionCNN(nn.Module):
    def __init__(self, channels: tuple[int, int] = (16, 32), hidden: int = 32):
        super().__init__()
        self.features = nn.Sequential(conv_block(1, channels[0]), conv_block(channels[0], channels[1]))
        flat = channels[1] * 7 * 7  # two poolings: 28x28 -> 7x7
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build(task) -> TaskSpec:
    args = task.args
    folder = Path(args.get("path", DEFAULT_PATH))
    model = FashionCNN(tuple(args.get("channels", (16, 32))), args.get("hidden", 32))
    # tensors (x, y): each worker draws its minibatches from them through its own DataLoader
    return TaskSpec(model, train=load_split(folder, "train"), test=load_split(folder, "t10k"))
