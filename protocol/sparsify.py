"""Index selection for the sparsifying compressors (Top-K, Rand-K) of the workers, and for the server's
compressed downlink (ps/downlink.py), which must select alike. Pure math: no sockets, clocks, logging.

Every function takes one flat segment (the whole vector, or one parameter tensor's range) and returns
strictly increasing int64 indices into it, on the segment's device. Inputs are magnitudes |x| when the
rule needs them, written by the caller into a reused scratch buffer (a fresh |x| per call costs page
faults: ~18 ms at 10M floats against ~2 ms into a reused buffer).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import torch

from protocol.wire.encoding import is_finite

# A sampled threshold is the j-th largest of m sampled magnitudes, about m * count / d of them for a
# target count. The count above it then has a relative spread of about 1/sqrt(j), so the sample is
# enlarged until j >= MIN_RANK (+-12%); when that needs a quarter of the segment or more, the full
# segment is used instead (as cheap at that size).
MIN_RANK = 64
BLOCK = 1 << 18  # coordinates per block of topk_exact_of_difference: the fastest of 32k..512k here (2 MiB L2)
HAND_DIGITS = 15  # a float ratio of at most this many significant digits is taken exactly as written


def count_kept(ratio: float | Fraction, k: int, d: int) -> int:
    """k = k if k > 0 else max(1, floor(ratio * d)), clamped to d; floor(ratio * d) is exact (see floor_times).

    The former rule, floor(ratio * d + 1e-6), kept one too many whenever ratio * d fell less than 1e-6 short
    of an integer (ratio 0.4999999 of d = 4 kept 2).
    """
    if d <= 0:
        return 0
    kept = k if k > 0 else max(1, floor_times(ratio, d))
    return min(kept, d)


def floor_times(ratio: float | Fraction, d: int) -> int:
    """floor(r * d) for the number r that `ratio` stands for, in exact rational arithmetic (no tolerance).

    A float ratio stands for the decimal it was written as: repr() gives the shortest decimal that reads
    back as the same double, which is the text written whenever it had at most 15 significant digits. So
    0.07 is 7/100 and 0.07 * 100 keeps 7 (the double times 100 is 7.000000000000001), 0.29 * 100 keeps 29
    (28.999999999999996 in doubles), and 0.4999999 * 4 keeps 1. Computed shares (an explicit k spread over
    tensors) are passed as Fractions and used as they are.
    """
    if isinstance(ratio, Fraction):
        return math.floor(ratio * d)
    return math.floor(Fraction(repr(float(ratio))) * d)


def topk_exact(mag: torch.Tensor, k: int, mask: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
    """Indices of the k largest magnitudes with a deterministic tie rule.

    Keep every |x| strictly above the k-th largest magnitude t, then the lowest-index coordinates equal
    to t until k are kept: the set sorted by (-|x|, index) would give, identical on CPU and GPU
    (torch.topk itself breaks ties arbitrarily). `mask` is a reused bool buffer of mag's size.

    With `gen`, a sampled threshold first narrows the search to about 2k candidates, every |x| >= it.
    If at least k pass, they hold all of the k largest, so t and the result are exactly those of the
    full search (the draws change the cost, never the indices); otherwise the full search runs.
    torch.topk over 10M floats costs ~190 ms on one CPU thread, the narrowed search ~10 ms.
    """
    d = mag.numel()
    if k >= d:
        return torch.arange(d, device=mag.device)
    if k <= 0:
        return torch.empty(0, dtype=torch.int64, device=mag.device)
    low = _sampled_threshold(mag, 2 * k, 0.0, gen) if gen is not None else None
    if low is not None and bool(low > 0):
        cand = _nonzero(_at_least(mag, low, mask))
        if cand.numel() >= k:
            vals = mag.index_select(0, cand)  # ~20x faster on the CPU than mag[cand]
            t = _kth_largest(vals, k)
            keep = vals >= t
            if int(keep.sum()) == k:  # no ties beyond the k-th: cand is sorted, so is cand[keep]
                return cand[keep]
            above = cand[vals > t]
            ties = cand[vals == t][: k - above.numel()]
            return torch.cat([above, ties]).sort().values
    t = torch.topk(mag, k, sorted=False).values.min()
    torch.gt(mag, t, out=mask)
    above = _nonzero(mask)
    torch.eq(mag, t, out=mask)
    ties = _nonzero(mask)[: k - above.numel()]  # at least one: t itself is among the k largest
    return torch.cat([above, ties]).sort().values


def topk_exact_of_difference(
    a: torch.Tensor, b: torch.Tensor, k: int, gen: torch.Generator, scratch: DifferenceScratch
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(indices, values) of c = a - b that topk_exact(|c|, k, mask, gen) keeps, and c there, without writing c.

    a, b: flat float32 CPU tensors of one size d; indices int64, strictly increasing; values float32 (the
    same bits as (a - b)[indices]). One pass over a and b in cache-sized blocks: each block's difference,
    magnitude and the candidates at or above a sampled threshold (narrowed search as in topk_exact), so the
    dense c, |c| and mask are never written to memory. The k-th largest candidate and the tie rule then
    give exactly topk_exact's set. None when the narrowed search does not apply (k <= 0, k >= d, a
    threshold of 0 or no cheaper sample, fewer than k candidates): the caller runs topk_exact on |a - b|.
    Raises ValueError when c holds NaN or inf. At 4.2M floats on one CPU thread it takes about half the time
    of writing c and running topk_exact on |c| (python -m bench.ef_profile).
    """
    d = a.numel()
    if not 0 < k < d:
        return None
    low = _sampled_difference_threshold(a, b, 2 * k, gen)
    if low is None or not low > 0:
        return None
    cand, mag, val = _difference_candidates(a.numpy(), b.numpy(), np.float32(low), scratch)
    if cand.size < k:
        return None
    t = kth_largest_magnitude(mag, k)  # the k-th largest of every |c|: all >= low are here
    chosen = mag >= t
    if np.count_nonzero(chosen) > k:  # ties at t: every |c| > t, then the lowest-index ones equal to t
        above = mag > t
        above[np.flatnonzero(mag == t)[: k - int(np.count_nonzero(above))]] = True
        chosen = above  # a mask, not a union of index sets: no sort (ties are common with bfloat16 values)
    keep = np.flatnonzero(chosen)
    return torch.from_numpy(cand[keep]), torch.from_numpy(val[keep])


