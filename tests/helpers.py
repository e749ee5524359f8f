"""Test helpers: the in-process harness (launch/inproc.py) and raw push frames for fuzzing."""

from __future__ import annotations

import torch

from launch.inproc import TIMEOUT_S, FakeWorker, join_all, make_config, running_server, served
from protocol.wire import codec
from protocol.wire.messages import Push

__all__ = ["TIMEOUT_S", "FakeWorker", "join_all", "make_config", "push_frames", "running_server", "served"]


def push_frames(rank: int, seq: int, base_version: int, values: torch.Tensor, **fields) -> list:
    msg = Push(
        rank=rank,
        seq=seq,
        base_version=base_version,
        kind="grad",
        encoding="dense",
        numel=values.numel(),
        loss=0.0,
        samples=1,
        values=values,
    )
    for k, v in fields.items():
        setattr(msg, k, v)
    return [bytes(f) for f in codec.encode(msg)]
