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
from protocol.messages import MESSAGE_TYPES, Message

PROTOCOL = "taups"
VERSION = 1
MAX_HEADER_BYTES = 1 << 16
MAX_TENSOR_FRAMES = 1 << 16
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
    return tuple(name for name, hint in _hints(cls).items() if _is_tensor(hint))


def byte_view(t: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor, without a copy (any dtype, bfloat16 included)."""
    if t.device.type != "cpu":
        raise ValueError("tensors must be on the CPU to be sent; copy them to a (pinned) host buffer first")
    if not t.is_contiguous():
        raise ValueError("tensors must be contiguous to be sent without a copy")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def encode(msg: Message, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> list:
    """[header bytes, *memoryview frames]; the frames alias the message's tensors (zero-copy)."""
    fields, specs, frames = {}, [], []
    for f in dataclasses.fields(msg):
        value = getattr(msg, f.name)
        if isinstance(value, torch.Tensor):
            chunks = _chunks(byte_view(value), chunk_bytes)
            specs.append([f.name, DTYPE_NAMES[value.dtype], list(value.shape), len(chunks)])
            frames.extend(chunks)
        elif value is not None or not _is_tensor(_hints(type(msg))[f.name]):
            fields[f.name] = value
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
    if not isinstance(fields, dict):
        raise ProtocolError("bad_header", f"{cls.TYPE}: 'fields' is not a map")
    hints = _hints(cls)
    scalar = {name: hint for name, hint in hints.items() if not _is_tensor(hint)}
    unknown = sorted(set(fields) - set(scalar))
    if unknown:
        raise ProtocolError("bad_field", f"{cls.TYPE}: unknown field(s) {unknown}")
    required = {f.name for f in dataclasses.fields(cls) if _is_required(f) and f.name in scalar}
    missing = sorted(required - set(fields))
    if missing:
        raise ProtocolError("bad_field", f"{cls.TYPE}: missing field(s) {missing}")
    out = {}
    for name, value in fields.items():
        out[name] = _check_type(cls, name, scalar[name], value)
    return out


def _check_type(cls: type[Message], name: str, hint: object, value: object) -> object:
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        base = typing.get_origin(option) or option
        if base is bool and isinstance(value, bool):
            return value
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if base in (str, list, dict) and isinstance(value, base):
            return value
    raise ProtocolError("bad_field", f"{cls.TYPE}.{name}: expected {hint}, got {type(value).__name__}")


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
        if not (_nonneg_int(nframes) and 1 <= nframes <= MAX_TENSOR_FRAMES):
            raise ProtocolError("bad_tensor", f"{cls.TYPE}.{name}: bad frame count {nframes!r}")
        seen.add(name)
        out.append(TensorSpec(name, dtype, tuple(shape), nframes))
    return out


def _nonneg_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < (1 << 40)


_HINTS: dict[type, dict[str, object]] = {}


def _hints(cls: type[Message]) -> dict[str, object]:
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return _HINTS[cls]


def _is_union(hint: object) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _is_tensor(hint: object) -> bool:
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    return torch.Tensor in options


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