def select_difference(
    a: torch.Tensor,
    b: torch.Tensor,
    k: int,
    gen: torch.Generator,
    blocks: DifferenceScratch,
    buffers: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, values) of topk_exact(|a - b|, k, mask, gen) and a - b there: the one blocked pass of
    topk_exact_of_difference where it applies, else a - b written into the c of buffers() = (c, |c|, mask),
    each of a's size and asked for only then, and searched whole. Raises ValueError when a - b holds NaN or
    inf."""
    sel = topk_exact_of_difference(a, b, k, gen, blocks)
    if sel is not None:
        return sel
    c, mag, mask = buffers()
    torch.sub(a, b, out=c)
    if not is_finite(c):
        raise ValueError("the difference holds NaN or inf")
    indices = topk_exact(torch.abs(c, out=mag), k, mask, gen)
    return indices, c.index_select(0, indices)


class DifferenceScratch:
    """Reused per-block buffers of topk_exact_of_difference: c, |c| (float32) and a mask, BLOCK entries each."""

    def __init__(self) -> None:
        self.c = np.empty(BLOCK, dtype=np.float32)
        self.mag = np.empty(BLOCK, dtype=np.float32)
        self.mask = np.empty(BLOCK, dtype=np.bool_)


def _sampled_difference_threshold(a: torch.Tensor, b: torch.Tensor, count: int, gen: torch.Generator) -> float | None:
    """_sampled_threshold of |a - b| (the same draws, the same value) without computing |a - b| densely."""
    d = a.numel()
    m = max(1, math.ceil(MIN_RANK * d / max(count, 1)))
    if 4 * m >= d:
        return None
    pos = torch.randint(0, d, (m,), generator=gen, device=a.device)
    sample = torch.sub(a.index_select(0, pos), b.index_select(0, pos)).abs_()
    j = min(m, max(1, round(m * count / d)))
    return float(torch.topk(sample, j, sorted=False).values.min())


def _difference_candidates(
    a: np.ndarray, b: np.ndarray, low: np.float32, scratch: DifferenceScratch
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions, |c|, c) of every |c| = |a - b| >= low, block by block; ValueError for NaN or inf in c.

    |c| is compared as int32 bits (the order of non-negative floats), so a NaN passes too and is refused with
    the infs among the candidates: no separate finiteness pass."""
    low_bits = np.array(low, dtype=np.float32).view(np.int32)
    pos, mags, vals = [], [], []
    with np.errstate(over="ignore", invalid="ignore"):  # inf and NaN are refused below
        for lo in range(0, a.size, BLOCK):  # a vectorised pass per block of BLOCK coordinates, in cache
            n = min(BLOCK, a.size - lo)
            c = np.subtract(a[lo : lo + n], b[lo : lo + n], out=scratch.c[:n])
            mag = np.abs(c, out=scratch.mag[:n])
            hit = _positions(np.greater_equal(mag.view(np.int32), low_bits, out=scratch.mask[:n]))
            pos.append(hit + lo)
            mags.append(mag.take(hit))
            vals.append(c.take(hit))
    mag_all = np.concatenate(mags)
    if not np.isfinite(mag_all).all():
        raise ValueError("the difference has NaN or inf")
    return np.concatenate(pos), mag_all, np.concatenate(vals)


def _positions(mask: np.ndarray) -> np.ndarray:
    """np.flatnonzero(mask) of a sparse bool mask whose size is a multiple of 8, ~2x faster: the nonzero
    8-byte words first, then the True bytes among those words only."""
    if mask.size % 8:
        return np.flatnonzero(mask)
    words = np.flatnonzero(mask.view(np.uint64) != 0)
    within = np.flatnonzero(mask.reshape(-1, 8).take(words, axis=0))
    return words.take(within >> 3) * 8 + (within & 7)


