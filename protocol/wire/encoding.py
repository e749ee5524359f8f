"""Payload encodings shared by both sides: how a vector travels in a Push, and how it is decoded.

The worker updates its error-feedback state with decode(encode(c)) -- exactly the values that
crossed the socket -- and the server applies the same decoded values, so the two stay in lock-step.
Decoding validates everything (the server decodes untrusted input): a bad payload raises
ProtocolError and nothing is written anywhere.

dense    values: the whole vector in float32, bfloat16 or float16.
sparse   values (k floats in float32/bfloat16/float16) at strictly increasing positions, coded as
         int32 indices (4 bytes each; a vector of at most 2^31 coordinates), int64 indices (8 bytes each;
         any size), delta16 (uint16 gaps, 2 bytes each, when every gap < 65536) or bitmap (one bit per
         coordinate, d/8 bytes); "auto" picks the smallest that can address the vector. A vector of more
         than 2^31 coordinates never travels as int32 (its indices would wrap): the encoder refuses an
         explicit int32 and the decoder refuses an int32 payload for it.
natural  powers of two (natural compression): one byte of float32 exponent per coordinate plus one
         sign bit per coordinate (9 bits per value, exact for 0 and +-2^e).
qsgd     int8 levels l with |l| <= s per coordinate and one norm: value = norm * l / s.
sign     one sign bit per coordinate and one scale: value = +-scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from protocol.errors import ProtocolError

VALUE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INDEX_CODINGS = ("int32", "int64", "delta16", "bitmap")
INT32_MAX_NUMEL = 1 << 31  # int32 indices address coordinates 0 .. 2^31 - 1
ENCODINGS = ("dense", "sparse", "natural", "qsgd", "sign")
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)
_SHIFTS = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0], dtype=torch.uint8)


@dataclass
class Payload:
    """What a Push carries besides its scalar fields (tensors are CPU tensors ready to send)."""

    encoding: str
    numel: int
    values: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    signs: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.indices, self.signs) if t is not None)


# -- encode (worker side: trusted input) ---------------------------------------------------------
def encode_dense(vec: torch.Tensor, value_dtype: str = "float32", out: torch.Tensor | None = None) -> Payload:
    """Dense payload of a flat float32 vector. float32 on the CPU aliases `vec` (no copy)."""
    dtype = VALUE_DTYPES[value_dtype]
    clipped = 0
    if dtype == torch.float32 and vec.device.type == "cpu" and out is None:
        values = vec
    else:
        values, clipped = narrow_counted(vec, out if out is not None else torch.empty(vec.numel(), dtype=dtype))
    return Payload("dense", vec.numel(), values, meta={"clipped": clipped} if clipped else {})


def narrow(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """x cast into out's dtype, saturating finite values beyond its range at +-max instead of making them
    inf (float16 tops out at 65504): the server would refuse an inf, and error feedback absorbs the
    clipped part because the worker keeps exactly what was sent. A non-finite x stays non-finite."""
    return narrow_counted(x, out)[0]


def narrow_counted(x: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, int]:
    """narrow, and how many values it clipped (reported in the push's meta.clipped: persistent clipping
    means the wire dtype is too small for these values)."""
    out.copy_(x)
    if out.dtype == torch.float32:
        return out, 0
    limit = torch.finfo(out.dtype).max
    over = (x.abs() > limit) & torch.isfinite(x)
    clipped = int(over.sum())
    if clipped:
        out[over] = (x[over].sign() * limit).to(out.dtype)
    return out, clipped


def encode_sparse(
    indices: torch.Tensor, values: torch.Tensor, numel: int, value_dtype: str = "float32", index_coding: str = "auto"
) -> Payload:
    """Sparse payload; `indices` must be strictly increasing in [0, numel) (the compressors guarantee it)."""
    indices, values = indices.cpu(), values.cpu()
    if indices.numel() and not (int(indices[0]) >= 0 and int(indices[-1]) < numel):
        raise ValueError(f"sparse indices must lie in [0, {numel})")
    coding = choose_index_coding(index_coding, indices, numel)
    if coding in ("int32", "int64"):
        coded = indices.to(torch.int32 if coding == "int32" else torch.int64)
    elif coding == "delta16":
        gaps = torch.diff(indices, prepend=indices.new_zeros(1))
        coded = gaps.to(torch.int32).to(torch.int16)  # gaps < 65536 wrap into int16's bit pattern
    else:
        mask = torch.zeros(numel, dtype=torch.bool)
        mask[indices] = True
        coded = pack_bits(mask)
    wire_values, clipped = narrow_counted(values, torch.empty(values.numel(), dtype=VALUE_DTYPES[value_dtype]))
    meta: dict = {"index_coding": coding, **({"clipped": clipped} if clipped else {})}
    return Payload("sparse", numel, wire_values, indices=coded, meta=meta)


def choose_index_coding(requested: str, indices: torch.Tensor, numel: int) -> str:
    """The coding a sparse payload of these indices uses: `requested`, unless it cannot code them.

    auto: the smallest that can address the vector. delta16 with a gap of 65536 or more: the fixed width
    coding of the vector's size (int32 up to 2^31 coordinates, as always; above, int64 or the bitmap,
    whichever is smaller). int32 for a vector of more than 2^31 coordinates: ValueError (indices would wrap).
    """
    if requested == "auto":
        return _choose_coding(indices, numel)
    if requested == "int32" and not index_coding_fits("int32", numel):
        raise ValueError(
            f"index coding int32 cannot address a vector of {numel} coordinates (at most 2^31): "
            "use auto (it picks int64, delta16 or a bitmap)"
        )
    if requested == "delta16" and not _fits_delta16(indices):
        return _wide_coding(indices.numel(), numel)  # a gap of 65536 or more: delta16 cannot code it
    if requested not in INDEX_CODINGS:
        raise ValueError(f"unknown index coding {requested!r}")
    return requested


def index_coding_fits(coding: str, numel: int) -> bool:
    """Whether `coding` can address every coordinate of a vector of `numel` (delta16: given small gaps)."""
    return coding != "int32" or numel <= INT32_MAX_NUMEL


def _wide_coding(k: int, numel: int) -> str:
    if numel <= INT32_MAX_NUMEL:
        return "int32"
    return "int64" if 8 * k <= (numel + 7) // 8 else "bitmap"


def encode_natural(x: torch.Tensor) -> Payload:
    """x holds only 0 and +-2^e (normal floats); sent as exponent bytes + sign bits, exactly."""
    bits = x.detach().float().cpu().contiguous().view(torch.int32)
    if bool(((bits & 0x7FFFFF) != 0).any()):
        raise ValueError("natural encoding needs exact powers of two (zero mantissa)")
    exponent = ((bits >> 23) & 0xFF).to(torch.uint8)
    return Payload("natural", x.numel(), values=exponent, signs=pack_bits(bits < 0))


def encode_qsgd(levels: torch.Tensor, norm: float, s: int) -> Payload:
    return Payload("qsgd", levels.numel(), values=levels.to(torch.int8).cpu(), meta={"norm": float(norm), "levels": s})


def encode_sign(negative: torch.Tensor, scale: float) -> Payload:
    return Payload("sign", negative.numel(), signs=pack_bits(negative.cpu()), meta={"scale": float(scale)})


def _fits_delta16(indices: torch.Tensor) -> bool:
    if indices.numel() == 0:
        return True
    return int(indices[0]) < 65536 and (indices.numel() < 2 or int(torch.diff(indices).max()) < 65536)


def _choose_coding(indices: torch.Tensor, numel: int) -> str:
    k = indices.numel()
    fixed = "int32" if index_coding_fits("int32", numel) else "int64"
    sizes = {fixed: k * (4 if fixed == "int32" else 8), "bitmap": (numel + 7) // 8}
    if _fits_delta16(indices):
        sizes["delta16"] = 2 * k
    return min(sizes, key=lambda c: (sizes[c], c != fixed))


# -- decode (server side: untrusted input) -------------------------------------------------------
def decode_sparse(p: Payload, numel: int, bounded: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(int64 indices, float32 values) of a sparse payload, validated (bounded: see decode_into)."""
    _check_numel(p, numel)
    if p.encoding != "sparse":
        raise ProtocolError("bad_encoding", f"expected a sparse payload, got {p.encoding!r}")
    values = _float_values(p, None)
    coding = p.meta.get("index_coding")
    if p.indices is None:
        raise ProtocolError("bad_encoding", "sparse payload without indices")
    if coding in ("int32", "int64") and not index_coding_fits(coding, numel):
        raise ProtocolError("bad_encoding", f"{coding} indices cannot address {numel} coordinates (at most 2^31)")
    if coding == "int32":
        idx = _expect(p.indices, torch.int32, values.numel(), "indices").to(torch.int64)
    elif coding == "int64":
        idx = _expect(p.indices, torch.int64, values.numel(), "indices")
    elif coding == "delta16":
        gaps = _expect(p.indices, torch.int16, values.numel(), "indices").to(torch.int64) & 0xFFFF
        idx = torch.cumsum(gaps, 0)
    elif coding == "bitmap":
        mask = unpack_bits(_expect(p.indices, torch.uint8, (numel + 7) // 8, "bitmap"), numel)
        idx = torch.nonzero(mask).squeeze(1)
        if idx.numel() != values.numel():
            raise ProtocolError("bad_shape", f"bitmap marks {idx.numel()} positions for {values.numel()} values")
    else:
        raise ProtocolError("bad_encoding", f"unknown index coding {coding!r}")
    if idx.numel():
        if int(idx[0]) < 0 or int(idx[-1]) >= numel:
            raise ProtocolError("bad_index", f"indices must lie in [0, {numel})")
        if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
            raise ProtocolError("bad_index", "indices must be strictly increasing")
    out = values.float()
    _require_values(out, "sparse values", bounded)
    return idx, out


def decode_into(p: Payload, numel: int, out: torch.Tensor, bounded: bool = False) -> torch.Tensor:
    """The dense float32 vector any payload stands for, written into `out[:numel]` (validated).

    A float32 dense payload is returned as is (no copy). NaN and inf are refused (code nonfinite); with
    bounded=True (the server) so are values whose squares overflow float32 (code overflow), in the same
    single pass.
    """
    _check_numel(p, numel)
    dense = out[:numel]
    if p.encoding == "dense":
        values = _float_values(p, numel)
        _require_values(values, "dense values", bounded)  # before the copy: a refused payload leaves `out` as is
        if values.dtype == torch.float32:
            return values
        return dense.copy_(values)
    elif p.encoding == "sparse":
        idx, vals = decode_sparse(p, numel, bounded)  # validated, values finite: no pass over the dense vector
        return dense.zero_().index_copy_(0, idx, vals)
    elif p.encoding == "natural":
        exponent = _expect(p.values, torch.uint8, numel, "exponents")
        if bool((exponent == 255).any()):
            raise ProtocolError("nonfinite", "natural payload codes inf or NaN")
        negative = unpack_bits(_expect(p.signs, torch.uint8, (numel + 7) // 8, "signs"), numel)
        bits = (exponent.to(torch.int32) << 23) | (negative.to(torch.int32) << 31)
        dense.copy_(bits.view(torch.float32))
    elif p.encoding == "qsgd":
        s, norm = _meta_int(p, "levels", 1, 127), _meta_float(p, "norm")
        levels = _expect(p.values, torch.int8, numel, "levels")
        if bool((levels.abs() > s).any()):
            raise ProtocolError("bad_encoding", f"qsgd levels exceed +-{s}")
        torch.mul(levels, norm / s, out=dense)
    elif p.encoding == "sign":
        scale = _meta_float(p, "scale")
        negative = unpack_bits(_expect(p.signs, torch.uint8, (numel + 7) // 8, "signs"), numel)
        dense.fill_(scale)
        dense[negative] = -scale
    else:
        raise ProtocolError("bad_encoding", f"unknown encoding {p.encoding!r}")
    _require_values(dense, f"{p.encoding} values", bounded)
    return dense


def decode_dense(payload: Payload, numel: int, scratch: torch.Tensor) -> torch.Tensor:
    """Backwards-compatible name: a dense payload's float32 vector."""
    if payload.encoding != "dense":
        raise ProtocolError("bad_encoding", f"expected a dense payload, got {payload.encoding!r}")
    return decode_into(payload, numel, scratch)


def _check_numel(p: Payload, numel: int) -> None:
    if p.numel != numel:
        raise ProtocolError("bad_shape", f"payload is for {p.numel} parameters, the model has {numel}")


def _float_values(p: Payload, numel: int | None) -> torch.Tensor:
    v = p.values
    if v is None or v.dim() != 1 or v.dtype not in VALUE_DTYPES.values():
        raise ProtocolError("bad_encoding", f"{p.encoding} values must be a 1-D float32/bfloat16/float16 tensor")
    if numel is not None and v.numel() != numel:
        raise ProtocolError("bad_shape", f"dense values have {v.numel()} entries, expected {numel}")
    if v.numel() > p.numel:
        raise ProtocolError("bad_shape", f"{v.numel()} values for {p.numel} parameters")
    return v


def _expect(t: torch.Tensor | None, dtype: torch.dtype, numel: int, what: str) -> torch.Tensor:
    if t is None or t.dtype != dtype or t.dim() != 1 or t.numel() != numel:
        got = "nothing" if t is None else f"{t.dtype} of shape {tuple(t.shape)}"
        raise ProtocolError("bad_shape", f"{what}: expected {dtype} of shape ({numel},), got {got}")
    return t


FLOAT32_MAX = float(torch.finfo(torch.float32).max)
SQRT_FLOAT32_MAX = math.sqrt(FLOAT32_MAX)


def _meta_float(p: Payload, key: str) -> float:
    """A header number that the decoder turns into float32: finite and within float32's range."""
    value = p.meta.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ProtocolError("bad_encoding", f"{p.encoding} needs a finite meta.{key}")
    if abs(value) > FLOAT32_MAX:
        raise ProtocolError("bad_encoding", f"{p.encoding} meta.{key} = {value!r} is beyond float32's range")
    return float(value)


def _meta_int(p: Payload, key: str, lo: int, hi: int) -> int:
    value = p.meta.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ProtocolError("bad_encoding", f"{p.encoding} needs meta.{key} in [{lo}, {hi}]")
    return value


def is_finite(t: torch.Tensor) -> bool:
    """Whether every element is finite. sum() is ~100x faster than isfinite().all(), and a finite sum implies
    every element is finite (any NaN or inf makes it NaN or inf); only a huge-but-finite vector whose sum
    overflows takes the slow exact path."""
    return not t.numel() or bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def require_finite(t: torch.Tensor, what: str) -> None:
    if not is_finite(t):
        raise ProtocolError("nonfinite", f"{what} contain NaN or inf")


def _require_values(t: torch.Tensor, what: str, bounded: bool) -> None:
    if bounded:
        require_bounded(t, what)
    else:
        require_finite(t, what)


def require_bounded(t: torch.Tensor, what: str) -> float:
    """The float32 L2 norm of t, refusing NaN/inf (code nonfinite) and values whose squares overflow float32
    (code overflow): an update that AMSGrad's v = b2 v + (1 - b2) g^2 would turn into inf, after which that
    coordinate never moves again. Costs one pass, as the finiteness check it replaces."""
    if not t.numel():
        return 0.0
    norm = float(torch.linalg.vector_norm(t, dtype=torch.float32))
    if norm < SQRT_FLOAT32_MAX:  # whether or not the kernel rescales: the sum of squares fits float32
        return norm
    require_finite(t, what)
    raise ProtocolError("overflow", f"{what} are too large: their squares overflow float32 (|x| > 1.8e19)")


# -- bits ----------------------------------------------------------------------------------------
def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """bool (d,) -> uint8 (ceil(d/8),), most significant bit first."""
    d = mask.numel()
    padded = torch.zeros((d + 7) // 8 * 8, dtype=torch.uint8)
    padded[:d] = mask.reshape(-1).to(torch.uint8)
    return (padded.view(-1, 8) * _BIT_WEIGHTS).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, d: int) -> torch.Tensor:
    """uint8 (ceil(d/8),) -> bool (d,)."""
    return ((packed.unsqueeze(1) >> _SHIFTS) & 1).reshape(-1)[:d].bool()


# -- shards (worker side: each server shard gets the part of a push in its range) -----------------
def slice_payload(p: Payload, lo: int, hi: int) -> Payload:
    """The payload of coordinates [lo, hi) of `p`, in the same encoding with the same values, so a shard
    decodes exactly p's decoded values over its range. lo must be a multiple of 8 (packed sign bits are cut
    at whole bytes; layout.SHARD_ALIGN guarantees it). Dense, natural and qsgd values are views."""
    if lo % 8 or not 0 <= lo <= hi <= p.numel:
        raise ValueError(f"cannot cut [{lo}, {hi}) out of a payload of {p.numel} (lo must be a multiple of 8)")
    n, signs = hi - lo, None
    if p.signs is not None:
        signs = p.signs[lo // 8 : (hi + 7) // 8]
    if p.encoding == "sparse":
        idx, _ = decode_sparse(p, p.numel)
        assert p.values is not None  # decode_sparse checked it
        inside = (idx >= lo) & (idx < hi)
        coding = p.meta.get("index_coding", "auto")
        out = encode_sparse(idx[inside] - lo, p.values[inside], n, _dtype_name(p.values.dtype), _fitting(coding, n))
        out.meta = {**p.meta, **out.meta}
        return out
    values = p.values[lo:hi] if p.values is not None and p.encoding != "sign" else p.values
    return Payload(p.encoding, n, values, None, signs, dict(p.meta))


def _dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, d in VALUE_DTYPES.items() if d == dtype)


def _fitting(coding: str, numel: int) -> str:
    """The index coding a shard's part uses: the push's own, unless it cannot address the part (then auto)."""
    return coding if coding in INDEX_CODINGS and index_coding_fits(coding, numel) else "auto"
