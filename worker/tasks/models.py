"""Models: logreg, mlp, cnn. Deterministic given the seed set before building them."""

from __future__ import annotations

from torch import nn

from protocol.config.schema import TaskConfig
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
        return _cnn(cfg.channels, data.input_shape, out)
    raise ValueError(f"unknown model {cfg.model!r}")


def _cnn(channels: tuple[int, ...], input_shape: tuple[int, ...], out: int) -> nn.Module:
    if len(input_shape) != 3:
        raise ValueError(f"cnn needs images (C, H, W), got input shape {input_shape}")
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for ch in channels:
        layers += [nn.Conv2d(c, ch, kernel_size=3, padding=1), nn.ReLU()]
        c = ch
    layers += [nn.MaxPool2d(2), nn.Flatten(), nn.Linear(c * (h // 2) * (w // 2), out)]
    return nn.Sequential(*layers)
