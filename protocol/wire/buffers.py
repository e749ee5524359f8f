"""Reusable send buffers for zero-copy sends of state that keeps changing.

A zero-copy send returns before ZeroMQ has read the bytes, so a buffer that is modified in place
(the server's parameters) must not be sent directly. SendPool hands out snapshot buffers and takes
one back only after ZeroMQ has released every frame of its last send, so steady state allocates
nothing (fresh memory costs page faults at ~1.4 GB/s on the target machines).
"""

from __future__ import annotations

import torch
import zmq


class SendPool:
    def __init__(self, numel: int, dtype: torch.dtype = torch.float32, max_buffers: int = 64):
        self.numel = numel
        self.dtype = dtype
        self.max_buffers = max_buffers
        self._free: list[torch.Tensor] = []
        self._busy: list[tuple[torch.Tensor, zmq.MessageTracker]] = []
        self.allocated = 0

    def snapshot(self, src: torch.Tensor) -> torch.Tensor | None:
        """A buffer holding a copy of `src`, safe to send zero-copy; hand it back with `sent` (or `unused`).

        None when all max_buffers buffers are still in flight: the caller must not wait for one (a peer
        that never reads keeps its buffers forever), so it skips the send instead."""
        buf = self._acquire()
        if buf is not None:
            buf.copy_(src)
        return buf

    def unused(self, buf: torch.Tensor) -> None:
        """A snapshot that was never sent: free again at once."""
        self._free.append(buf)

    def sent(self, buf: torch.Tensor, tracker: zmq.MessageTracker | None) -> None:
        if tracker is None or tracker.done:
            self._free.append(buf)
        else:
            self._busy.append((buf, tracker))

    def _acquire(self) -> torch.Tensor | None:
        self._reclaim()
        if self._free:
            return self._free.pop()
        if self.allocated >= self.max_buffers:
            return None  # every buffer is in flight: never grow without bound, never wait
        self.allocated += 1
        return torch.empty(self.numel, dtype=self.dtype)

    def _reclaim(self) -> None:
        still = []
        for buf, tracker in self._busy:
            if tracker.done:
                self._free.append(buf)
            else:
                still.append((buf, tracker))
        self._busy = still
