"""Flat parameter and gradient buffers that a torch model reads and writes in place.

Every parameter becomes a view into one flat float32 vector, and every `.grad` a view into a second
one. Receiving new parameters into the flat vector updates the model with no copy, and backward()
accumulates straight into the flat gradient that is pushed.
"""

from __future__ import annotations

import torch
from torch import nn

from protocol.wire.layout import Layout


class FlatModel:
    def __init__(self, model: nn.Module, device: torch.device):
        self.model = model.to(device)
        named = [(n, p) for n, p in self.model.named_parameters()]
        self.layout = Layout.from_shapes([(n, tuple(p.shape)) for n, p in named])
        self.params = torch.zeros(self.layout.total, dtype=torch.float32, device=device)
        self.grad = torch.zeros_like(self.params)
        for (_, p), entry in zip(named, self.layout.entries):
            view = self.params[entry.offset : entry.stop].view(entry.shape)
            view.copy_(p.detach())
            p.data = view
            p.grad = self.grad[entry.offset : entry.stop].view(entry.shape)

    @property
    def numel(self) -> int:
        return self.layout.total

    def zero_grad(self) -> None:
        self.grad.zero_()
