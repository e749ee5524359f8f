"""Codec: message <-> [msgpack header, *raw tensor frames]. Never pickle.

Header layout (a msgpack map, protocol name and version first):
    {"proto": "taups", "ver": 1, "type": "push", "fields": {...}, "tensors": [[name, dtype, shape, nframes], ...]}
Each tensor is sent as `nframes` raw little-endian frames (its bytes split into chunks of at most
`chunk_bytes`, which moves large tensors faster over ZeroMQ than one huge frame). Everything in the
header is validated (types, names, sizes) before any tensor memory is allocated.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable

import msgpack
import torch

from protocol.errors import ProtocolError
from protocol.wire.messages import MESSAGE_TYPES, Message

PROTOCOL = "taups"
VERSION = 1
MAX_HEADER_BYTES = 1 << 16
MAX_TENSOR_FRAMES = 1 << 16
# Every dimension and the product of the non-zero ones stay below this: torch computes sizes and strides
# as int64 products, and a zero-element shape like [2**39, 2**39, 0] would overflow them in a view.
MAX_TENSOR_NUMEL = 1 << 48
DEFAULT_CHUNK_BYTES = 1 << 20

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nframes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPES[self.dtype].itemsize


# An allocator returns the (contiguous, CPU) tensor a received tensor is written into: a view of a
# preallocated buffer on hot paths, or a fresh tensor. It may raise ProtocolError to refuse.
Allocator = Callable[[type[Message], TensorSpec], torch.Tensor]


def fresh_allocator(max_bytes: int) -> Allocator:
    def alloc(cls: type[Message], spec: TensorSpec) -> torch.Tensor:
        if spec.nbytes > max_bytes:
            raise ProtocolError("oversized", f"tensor '{spec.name}' of {spec.nbytes} bytes exceeds {max_bytes}")
        return torch.empty(spec.shape, dtype=DTYPES[spec.dtype])

    return alloc


def tensor_fields(cls: type[Message]) -> tuple[str, ...]:
    return _schema(cls).tensors


def byte_view(t: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, without a copy (any dtype, bfloat16 included)."""
    if t.device.type != "cpu":
        raise ValueError("tensors must be on the CPU to be sent; copy them to a (pinned) host buffer first")
    if not t.is_contiguous():
        raise ValueError("tensors must be contiguous to be sent without a copy")
    # ndarray.data is memoryview(array) (the same object numpy builds), and numpy's stubs type it as one
    return t.reshape(-1).view(torch.uint8).numpy().data


