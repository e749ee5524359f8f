"""Compressors C: flat float32 vector -> wire payload (docs/algorithms.md, Compressors). Pure math: no sockets,
clocks, logging.

Every compressor takes a flat float32 tensor on the CPU or a GPU (selection and rounding run on its
device) and returns a protocol.wire.encoding.Payload of CPU tensors ready to send. The vector a payload
stands for is protocol.wire.encoding.decode_into(payload): error feedback must track that one (values
rounded to bfloat16/float16 on the wire included), never the pre-quantisation vector.

Constants, for the worst case over x (docs/algorithms.md, Compressors):
  alpha  contraction, E||C(x) - x||^2 <= (1 - alpha)||x||^2; None when C is not contractive. An unbiased
         C with omega < 1 also contracts, with alpha = 1 - omega (natural: 7/8), and declares it.
  omega  unbiased variance, E[C(x)] = x and E||C(x) - x||^2 <= omega ||x||^2; None when C is biased
Both hold for the exact arithmetic; rounding values to bfloat16/float16 adds its own (relative 2^-9 /
2^-12 per value) error on top and makes the unbiased ones unbiased only up to that rounding.

Randomized compressors draw from a torch.Generator per device seeded with make_compressor's seed,
so a run is reproducible (on one device; CPU and GPU streams differ). Exact Top-K is deterministic
and picks the same indices on every device.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from fractions import Fraction
from typing import Protocol

import torch

from protocol import sparsify
from protocol.config.schema import COMPRESSORS, CompressionConfig
from protocol.wire.encoding import (
    Payload,
    encode_dense,
    encode_natural,
    encode_qsgd,
    encode_sign,
    encode_sparse,
    is_finite,
)
from protocol.wire.layout import Layout


def alpha_of_unbiased(omega: float) -> float | None:
    """An unbiased C with omega < 1 is also contractive: E||C(x) - x||^2 <= omega ||x||^2 = (1 - (1 - omega))||x||^2."""
    return 1 - omega if omega < 1 else None


class PayloadCompressor(Protocol):
    """What an uplink (worker/ef.py) takes: C as a map from a flat float32 vector to a wire payload.

    Compressor below is the base class of the built-in ones (make_compressor); anything of this shape serves.
    One may also offer compress_difference(a, b), the payload of compress(a - b) bit for bit, computed
    without writing a - b (exact Top-K does): EF21's uplink then calls it with (target, g_i)."""

    def compress(self, x: torch.Tensor) -> Payload:
        """C(x) as a payload of CPU tensors ready to send; raises ValueError for a vector C has no meaning for."""
        ...


class Compressor(ABC):
    name: str
    alpha: float | None
    omega: float | None

    def __init__(self, numel: int, seed: int = 0):
        self.numel = numel
        self.last_kept = 0  # coordinates sent by the last call (effective ratio = last_kept / numel)
        self._seed = seed
        self._gens: dict[torch.device, torch.Generator] = {}

    def compress(self, x: torch.Tensor) -> Payload:
        """Raises ValueError for a vector of another shape or dtype, or with NaN or inf: no compressor has a
        meaning for those (Top-K, for one, would silently select nothing), so none is quietly sent."""
        self._check(x)
        if not is_finite(x):
            raise ValueError(f"{self.name} was given a vector with NaN or inf")
        return self._compress(x.detach())

    def _check(self, x: torch.Tensor) -> None:
        """ValueError unless x is a flat float32 vector of numel."""
        if x.dim() != 1 or x.numel() != self.numel or x.dtype != torch.float32:
            raise ValueError(
                f"{self.name} compresses flat float32 vectors of {self.numel}, got {x.dtype} of shape {tuple(x.shape)}"
            )

    @abstractmethod
    def _compress(self, x: torch.Tensor) -> Payload: ...

    def _gen(self, device: torch.device) -> torch.Generator:
        gen = self._gens.get(device)
        if gen is None:
            gen = self._gens[device] = torch.Generator(device=device)
            gen.manual_seed(self._seed)
        return gen


