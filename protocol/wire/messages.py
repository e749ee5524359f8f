"""Message dataclasses. Each is a msgpack header (the scalar fields) plus raw tensor frames.

A field annotated `Tensor | None` travels as its own frame(s); every other field goes into the
header. The codec (protocol/wire/codec.py) checks every header field against these annotations, so a
message that decodes is a message whose fields have the declared types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor


@dataclass
class Message:
    TYPE: ClassVar[str] = ""


@dataclass
class Hello(Message):
    """worker -> server: join as `rank`. The server knows its model and run already: a Hello with another
    run id, another parameter or buffer layout, or a rank a live connection holds is refused."""

    TYPE: ClassVar[str] = "hello"
    rank: int
    pid: int
    host: str
    device: str
    run_id: str
    uplink: str  # how pushes are aggregated: "grad" (direction = push) or "ef21" (direction = mean g_i)
    signature: list = field(default_factory=list)  # the parameters: [[name, [shape...], dtype], ...]
    buffer_signature: list = field(default_factory=list)  # the model's buffers, the same way


@dataclass
class Welcome(Message):
    """server -> worker: the current parameters and the run settings the worker must share."""

    TYPE: ClassVar[str] = "welcome"
    version: int
    next_seq: int
    layout: list = field(default_factory=list)  # [[name, [shape...], offset], ...]
    settings: dict = field(default_factory=dict)
    params: Tensor | None = None


@dataclass
class Push(Message):
    """worker -> server: one update computed at parameters of version `base_version`.

    kind: "grad" (a gradient-like vector, applied as the direction), "delta" (EF21 increment
    c_i added to g_i) or "reset" (dense g_i replacing the server's copy). The tensors are
    interpreted by `encoding` (see protocol/wire/encoding.py).
    """

    TYPE: ClassVar[str] = "push"
    rank: int
    seq: int
    base_version: int
    kind: str
    encoding: str
    numel: int
    loss: float
    samples: int
    meta: dict = field(default_factory=dict)
    values: Tensor | None = None
    indices: Tensor | None = None
    signs: Tensor | None = None
    # the worker reads parameters from the server's shared-memory segment: the reply carries only the version
    shm: bool = False
    # the dense float32 values are in the rank's push slot on the server's host (docs/design.md, Shared-memory
    # pushes), not in a `values` frame
    values_in_shm: bool = False
    buffers: Tensor | None = None  # now and then: the worker's model buffers (float32, the buffer layout)
    # server.downlink topk (docs/design.md, Compressed downlink): the id of the worker's copy of the parameters
    # (-1: none the server gave it)
    copy_id: int = -1


@dataclass
class Reply(Message):
    """server -> worker: the outcome of a push (or a pull) and the fresh parameters: whole (params), as a
    sparse delta to add to the worker's copy (indices, values; server.downlink topk), or neither (the worker
    reads them from shared memory)."""

    TYPE: ClassVar[str] = "reply"
    applied: bool
    reason: str
    staleness: int
    version: int
    lr: float
    seq: int = -1  # the push this answers (-1: a pull); a worker ignores answers to pushes it no longer waits on
    params: Tensor | None = None
    # server.downlink topk (docs/design.md, Compressed downlink): the id of the copy these parameters (or this
    # delta applied to the copy with id copy_base) make; -1: the parameters are not tracked
    copy_id: int = -1
    copy_base: int = -1
    indices: Tensor | None = None  # the delta's coordinates: int32 (int64 above 2^31 parameters), ascending
    values: Tensor | None = None  # float32, added to the copy at indices


@dataclass
class Pull(Message):
    """worker -> server: ask for the current parameters without pushing."""

    TYPE: ClassVar[str] = "pull"
    rank: int


@dataclass
class Reject(Message):
    """server -> anyone: the message was not accepted; nothing changed on the server."""

    TYPE: ClassVar[str] = "reject"
    code: str
    message: str
    rank: int = -1
    seq: int = -1
    expected_seq: int = -1


@dataclass
class Heartbeat(Message):
    """both ways: liveness while a peer is waiting."""

    TYPE: ClassVar[str] = "heartbeat"
    rank: int
    version: int


@dataclass
class Stop(Message):
    """server -> worker: the run is over; exit cleanly. With server.shards > 1 also worker -> the other
    shards: one shard ended the run, so every shard ends it (docs/design.md, Shards)."""

    TYPE: ClassVar[str] = "stop"
    reason: str
    version: int


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls for cls in (Hello, Welcome, Push, Reply, Pull, Reject, Heartbeat, Stop)
}
