"""One message as one contiguous byte buffer, for transports that move tensors rather than frames.

The synchronous baseline all-gathers every rank's compressed push through torch.distributed, which
moves tensors of one dtype; this packs a message into one uint8 tensor and back. The bytes are
codec.encode's: the msgpack header, then each tensor's raw bytes in the order the header lists them
(one frame per tensor), so a push packed here has exactly the size of the same push over ZeroMQ.
The header's length travels beside the buffer (the sync baseline gathers (total, header) lengths
before the buffers). Unpacking validates like a receive: header first, then sizes, then copies.
"""

from __future__ import annotations

import torch

from protocol.errors import ProtocolError
from protocol.wire import codec
from protocol.wire.messages import Message

ONE_FRAME = 1 << 62  # chunk size larger than any tensor: each tensor is one contiguous run of bytes


def pack(msg: Message, out: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """(uint8 buffer holding the message, header length). Writes into `out` when it is large enough."""
    frames = codec.encode(msg, chunk_bytes=ONE_FRAME)
    total = sum(len(f) for f in frames)
    if out is None or out.numel() < total:
        out = torch.empty(max(total, 1), dtype=torch.uint8)
    view, pos = codec.byte_view(out), 0
    for frame in frames:
        view[pos : pos + len(frame)] = frame
        pos += len(frame)
    return out[:total], len(frames[0])


def unpack(buf: torch.Tensor, header_len: int) -> Message:
    """The message packed in `buf` (a CPU uint8 tensor); its tensors are fresh copies.

    Raises ProtocolError when the header is bad or the bytes do not add up to what it declares.
    """
    raw = codec.byte_view(buf.reshape(-1))
    if not 0 < header_len <= min(len(raw), codec.MAX_HEADER_BYTES):
        raise ProtocolError("bad_header", f"header length {header_len} does not fit a buffer of {len(raw)} bytes")
    cls, fields, specs = codec.decode_header(bytes(raw[:header_len]))
    if header_len + sum(s.nbytes for s in specs) != len(raw):
        raise ProtocolError(
            "truncated",
            f"{cls.TYPE}: {len(raw) - header_len} tensor bytes, the header declares {sum(s.nbytes for s in specs)}",
        )
    tensors, pos = {}, header_len
    for spec in specs:
        t = torch.empty(spec.shape, dtype=codec.DTYPES[spec.dtype])
        codec.byte_view(t)[:] = raw[pos : pos + spec.nbytes]
        tensors[spec.name] = t
        pos += spec.nbytes
    try:
        return codec.build(cls, fields, tensors)
    except TypeError as err:
        raise ProtocolError("bad_field", str(err)) from None