class Identity(Compressor):
    """C(x) = x, dense in the configured value dtype.

    float32 on the CPU aliases x (no copy): the caller must not change x while a zero-copy send of the
    payload may still be in flight (docs/performance.md, Machine facts). Every other payload is built from
    fresh tensors.
    """

    name, alpha, omega = "identity", 1.0, 0.0

    def __init__(self, numel: int, values: str = "float32"):
        super().__init__(numel)
        self.values = values

    def _compress(self, x: torch.Tensor) -> Payload:
        self.last_kept = self.numel
        return encode_dense(x, self.values)


class _Sparsifier(Compressor):
    """Shared by Top-K and Rand-K: per-segment selection (one segment, or one per parameter tensor)."""

    def __init__(self, segments: list[tuple[int, int, int]], numel: int, values: str, indices: str, seed: int):
        super().__init__(numel, seed)
        self.segments = segments  # (offset, size, k) with increasing offsets
        self.values, self.indices = values, indices
        self.k = sum(k for _, _, k in segments)

    def _finish(self, idx: list[torch.Tensor], vals: list[torch.Tensor]) -> Payload:
        idx_t = idx[0] if len(idx) == 1 else torch.cat(idx)
        vals_t = vals[0] if len(vals) == 1 else torch.cat(vals)
        self.last_kept = idx_t.numel()
        return encode_sparse(idx_t, vals_t, self.numel, self.values, self.indices)