def encode(msg: Message, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list:
    """[header bytes, *memoryview frames]; the frames alias the message's tensors (zero-copy)."""
    fields, specs, frames = {}, [], []
    for name, is_tensor in _schema(type(msg)).order:
        value = getattr(msg, name)
        if is_tensor:
            if value is not None:
                chunks = _chunks(byte_view(value), chunk_bytes)
                specs.append([name, DTYPE_NAMES[value.dtype], list(value.shape), len(chunks)])
                frames.extend(chunks)
        else:
            fields[name] = value
    header = {"proto": PROTOCOL, "ver": VERSION, "type": msg.TYPE, "fields": fields, "tensors": specs}
    return [msgpack.packb(header, use_bin_type=True), *frames]


def _chunks(view: memoryview, chunk_bytes: int) -> list[memoryview]:
    if len(view) == 0:
        return [view]
    return [view[o : o + chunk_bytes] for o in range(0, len(view), chunk_bytes)]


def decode_header(raw: bytes) -> tuple[type[Message], dict, list[TensorSpec]]:
    """Parse and validate a header frame. Raises ProtocolError naming what is wrong."""
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError("oversized", f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types for garbage input
        raise ProtocolError("bad_header", f"header is not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise ProtocolError("bad_header", "header is not a map")
    if header.get("proto") != PROTOCOL:
        raise ProtocolError("bad_header", f"protocol is {header.get('proto')!r}, expected {PROTOCOL!r}")
    if header.get("ver") != VERSION:
        raise ProtocolError("bad_version", f"protocol version {header.get('ver')!r}, this side speaks {VERSION}")
    cls = MESSAGE_TYPES.get(header.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise ProtocolError("bad_type", f"unknown message type {header.get('type')!r}")
    fields = _check_fields(cls, header.get("fields"))
    specs = _check_specs(cls, header.get("tensors"))
    return cls, fields, specs


def build(cls: type[Message], fields: dict, tensors: dict[str, torch.Tensor]) -> Message:
    return cls(**fields, **tensors)


def _check_fields(cls: type[Message], fields: object) -> dict:
    if type(fields) is not dict:
        raise ProtocolError("bad_header", f"{cls.TYPE}: 'fields' is not a map")
    schema = _schema(cls)
    unknown = [name for name in fields if name not in schema.scalars]
    if unknown:
        raise ProtocolError("bad_field", f"{cls.TYPE}: unknown field(s) {sorted(map(str, unknown))}")
    if not schema.required <= fields.keys():
        raise ProtocolError("bad_field", f"{cls.TYPE}: missing field(s) {sorted(schema.required - fields.keys())}")
    for name, value in fields.items():
        kinds = schema.scalars[name]
        kind = type(value)
        if kind not in kinds:
            if kind is int and float in kinds:  # msgpack packs 1.0 as a float, but peers may send ints
                fields[name] = float(value)
                continue
            raise ProtocolError(
                "bad_field", f"{cls.TYPE}.{name}: {kind.__name__} is not one of {sorted(k.__name__ for k in kinds)}"
            )
    return fields


def _check_specs(cls: type[Message], specs: object) -> list[TensorSpec]:
    if not isinstance(specs, list):
        raise ProtocolError("bad_header", f"{cls.TYPE}: 'tensors' is not a list")
    allowed = tensor_fields(cls)
    out, seen = [], set()
    for spec in specs:
        if not (isinstance(spec, list) and len(spec) == 4):
            raise ProtocolError("bad_tensor", f"{cls.TYPE}: tensor spec must be [name, dtype, shape, nframes]")
        name, dtype, shape, nframes = spec
        if name not in allowed or name in seen:
            raise ProtocolError("bad_tensor", f"{cls.TYPE}: unexpected or repeated tensor {name!r}")
        if dtype not in DTYPES:
            raise ProtocolError("bad_tensor", f"{cls.TYPE}.{name}: unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and len(shape) <= 8 and all(_nonneg_int(d) for d in shape)):
            raise ProtocolError("bad_tensor", f"{cls.TYPE}.{name}: bad shape {shape!r}")
        if math.prod(max(d, 1) for d in shape) > MAX_TENSOR_NUMEL:
            raise ProtocolError("bad_tensor", f"{cls.TYPE}.{name}: shape {shape!r} exceeds 2^48 elements")
        if not (_nonneg_int(nframes) and 1 <= nframes <= MAX_TENSOR_FRAMES):
            raise ProtocolError("bad_tensor", f"{cls.TYPE}.{name}: bad frame count {nframes!r}")
        seen.add(name)
        out.append(TensorSpec(name, dtype, tuple(shape), nframes))
    return out


def _nonneg_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < (1 << 40)


@dataclasses.dataclass(frozen=True)
class _Schema:
    """A message class's field layout, computed once: the decoder runs on every message."""

    order: tuple[tuple[str, bool], ...]  # (field name, travels as a tensor) in declaration order
    scalars: dict[str, frozenset]  # header field -> the exact Python types msgpack may give it
    tensors: tuple[str, ...]
    required: frozenset


_SCHEMAS: dict[type, _Schema] = {}


def _schema(cls: type[Message]) -> _Schema:
    if cls not in _SCHEMAS:
        hints = typing.get_type_hints(cls)
        order, scalars = [], {}
        for f in dataclasses.fields(cls):
            options = typing.get_args(hints[f.name]) if _is_union(hints[f.name]) else (hints[f.name],)
            is_tensor = torch.Tensor in options
            order.append((f.name, is_tensor))
            if not is_tensor:
                scalars[f.name] = frozenset(typing.get_origin(o) or o for o in options)
        required = frozenset(f.name for f in dataclasses.fields(cls) if f.name in scalars and _is_required(f))
        _SCHEMAS[cls] = _Schema(tuple(order), scalars, tuple(n for n, t in order if t), required)
    return _SCHEMAS[cls]


def _is_union(hint: object) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
