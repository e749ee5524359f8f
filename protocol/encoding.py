"""Payload encodings shared by both sides: how a vector travels in a Push, and how it is decoded.

The worker updates its error-feedback state with decode(encode(c)) -- exactly the values that
crossed the socket -- and the server applies the same decoded values, so the two stay in lock-step.

dense   values: the whole vector in float32, bfloat16 or float16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from protocol.errors import ProtocolError

VALUE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ENCODINGS = ("dense",)


@dataclass
class Payload:
    """What a Push carries besides its scalar fields."""

    encoding: str
    numel: int
    values: torch.Tensor
    indices: torch.Tensor | None = None
    signs: torch.Tensor | None = None
    meta: dict | None = None


def encode_dense(vec: torch.Tensor, value_dtype: str = "float32", out: torch.Tensor | None = None) -> Payload:
    """Dense payload of a flat CPU float32 vector; `out` (value_dtype) avoids an allocation."""
    dtype = VALUE_DTYPES[value_dtype]
    if dtype == torch.float32 and out is None:
        values = vec
    else:
        values = out if out is not None else torch.empty(vec.numel(), dtype=dtype)
        values.copy_(vec)
    return Payload("dense", vec.numel(), values)


def decode_dense(payload: Payload, numel: int, scratch: torch.Tensor) -> torch.Tensor:
    """The float32 vector a dense payload stands for (the received buffer itself when float32)."""
    values = payload.values
    if values.dim() != 1 or values.numel() != numel:
        raise ProtocolError("bad_shape", f"dense values have shape {tuple(values.shape)}, expected ({numel},)")
    if values.dtype not in VALUE_DTYPES.values():
        raise ProtocolError("bad_encoding", f"dense values must be a float type, got {values.dtype}")
    if values.dtype == torch.float32:
        return values
    return scratch[:numel].copy_(values)


def require_finite(t: torch.Tensor, what: str) -> None:
    # sum() is ~100x faster than isfinite().all(); a finite sum implies every element is finite
    # (any NaN or inf makes it NaN or inf). Only a huge-but-finite vector takes the slow exact path.
    if t.numel() and not torch.isfinite(t.sum()) and not bool(torch.isfinite(t).all()):
        raise ProtocolError("nonfinite", f"{what} contains NaN or inf")