class TopK(_Sparsifier):
    """Keep the k largest |x_j| (exact: deterministic ties, alpha = min over segments of k_l/d_l), or about
    k of them by a sampled threshold (approximate: alpha is None because the kept count is random;
    each call still contracts with last_kept / numel, as it keeps exactly the largest last_kept)."""

    name, omega = "topk", None

    def __init__(
        self,
        segments: list[tuple[int, int, int]],
        numel: int,
        values: str = "float32",
        indices: str = "auto",
        exact: bool = True,
        sample_fraction: float = 0.01,
        seed: int = 0,
    ):
        super().__init__(segments, numel, values, indices, seed)
        self.exact, self.sample_fraction = exact, sample_fraction
        self.alpha = min(k / n for _, n, k in segments) if exact and segments else None
        self._mag: torch.Tensor | None = None  # reused |x| and mask buffers on x's device
        self._mask: torch.Tensor | None = None
        self._diff: torch.Tensor | None = None  # compress_difference's a - b, when it must be written
        self._blocks: sparsify.DifferenceScratch | None = None  # its per-block buffers

    def _buffers(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The reused |x| and mask buffers, allocated (again) on x's device."""
        if self._mag is None or self._mask is None or self._mag.device != x.device:
            self._mag = torch.empty_like(x)
            self._mask = torch.empty(x.numel(), dtype=torch.bool, device=x.device)
        return self._mag, self._mask

    def compress_difference(self, a: torch.Tensor, b: torch.Tensor) -> Payload:
        """compress(a - b), bit for bit (the same indices and values), for flat float32 vectors a, b of numel.

        Exact Top-K on the CPU never writes a - b: each segment is one blocked pass over a and b
        (sparsify.topk_exact_of_difference), unless its narrowed search does not apply; then, and for every
        other case, a - b is formed and compressed as compress does. Raises ValueError as compress does
        (another shape or dtype; NaN or inf in a - b)."""
        self._check(a)
        self._check(b)
        if not self.exact or a.device.type != "cpu" or b.device.type != "cpu":
            return self.compress(torch.sub(a, b, out=self._difference(a)))
        if self._blocks is None:
            self._blocks = sparsify.DifferenceScratch()
        a, b = a.detach(), b.detach()
        idx, vals = [], []
        for off, n, k in self.segments:
            sel, picked = self._select_difference(a, b, off, n, k)
            idx.append(sel + off)
            vals.append(picked)
        return self._finish(idx, vals)

    def _select_difference(
        self, a: torch.Tensor, b: torch.Tensor, off: int, n: int, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices into the segment, c there) of one segment of c = a - b: the blocked pass, or the full
        search over the segment's |c| written out where that pass does not apply."""
        assert self._blocks is not None  # compress_difference makes it

        def buffers() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # the segment's share of each
            mag_buf, mask_buf = self._buffers(a)
            return self._difference(a)[off : off + n], mag_buf[off : off + n], mask_buf[off : off + n]

        seg_a, seg_b, gen = a[off : off + n], b[off : off + n], self._gen(a.device)
        try:
            return sparsify.select_difference(seg_a, seg_b, k, gen, self._blocks, buffers)
        except ValueError:
            raise ValueError(f"{self.name} was given a vector with NaN or inf") from None

    def _difference(self, like: torch.Tensor) -> torch.Tensor:
        """The reused buffer a - b is written into when it must be, on like's device."""
        if self._diff is None or self._diff.device != like.device:
            self._diff = torch.empty_like(like)
        return self._diff

    def _compress(self, x: torch.Tensor) -> Payload:
        mag_buf, mask_buf = self._buffers(x)
        mag = torch.abs(x, out=mag_buf)
        idx, vals = [], []
        for off, n, k in self.segments:
            seg, mask = mag[off : off + n], mask_buf[off : off + n]
            if self.exact:
                sel = sparsify.topk_exact(seg, k, mask, self._gen(x.device))
            else:
                sel = sparsify.topk_sampled(seg, k, self.sample_fraction, self._gen(x.device), mask)
            idx.append(sel + off)
            vals.append(x.index_select(0, idx[-1]))  # ~20x faster on the CPU than x[idx]
        return self._finish(idx, vals)


class RandK(_Sparsifier):
    """k uniformly random coordinates per segment. Unscaled: contractive, alpha = k/d in expectation.
    Scaled by d/k: unbiased, omega = d/k - 1 (per tensor: the largest d_l/k_l - 1), alpha = 1 - omega when
    omega < 1 (k > d/2), else None."""

    name = "randk"

    def __init__(
        self,
        segments: list[tuple[int, int, int]],
        numel: int,
        values: str = "float32",
        indices: str = "auto",
        scaled: bool = False,
        seed: int = 0,
    ):
        super().__init__(segments, numel, values, indices, seed)
        self.scaled = scaled
        ratios = [n / k for _, n, k in segments] or [1.0]
        omega = max(ratios) - 1  # of the scaled variant
        self.omega = omega if scaled else None
        self.alpha = alpha_of_unbiased(omega) if scaled else 1 / max(ratios)

    def _compress(self, x: torch.Tensor) -> Payload:
        idx, vals = [], []
        for off, n, k in self.segments:
            idx.append(sparsify.randk(n, k, self._gen(x.device), x.device) + off)
            picked = x.index_select(0, idx[-1])
            vals.append(picked * (n / k) if self.scaled else picked)
        return self._finish(idx, vals)


class Natural(Compressor):
    """Natural compression: |x_j| rounded at random to a neighbouring power of two, unbiased, omega = 1/8.

    On the float32 bits: with mantissa field m (23 bits), round up to the next exponent with probability
    m / 2^23 = (|x| - 2^floor) / 2^floor, else drop the mantissa. That is the rule of docs/algorithms.md,
    Compressors, exact in
    integers. The same rule covers subnormals (|x| < 2^-126 becomes 0 or 2^-126, still unbiased; there
    the relative variance bound does not hold, but each such coordinate adds at most |x_j| 2^-126 of
    error). |x| in (2^127, 2^128) rounds down to 2^127 (2^128 is not a float32): biased, never inf.
    inf stays inf and NaN becomes inf, so a non-finite input yields a payload the server refuses.
    """

    name, alpha, omega = "natural", 7 / 8, 1 / 8  # alpha = 1 - omega (see alpha_of_unbiased)

    def _compress(self, x: torch.Tensor) -> Payload:
        bits = x.contiguous().view(torch.int32)
        draw = torch.randint(
            0, 1 << 23, (x.numel(),), generator=self._gen(x.device), device=x.device, dtype=torch.int32
        )
        up = draw < (bits & 0x7FFFFF)  # probability mantissa / 2^23
        down = bits & -(1 << 23)  # sign and exponent bits alone: +-2^floor(log2|x|), or 0
        up &= (down & 0x7F800000) < (254 << 23)  # exponent 254 cannot go up (255 codes inf)
        rounded = down.add_(draw.copy_(up).bitwise_left_shift_(23))  # +1 in the exponent field
        self.last_kept = self.numel
        return encode_natural(rounded.view(torch.float32))


class QSGD(Compressor):
    """QSGD with s levels: l_j = sign(x_j) floor(s|x_j|/||x||_2 + u_j), value = ||x||_2 l_j / s.

    Unbiased with omega = min(d/s^2, sqrt(d)/s). Levels are clamped to s: float32 rounding can put
    |x_j|/||x|| an ulp above 1 for a dominant coordinate (a bias of that ulp, nothing more).
    ||x||_2 must be finite in float32 (values up to ~1e19); otherwise the payload's norm is not and the
    server refuses it.
    """

    name = "qsgd"

    def __init__(self, numel: int, levels: int = 16, seed: int = 0):
        super().__init__(numel, seed)
        self.levels = levels
        self.omega = min(numel / levels**2, math.sqrt(numel) / levels)
        self.alpha = alpha_of_unbiased(self.omega)

    def _compress(self, x: torch.Tensor) -> Payload:
        s = self.levels
        norm = torch.linalg.vector_norm(x)
        self.last_kept = self.numel
        if float(norm) == 0.0:
            return encode_qsgd(torch.zeros(self.numel, dtype=torch.int8), 0.0, s)
        u = torch.rand(x.numel(), generator=self._gen(x.device), device=x.device)
        scaled = x.abs().div_(norm).mul_(s)  # in [0, s] (up to an ulp): divide first, never s / tiny norm
        level = scaled.add_(u).floor_().clamp_(max=s)
        return encode_qsgd(level.copysign_(x), float(norm), s)


class Sign(Compressor):
    """Scaled sign: C(x) = (||x||_1 / d) sign(x), zeros sent as +scale (the wire has no zero sign).

    Biased. E||C(x) - x||^2 = ||x||^2 - ||x||_1^2 / d, so it contracts with alpha = ||x||_1^2 / (d ||x||_2^2),
    which is >= 1/d (equality for a 1-sparse x): alpha = 1/d is declared, the worst case.
    """

    name, omega = "sign", None

    def __init__(self, numel: int):
        super().__init__(numel)
        self.alpha = 1 / numel if numel else None

    def _compress(self, x: torch.Tensor) -> Payload:
        scale = float(torch.linalg.vector_norm(x, ord=1)) / max(1, self.numel)
        self.last_kept = self.numel
        return encode_sign(x < 0, scale)


COMPRESSOR_NAMES = COMPRESSORS


def segments(cfg: CompressionConfig, layout: Layout) -> list[tuple[int, int, int]]:
    """(offset, size, k) per selection segment: the whole vector (scope global) or each tensor (scope tensor).

    Per tensor, k_l = max(1, floor(ratio * d_l)); an explicit cfg.k is spread in proportion to d_l.
    """
    d = layout.total
    if cfg.scope == "global":
        return [(0, d, sparsify.count_kept(cfg.ratio, cfg.k, d))] if d else []
    ratio = Fraction(cfg.k, d) if cfg.k > 0 else cfg.ratio  # an exact share: k * d_l / d whole keeps that
    entries = sorted((e for e in layout.entries if e.numel), key=lambda e: e.offset)
    return [(e.offset, e.numel, sparsify.count_kept(ratio, 0, e.numel)) for e in entries]


def make_compressor(cfg: CompressionConfig, layout: Layout, seed: int) -> Compressor:
    d = layout.total
    if cfg.compressor == "identity":
        return Identity(d, cfg.values)
    if cfg.compressor == "topk":
        return TopK(
            segments(cfg, layout), d, cfg.values, cfg.indices, cfg.selection == "exact", cfg.sample_fraction, seed
        )
    if cfg.compressor == "randk":
        return RandK(segments(cfg, layout), d, cfg.values, cfg.indices, cfg.scaled, seed)
    if cfg.compressor == "natural":
        return Natural(d, seed)
    if cfg.compressor == "qsgd":
        return QSGD(d, cfg.levels, seed)
    if cfg.compressor == "sign":
        return Sign(d)
    raise ValueError(f"unknown compressor {cfg.compressor!r}; expected one of {COMPRESSOR_NAMES}")
