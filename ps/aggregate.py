"""Turns decoded pushes into the optimizer's direction. Pure math, no I/O.

DirectAggregator: every push is a gradient-like vector and is the direction itself (APAM: each
arriving gradient is one iteration).
"""

from __future__ import annotations

import torch

from protocol.encoding import Payload, decode_dense, require_finite
from protocol.errors import ProtocolError
from protocol.messages import Push


class DirectAggregator:
    uplink = "grad"

    def __init__(self, numel: int):
        self.numel = numel
        self._scratch = torch.empty(numel, dtype=torch.float32)

    def direction(self, push: Push) -> torch.Tensor:
        """Validate and decode a push; raises ProtocolError without touching any state."""
        if push.kind != "grad":
            raise ProtocolError("bad_encoding", f"this server takes 'grad' pushes, got kind {push.kind!r}")
        if push.encoding != "dense" or push.values is None:
            raise ProtocolError("bad_encoding", f"unsupported encoding {push.encoding!r}")
        if push.numel != self.numel:
            raise ProtocolError("bad_shape", f"push is for {push.numel} parameters, the model has {self.numel}")
        d = decode_dense(Payload(push.encoding, push.numel, push.values), self.numel, self._scratch)
        require_finite(d, "push values")
        return d

    def commit(self, rank: int) -> None:
        """Called after the step was applied (nothing to keep for direct pushes)."""
