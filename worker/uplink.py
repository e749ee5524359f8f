"""The worker half of what goes up the wire. Pure math: no sockets.

Two-phase: `prepare(grad)` returns the payload to push; `commit(applied)` is called with the
server's verdict, so state that mirrors the server's (EF21's g_i) only moves when the server moved.
"""

from __future__ import annotations

import torch

from protocol.encoding import Payload, encode_dense


class DenseUplink:
    """method none: push the dense minibatch gradient (the APAM baseline)."""

    uplink = "grad"  # the server applies each push as the direction

    def __init__(self, numel: int):
        self.numel = numel

    def prepare(self, grad: torch.Tensor) -> tuple[str, Payload]:
        """(push kind, payload) for this gradient; the payload aliases `grad` (no copy)."""
        return "grad", encode_dense(grad)

    def commit(self, applied: bool) -> None:
        """Nothing mirrors the server for dense pushes."""
