"""Models: logreg, mlp, cnn. Deterministic given the seed set before building them."""

from __future__ import annotations

from torch import nn

from protocol.config.schema import TaskConfig
from worker.tasks.augment import Augment
from worker.tasks.data import ModelInput


def build_model(cfg: TaskConfig, data: ModelInput) -> nn.Module:
    out = data.num_classes or 1
    if cfg.model == "logreg":
        return nn.Sequential(nn.Flatten(), nn.Linear(data.features, out))
    if cfg.model == "mlp":
        layers: list[nn.Module] = [nn.Flatten()]
        width = data.features
        for h in cfg.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, out))
        return nn.Sequential(*layers)
    if cfg.model == "cnn":
        return _cnn(cfg, data.input_shape, out)
    raise ValueError(f"unknown model {cfg.model!r}")


def _cnn(cfg: TaskConfig, input_shape: tuple[int, ...], out: int) -> nn.Module:
    """3x3 convs of task.channels (each with BatchNorm if task.batch_norm), ReLU, 2x2 max-pools after the last
    conv (task.pool last) or after every conv (each), then ReLU linear layers of task.head and the output layer,
    each behind a dropout of task.dropout.
    The defaults (pool last, no BatchNorm, no head) are the original built-in CNN, parameter for parameter."""
    if len(input_shape) != 3:
        raise ValueError(f"cnn needs images (C, H, W), got input shape {input_shape}")
    c, h, w = input_shape
    layers: list[nn.Module] = [] if cfg.augment == "none" else [Augment(True, 2 if cfg.augment == "flip_shift" else 0)]
    for i, ch in enumerate(cfg.channels):
        # BatchNorm's shift makes a conv bias redundant: without it the parameter count says what is learnt
        layers.append(nn.Conv2d(c, ch, kernel_size=3, padding=1, bias=not cfg.batch_norm))
        layers += [nn.BatchNorm2d(ch), nn.ReLU()] if cfg.batch_norm else [nn.ReLU()]
        if cfg.pool == "each" or i == len(cfg.channels) - 1:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
            if min(h, w) < 1:
                raise ValueError(f"task.pool {cfg.pool} halves {input_shape[1:]} images below 1 pixel")
        c = ch
    layers.append(nn.Flatten())
    width = c * h * w
    for hidden in cfg.head:
        layers += [*_dropout(cfg.dropout), nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers += [*_dropout(cfg.dropout), nn.Linear(width, out)]
    return nn.Sequential(*layers)


def _dropout(p: float) -> list[nn.Module]:
    """A dropout layer of probability p, or none at 0 (so the default CNN's layers keep their indices and names)."""
    return [nn.Dropout(p)] if p > 0 else []
