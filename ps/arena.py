"""Preallocated receive buffers: every push tensor is written into one of these, never a fresh allocation.

One byte arena per tensor name, sized for the largest legal tensor of that name (a dense float32
vector of the model's size). A declared size above that is refused before any byte is received, and so
is any tensor of a message type that carries none the server accepts (a Reply or Welcome sent to the
server, say): memory for a message is bounded by the served model, never by what a peer declares.
"""

from __future__ import annotations

import torch

from protocol.errors import ProtocolError
from protocol.wire import codec
from protocol.wire.messages import Message, Push


class RecvArena:
    def __init__(self, numel: int, buffer_numel: int = 0):
        cap = max(4 * numel, 64)
        self._arenas = {name: torch.empty(cap, dtype=torch.uint8) for name in codec.tensor_fields(Push)}
        self._arenas["buffers"] = torch.empty(max(4 * buffer_numel, 64), dtype=torch.uint8)

    def __call__(self, cls: type[Message], spec: codec.TensorSpec) -> torch.Tensor:
        if cls is Push:
            return self._view(self._arenas[spec.name], spec)
        raise ProtocolError("bad_type", f"a server takes no tensors in {cls.TYPE} messages")

    @staticmethod
    def _view(arena: torch.Tensor, spec: codec.TensorSpec) -> torch.Tensor:
        if spec.nbytes > arena.numel():
            raise ProtocolError("oversized", f"tensor '{spec.name}' of {spec.nbytes} bytes exceeds {arena.numel()}")
        return arena[: spec.nbytes].view(codec.DTYPES[spec.dtype])
