"""Flat parameter and gradient buffers that a torch model reads and writes in place, and its buffers.

Every trainable parameter (requires_grad) becomes a view into one flat float32 vector, and every `.grad` a
view into a second one. Receiving new parameters into the flat vector updates the model with no copy, and
backward() accumulates straight into the flat gradient that is pushed. Frozen parameters stay as they are
(they are neither served nor pushed). The model's persistent buffers (BatchNorm's running statistics, say)
are gathered into a third flat float32 vector on demand (`buffers`), and set from one (`load_buffers`).
"""

from __future__ import annotations

import torch
from torch import nn

from protocol.wire.layout import Layout


class FlatModel:
    def __init__(self, model: nn.Module, device: torch.device):
        self.model = model.to(device)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.layout = Layout.from_shapes([(n, tuple(p.shape)) for n, p in named])
        self.params = torch.zeros(self.layout.total, dtype=torch.float32, device=device)
        self.grad = torch.zeros_like(self.params)
        self._trainable = [p for _, p in named]
        for (_, p), entry in zip(named, self.layout.entries):
            view = self.params[entry.offset : entry.stop].view(entry.shape)
            view.copy_(p.detach())
            p.data = view
            p.grad = self.grad[entry.offset : entry.stop].view(entry.shape)
        persistent = set(self.model.state_dict())
        self._buffers = [(n, b) for n, b in self.model.named_buffers() if n in persistent]
        self.buffer_layout = Layout.from_shapes([(n, tuple(b.shape)) for n, b in self._buffers])

    @property
    def numel(self) -> int:
        return self.layout.total

    def zero_grad(self) -> None:
        self.grad.zero_()

    def use_grad(self, buf: torch.Tensor) -> None:
        """Make `buf` (float32, (numel,), on the model's device) the flat gradient every `.grad` views, holding
        the current gradient's values: backward() accumulates into it from now on (a worker points it at its
        shared-memory push slot: worker/shm_params.py)."""
        if buf.data_ptr() == self.grad.data_ptr():
            return
        if buf.dtype != torch.float32 or buf.shape != self.grad.shape or buf.device != self.grad.device:
            raise ValueError(f"a gradient buffer must be float32 {tuple(self.grad.shape)} on {self.grad.device}")
        buf.copy_(self.grad)
        for p, entry in zip(self._trainable, self.layout.entries):
            p.grad = buf[entry.offset : entry.stop].view(entry.shape)
        self.grad = buf

    def buffers(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """The persistent buffers as one flat float32 vector (on the host), in buffer_layout order."""
        flat = out if out is not None else torch.empty(self.buffer_layout.total, dtype=torch.float32)
        for (_, b), entry in zip(self._buffers, self.buffer_layout.entries):
            flat[entry.offset : entry.stop].copy_(b.detach().reshape(-1))
        return flat

    def load_buffers(self, flat: torch.Tensor) -> None:
        """Set every persistent buffer from a flat float32 vector (integer buffers are rounded back)."""
        for (_, b), entry in zip(self._buffers, self.buffer_layout.entries):
            src = flat[entry.offset : entry.stop].view(entry.shape)
            b.copy_(src.round() if not b.dtype.is_floating_point else src)
