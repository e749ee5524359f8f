"""Your own tabular data set: a CSV (or .npz) file of numeric features and a label column, an MLP on it.

    python -m launch examples/tabular_csv.yaml

The features are standardised with the training rows' mean and standard deviation. The statistics live in
the model as buffers (a Standardize layer), so the saved model/model.safetensors takes raw rows as they
are in the file.
"""

from pathlib import Path

import numpy as np
import torch
from torch import nn

from worker.tasks.api import TaskSpec

HERE = Path(__file__).parent


def read_table(path: Path, label: str) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of a CSV with a header row, or of an .npz holding arrays x and y."""
    if path.suffix == ".npz":
        with np.load(path) as data:
            return data["x"], data["y"]
    columns = path.read_text().splitlines()[0].split(",")
    if label not in columns:
        raise ValueError(f"{path} has no column {label!r} (columns: {', '.join(columns)})")
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    at = columns.index(label)
    return np.delete(table, at, axis=1), table[:, at]


class Standardize(nn.Module):
    """(x - mean) / std with the training data's statistics, kept as buffers: saved with the weights."""

    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", x.mean(dim=0))
        self.register_buffer("std", x.std(dim=0).clamp_min(1e-8))  # a constant column must not divide by 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def build(task) -> TaskSpec:
    args = task.args
    x, y = read_table(Path(args.get("path", HERE / "data" / "blobs.csv")), args.get("label", "label"))
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)
    # the same split in every process and run: a generator of its own, not the experiment's seed
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.get("split_seed", 0)))
    n_test = int(len(x) * args.get("test_fraction", 0.2))
    test, train = order[:n_test], order[n_test:]
    hidden = args.get("hidden", 32)
    model = nn.Sequential(
        Standardize(x[train]),
        nn.Linear(x.shape[1], hidden),
        nn.ReLU(),
        nn.Linear(hidden, int(y.max()) + 1),  # labels are 0..C-1
    )
    return TaskSpec(model, train=(x[train], y[train]), test=(x[test], y[test]))
