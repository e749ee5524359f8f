"""BatchNorm and a frozen layer on scikit-learn's bundled 8x8 digits (no download).

    python -m launch examples/batchnorm_frozen.yaml

- The first conv is frozen (requires_grad=False), as a pretrained feature extractor would be: the server
  neither serves nor updates it. It keeps its seeded initial weights (random features), or the `stem.0.*`
  weights of a safetensors file named by task.args.pretrained, e.g. a previous run's model/model.safetensors.
- BatchNorm's running statistics are buffers, not parameters: every worker.buffers_every pushes a worker
  sends its own, and snapshots (so the evaluator and model/model.safetensors) carry their mean.
"""

import torch
from safetensors.torch import load_file
from torch import nn

from worker.tasks.api import TaskSpec
from worker.tasks.data import digits_arrays


class DigitsNet(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.body = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),  # BatchNorm's shift is the bias
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 4 * 4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))


def build(task) -> TaskSpec:
    args = task.args
    model = DigitsNet(args.get("width", 16))
    if args.get("pretrained"):
        weights = load_file(args["pretrained"])
        model.stem[0].load_state_dict({"weight": weights["stem.0.weight"], "bias": weights["stem.0.bias"]})
    model.stem[0].requires_grad_(False)  # frozen: not served, not pushed; the saved model still has it

    pixels, labels = digits_arrays()  # 1797 images of 8x8 pixels in 0..16, labels 0..9
    x = torch.tensor(pixels, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(labels, dtype=torch.int64)
    # the same split in every process and run: a generator of its own, not the experiment's seed
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    test, train = order[:360], order[360:]
    return TaskSpec(model, train=(x[train], y[train]), test=(x[test], y[test]))
