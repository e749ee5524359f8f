"""Named layout of the flat float32 parameter vector: each tensor is one contiguous range.

Both sides agree on it (the worker's model signature becomes the server's layout). With server.shards S,
shard_ranges cuts [0, total) into S contiguous ranges, one per server process (docs/design.md, Shards).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from protocol.errors import ProtocolError


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def stop(self) -> int:
        return self.offset + self.numel


class Layout:
    def __init__(self, entries: list[Entry]):
        self.entries = entries
        self.total = entries[-1].stop if entries else 0
        self._by_name = {e.name: e for e in entries}

    @classmethod
    def from_shapes(cls, named_shapes: list[tuple[str, tuple[int, ...]]]) -> Layout:
        entries, offset = [], 0
        for name, shape in named_shapes:
            entries.append(Entry(name, tuple(int(d) for d in shape), offset))
            offset += entries[-1].numel
        return cls(entries)

    @classmethod
    def from_signature(cls, signature: list, empty: bool = False) -> Layout:
        """Validate a Hello signature [[name, [shape...], dtype], ...] and build the layout (empty: may be [])."""
        if not isinstance(signature, list) or not (signature or empty):
            raise ProtocolError("bad_field", "hello.signature must be a non-empty list")
        named, seen = [], set()
        for item in signature:
            if not (isinstance(item, list) and len(item) == 3):
                raise ProtocolError("bad_field", "signature entries are [name, shape, dtype]")
            name, shape, dtype = item
            if not isinstance(name, str) or name in seen:
                raise ProtocolError("bad_field", f"signature name {name!r} is not a unique string")
            if dtype != "float32":
                raise ProtocolError("bad_field", f"parameter {name!r} has dtype {dtype!r}; only float32 is served")
            if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
                raise ProtocolError("bad_field", f"parameter {name!r} has a bad shape {shape!r}")
            seen.add(name)
            named.append((name, tuple(shape)))
        return cls.from_shapes(named)

    def signature(self) -> list:
        return [[e.name, list(e.shape), "float32"] for e in self.entries]

    def to_wire(self) -> list:
        return [[e.name, list(e.shape), e.offset] for e in self.entries]

    @classmethod
    def from_wire(cls, items: list) -> Layout:
        return cls([Entry(name, tuple(shape), offset) for name, shape, offset in items])

    def __getitem__(self, name: str) -> Entry:
        return self._by_name[name]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and self.entries == other.entries

    def __hash__(self) -> int:
        return hash(tuple(self.entries))

    def shard_ranges(self, k: int) -> list[tuple[int, int]]:
        """[0, total) cut into k contiguous ranges, one per server shard (docs/design.md, Shards)."""
        return shard_ranges(self.total, k)


SHARD_ALIGN = 64  # coordinates: whole bytes of packed sign bits, and whole SIMD blocks of the optimizer's kernel


def shard_ranges(total: int, k: int) -> list[tuple[int, int]]:
    """[0, total) cut into k contiguous ranges of near-equal bytes (every parameter is float32), each cut at
    a multiple of SHARD_ALIGN coordinates, inside a tensor where that keeps the balance. A range may be empty
    when total < k * SHARD_ALIGN."""
    if k < 1:
        raise ValueError(f"shards must be >= 1, got {k}")
    # each cut is the ideal i * total / k rounded to the nearest multiple of SHARD_ALIGN (so within
    # SHARD_ALIGN / 2 of it), and every range within SHARD_ALIGN of total / k coordinates
    bounds = [min(total, round(i * total / (k * SHARD_ALIGN)) * SHARD_ALIGN) for i in range(k)] + [total]
    return list(zip(bounds[:-1], bounds[1:]))