def _kth_largest(vals: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest of magnitudes `vals` (0-dim tensor, 1 <= k <= numel): kth_largest_magnitude on the CPU,
    torch.topk elsewhere; the same value either way."""
    if vals.device.type == "cpu":
        return torch.tensor(kth_largest_magnitude(vals.numpy(), k))
    return torch.topk(vals, k, sorted=False).values.min()


def kth_largest_magnitude(mag: np.ndarray, k: int) -> np.float32:
    """The k-th largest of non-negative, non-NaN float32 values (1 <= k <= size): np.partition's answer, faster
    (0.35 against 1.7 ms for 84k candidates, one loaded measurement).

    For such floats the int32 bits are in the values' order, so one radix pass over the top 16 bits (exponent
    and 7 mantissa bits) counts each bucket and finds the one holding the k-th largest; np.partition then runs
    on that bucket alone (at most 3% of the 84k candidates of a Gaussian 4.2M-vector at 1%)."""
    top = mag.view(np.int32) >> 16
    base = top.min()
    top -= base
    counts = np.bincount(top)
    from_top = np.cumsum(counts[::-1])  # entries in the bucket and every higher one
    b = int(np.searchsorted(from_top, k))  # the first bucket from the top where k are reached
    bucket = counts.size - 1 - b
    inside = mag[top == bucket]
    r = k - (int(from_top[b]) - int(counts[bucket]))  # its rank inside the bucket, from the top
    return np.partition(inside, inside.size - r)[inside.size - r]


def topk_sampled(mag: torch.Tensor, k: int, fraction: float, gen: torch.Generator, mask: torch.Tensor) -> torch.Tensor:
    """Approximate Top-K: a threshold estimated from a seeded random sample, then every |x| >= it.

    The threshold is the (1 - k/d) quantile of m = max(fraction * d, MIN_RANK * d / k) magnitudes drawn
    with replacement. The number kept is random around k (relative spread about 1/sqrt(m k / d)); whatever
    is kept is exactly the largest `kept` magnitudes, so the call contracts with alpha = kept / d.
    """
    t = _sampled_threshold(mag, k, fraction, gen) if k < mag.numel() else None
    if t is None:
        return topk_exact(mag, k, mask)
    if bool(t > 0):
        _at_least(mag, t, mask)
    else:  # more than d - k zeros: keep the nonzeros (fewer than about k), never the zeros
        torch.gt(mag, 0, out=mask)
    return _nonzero(mask)


def _sampled_threshold(mag: torch.Tensor, count: int, fraction: float, gen: torch.Generator) -> torch.Tensor | None:
    """A magnitude that about `count` entries reach (0-dim tensor), from a sample; None if sampling is no cheaper."""
    d = mag.numel()
    m = max(1, round(fraction * d), math.ceil(MIN_RANK * d / max(count, 1)))
    if 4 * m >= d:
        return None
    sample = mag.index_select(0, torch.randint(0, d, (m,), generator=gen, device=mag.device))
    j = min(m, max(1, round(m * count / d)))  # rank of the threshold within the sample
    return torch.topk(sample, j, sorted=False).values.min()


def randk(d: int, k: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """k distinct coordinates of [0, d), uniformly random, sorted.

    randperm(d) costs ~300 ms at 10M, so for k <= d/4 draw with replacement until k distinct values
    are seen and keep a random k of them. The distinct set's law is invariant under permutations of
    the coordinates, and so is a uniform k-subset of it: the result is a uniform k-subset of [0, d).
    """
    if k >= d:
        return torch.arange(d, device=device)
    if 4 * k > d:
        return torch.randperm(d, generator=gen, device=device)[:k].sort().values
    draws = k + 2 * k * k // d + 16  # expected duplicates ~ k^2 / (2d)
    seen = torch.unique(torch.randint(0, d, (draws,), generator=gen, device=device))
    while seen.numel() < k:
        more = torch.randint(0, d, (draws,), generator=gen, device=device)
        seen = torch.unique(torch.cat([seen, more]))
    if seen.numel() > k:
        seen = seen[torch.randperm(seen.numel(), generator=gen, device=device)[:k]].sort().values
    return seen


def _at_least(mag: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mask = mag >= t (t a 0-dim tensor of mag's dtype). On the CPU numpy's comparison into a bool
    array is ~5x faster than torch's (0.5 against 2.5 ms at 4.2M, one thread); the same float32 compare."""
    if mag.device.type == "cpu":
        np.greater_equal(mag.numpy(), np.float32(float(t)), out=mask.numpy())
    else:
        torch.ge(mag, t, out=mask)
    return mask


def _nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Positions of the True entries, increasing (both nonzeros return them sorted).

    On the CPU numpy's nonzero is ~2.5x faster than torch's on one thread (2.0 against 5.4 ms at 4.2M)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return torch.nonzero(mask).view(-1)
