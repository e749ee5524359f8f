"""Compressors (docs/algorithms.md, Compressors and Test oracles, 7): contraction and variance bounds, tie
rules, and what their payloads decode to.

Monte-Carlo tolerances are stated where used; each is at least 5 standard deviations of the estimate,
and the seeds are fixed, so the tests are deterministic.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
import torch

from protocol import sparsify
from protocol.config.schema import COMPRESSORS, CompressionConfig
from protocol.wire.encoding import VALUE_DTYPES, decode_into, decode_sparse
from protocol.wire.layout import Layout
from worker.compressors import COMPRESSOR_NAMES, make_compressor, segments

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device here: CPU/GPU agreement not checked")


def make(d_or_layout, seed=0, **cfg):
    layout = d_or_layout if isinstance(d_or_layout, Layout) else Layout.from_shapes([("w", (d_or_layout,))])
    return make_compressor(CompressionConfig(method="ef21", **cfg), layout, seed)


def decode(payload, d):
    return decode_into(payload, d, torch.full((d,), float("nan"))).clone()


def reference_topk(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the first k in the order (-|x|, index): a stable sort, the rule every device must follow."""
    order = torch.sort(-x.abs(), stable=True).indices
    return order[:k].sort().values


def neighbour_powers(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(2^floor(log2|x|), 2^ceil(log2|x|)) for nonzero normal x."""
    mant, exp = torch.frexp(x.abs().double())  # |x| = mant * 2^exp, mant in [0.5, 1)
    lo = torch.ldexp(torch.ones_like(mant), exp - 1)
    return lo, torch.where(mant == 0.5, lo, 2 * lo)


# -- names and construction ----------------------------------------------------------------------
def test_names_match_the_config_schema():
    assert tuple(COMPRESSOR_NAMES) == tuple(COMPRESSORS)
    for name in COMPRESSOR_NAMES:
        assert make(100, compressor=name).name == name


def test_k_from_ratio_and_explicit_k():
    assert make(1000, compressor="topk", ratio=0.01).k == 10
    assert make(100, compressor="topk", ratio=0.29).k == 29  # 0.29 * 100 = 28.999999999999996 in binary
    assert make(50, compressor="topk", ratio=0.001).k == 1  # at least one
    assert make(1000, compressor="topk", k=7, ratio=0.5).k == 7  # explicit k overrides ratio
    assert make(10, compressor="randk", k=50).k == 10  # never more than d


@pytest.mark.parametrize(
    "ratio,d,kept",
    [(0.4999999, 4, 1), (0.01, 100, 1), (0.07, 100, 7), (0.29, 100, 29), (0.57, 100, 57), (0.1, 30, 3), (1e-9, 5, 1)],
)
def test_kept_count_is_the_exact_floor_of_the_ratio_as_written(ratio, d, kept):
    assert sparsify.count_kept(ratio, 0, d) == kept


def test_kept_count_equals_exact_decimal_arithmetic_over_many_ratios_and_sizes():
    """Property: for a ratio written with 1 to 11 significant digits, k = max(1, floor(ratio * d)) computed
    on the decimal itself, for sizes that make ratio * d an integer, fall just short of one (by 1 to 3 units
    of the last written digit: where binary rounding and any tolerance go wrong), or anything."""
    rng = random.Random(12)
    for _ in range(20_000):
        digits, shift = rng.randint(1, sparsify.HAND_DIGITS), rng.randint(0, 4)
        m = rng.randrange(10 ** (digits - 1), 10**digits)
        text = f"{m}e-{digits + shift}"  # in (0, 1)
        exact = Fraction(text)
        base = exact.denominator  # exact * base is whole
        d = rng.choice([rng.randint(1, 10**6), base * rng.randint(1, 50), _just_short(exact, rng)])
        if d < 1 or d > 2**48:
            continue
        want = min(d, max(1, math.floor(exact * d)))
        assert sparsify.count_kept(float(text), 0, d) == want, (text, d)


def _just_short(exact: Fraction, rng: random.Random) -> int:
    """A size d where exact * d falls 1 to 3 units of 1/denominator short of an integer (0 if none exists)."""
    p, q = exact.numerator, exact.denominator
    if math.gcd(p, q) != 1 or q == 1:
        return 0
    return (-rng.randint(1, 3) * pow(p, -1, q)) % q + q * rng.randint(0, 3)


def test_kept_count_of_a_computed_share_k_over_d_is_the_exact_share():
    """Per-tensor scope spreads an explicit k as ratio k / d: a tensor of d_l with k * d_l / d whole keeps that."""
    rng = random.Random(5)
    for _ in range(20_000):
        d = rng.randint(2, 10**7)
        k = rng.randint(1, d)
        g = math.gcd(k, d)
        d_l = (d // g) * rng.randint(1, max(1, g))  # k * d_l / d is whole
        assert sparsify.count_kept(Fraction(k, d), 0, d_l) == min(d_l, max(1, k * d_l // d)), (k, d, d_l)
    layout = Layout.from_shapes([("a", (100,)), ("b", (200,))])
    cfg = CompressionConfig(method="ef21", compressor="topk", k=100, scope="tensor")
    assert [k for _, _, k in segments(cfg, layout)] == [33, 66]  # 100 * 100 / 300 and 100 * 200 / 300, exactly


def test_wrong_input_is_refused():
    comp = make(10, compressor="topk", k=2)
    for bad in (torch.zeros(11), torch.zeros(10, dtype=torch.float64), torch.zeros(2, 5)):
        with pytest.raises(ValueError):
            comp.compress(bad)


# -- Top-K ---------------------------------------------------------------------------------------
def test_topk_keeps_the_k_largest_and_contracts():
    gen = torch.Generator().manual_seed(1)
    for trial in range(200):
        d = int(torch.randint(1, 2000, (1,), generator=gen))
        k = int(torch.randint(1, d + 1, (1,), generator=gen))
        x = torch.randn(d, generator=gen) * 10 ** (4 * torch.rand(d, generator=gen) - 2)
        comp = make(d, compressor="topk", k=k)
        p = comp.compress(x)
        idx, vals = decode_sparse(p, d)
        assert idx.numel() == k == comp.last_kept, trial
        dropped = torch.ones(d, dtype=torch.bool)
        dropped[idx] = False
        if k < d:
            assert x[idx].abs().min() >= x[dropped].abs().max(), trial
        torch.testing.assert_close(vals, x[idx], rtol=0, atol=0)
        err = (decode(p, d) - x).double().square().sum()
        # deterministic bound; float64 sums of float32 squares: 1e-12 relative slack for summation order
        assert err <= (1 - k / d) * x.double().square().sum() * (1 + 1e-12), trial
        assert comp.alpha == k / d


def test_topk_ties_follow_the_stable_rule():
    assert decode_sparse(make(10, compressor="topk", k=4).compress(torch.ones(10)), 10)[0].tolist() == [0, 1, 2, 3]
    idx, _ = decode_sparse(make(1000, compressor="topk", k=37).compress(torch.full((1000,), -2.5)), 1000)
    assert idx.tolist() == list(range(37))
    gen = torch.Generator().manual_seed(2)
    for _ in range(50):  # integer-valued vectors: many ties at the threshold
        x = torch.randint(-3, 4, (500,), generator=gen).float()
        k = int(torch.randint(1, 500, (1,), generator=gen))
        idx, _ = decode_sparse(make(500, compressor="topk", k=k).compress(x), 500)
        assert torch.equal(idx, reference_topk(x, k))


def test_topk_narrowed_search_gives_the_full_search_indices():
    """The sampled pre-filter of exact Top-K changes the cost, never the result (ties included)."""
    d = 1 << 20
    gen = torch.Generator().manual_seed(15)
    sparse = torch.randn(d, generator=gen) * (torch.rand(d, generator=gen) < 0.05)  # 95% zeros
    vectors = {
        "gaussian": torch.randn(d, generator=gen),
        "mostly_zero": sparse,
        "integers": torch.randint(-50, 51, (d,), generator=gen).float(),
    }  # ~10k ties per value
    mask = torch.empty(d, dtype=torch.bool)
    for name, x in vectors.items():
        mag = x.abs()
        order = torch.sort(-mag, stable=True).indices  # reference order (-|x|, index)
        for k in (10, 1000, 10_485, 300_000):
            full = sparsify.topk_exact(mag, k, mask)
            narrowed = sparsify.topk_exact(mag, k, mask, torch.Generator().manual_seed(k))
            assert torch.equal(full, order[:k].sort().values), (name, k)
            assert torch.equal(narrowed, full), (name, k)
    # the narrowed path really ran for the Gaussian vector at 1%: its lower threshold passes >= k entries
    low = sparsify._sampled_threshold(vectors["gaussian"].abs(), 2 * 10_485, 0.0, torch.Generator().manual_seed(0))
    assert low is not None and int((vectors["gaussian"].abs() >= low).sum()) >= 10_485


def same_payload(p, q) -> bool:
    """Bit for bit: encoding, meta and every tensor (dtype, shape, contents)."""
    if (p.encoding, p.numel, p.meta) != (q.encoding, q.numel, q.meta):
        return False
    for s, t in ((p.values, q.values), (p.indices, q.indices), (p.signs, q.signs)):
        if (s is None) != (t is None) or (s is not None and (s.dtype != t.dtype or not torch.equal(s, t))):
            return False
    return True


def difference_cases(d: int, gen: torch.Generator) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(a, b) pairs whose a - b has plain values, many ties, mostly zeros, signed zeros and huge spreads."""
    g = lambda: torch.randn(d, generator=gen)
    ints = lambda: torch.randint(-4, 5, (d,), generator=gen).float()
    a = g()
    return {
        "gaussian": (g(), g() * 1e-3),
        "integers": (ints(), ints()),  # a - b takes 17 values: ~d/17 ties at the k-th
        "mostly_zero": (a, torch.where(torch.rand(d, generator=gen) < 0.97, a, g())),  # threshold 0: full search
        "signed_zeros": (torch.zeros(d), -torch.zeros(d).index_fill_(0, torch.arange(0, d, 3), 1.0)),
        "spread": (g() * 10 ** (6 * torch.rand(d, generator=gen) - 3), g()),
        "one_value": (torch.full((d,), 2.5), torch.full((d,), -0.5)),  # all tied
    }


@pytest.mark.parametrize("values,indices", [("float32", "int32"), ("bfloat16", "auto"), ("float16", "delta16")])
def test_topk_of_a_difference_is_compress_of_the_difference_bit_for_bit(values, indices):
    """compress_difference(a, b), the blocked pass EF21 uses, sends exactly what compress(a - b) sends: the same
    indices (ties by the stable rule) and values, for every scope, k and vector shape, blocks and fallbacks."""
    gen = torch.Generator().manual_seed(21)
    d = 3 * sparsify.BLOCK + 12_345  # several blocks and a ragged last one
    layout = Layout.from_shapes([("a", (d - 40_000,)), ("b", (30_000,)), ("c", (9_000,)), ("d", (1000,))])
    for name, (a, b) in difference_cases(d, gen).items():
        for cfg in ({"ratio": 0.01}, {"ratio": 0.001}, {"k": 1}, {"ratio": 0.3}, {"ratio": 0.01, "scope": "tensor"}):
            one = make(layout, seed=3, compressor="topk", values=values, indices=indices, **cfg)
            two = make(layout, seed=4, compressor="topk", values=values, indices=indices, **cfg)
            want = one.compress(a - b)
            assert same_payload(two.compress_difference(a, b), want), (name, cfg)
            assert two.last_kept == one.last_kept
            ref = reference_topk(a - b, one.k) if "scope" not in cfg else None
            assert ref is None or torch.equal(decode_sparse(want, d)[0], ref), (name, cfg)


def test_topk_of_a_difference_runs_the_blocked_pass_and_refuses_nan_and_inf(monkeypatch):
    gen = torch.Generator().manual_seed(22)
    d, k = 1 << 20, 10_485
    a, b = torch.randn(d, generator=gen), torch.randn(d, generator=gen)
    blocks = sparsify.DifferenceScratch()
    sel = sparsify.topk_exact_of_difference(a, b, k, torch.Generator().manual_seed(0), blocks)
    assert sel is not None  # the narrowed search applied (not the fallback)
    assert torch.equal(sel[0], reference_topk(a - b, k)) and torch.equal(sel[1], (a - b)[sel[0]])
    comp = make(d, compressor="topk", ratio=0.01)
    want = make(d, compressor="topk", ratio=0.01).compress(a - b)
    with monkeypatch.context() as m:  # a threshold fewer than k reach: the full search over |a - b|
        m.setattr(sparsify, "_sampled_difference_threshold", lambda a, b, count, gen: float((a - b).abs().max()) * 0.9)
        assert sparsify.topk_exact_of_difference(a, b, k, torch.Generator(), blocks) is None
        assert same_payload(comp.compress_difference(a, b), want)
    for bad in (float("nan"), float("inf"), -float("inf")):
        for where in (0, d // 2, d - 1):
            a2 = a.clone()
            a2[where] = bad
            with pytest.raises(ValueError, match="NaN or inf"):
                comp.compress_difference(a2, b)
    big = torch.full((d,), 3e38)
    with pytest.raises(ValueError, match="NaN or inf"):  # finite a and b, a - b overflows
        comp.compress_difference(big, -big)
    for wrong in (torch.zeros(d + 1), torch.zeros(d, dtype=torch.float64)):
        with pytest.raises(ValueError):
            comp.compress_difference(wrong, b)


def test_kth_largest_magnitude_is_the_partition_answer():
    import numpy as np

    rng = np.random.default_rng(24)
    cases = [
        np.abs(rng.standard_normal(84_000)).astype(np.float32),
        rng.integers(0, 5, 10_000).astype(np.float32),  # ties and zeros
        np.full(3000, 2.5, dtype=np.float32),
        np.array([0.0], dtype=np.float32),
        np.array([7.0, 0.5], dtype=np.float32),
        np.array([1e-45, 0.0, 3e38, np.inf, 1e-40], dtype=np.float32),  # subnormals, the extremes, inf
        (np.abs(rng.standard_normal(5000)) * 10.0 ** rng.integers(-30, 30, 5000)).astype(np.float32),
    ]
    for mag in cases:
        for k in {
            k for k in (1, 2, mag.size // 3 + 1, mag.size // 2 + 1, mag.size - 1, mag.size) if 1 <= k <= mag.size
        }:
            want = np.partition(mag, mag.size - k)[mag.size - k]
            assert sparsify.kth_largest_magnitude(mag.copy(), k) == want, (mag.size, k)


def test_positions_of_a_mask_are_flatnonzero():
    import numpy as np

    rng = np.random.default_rng(23)
    for size in (0, 1, 7, 8, 64, 1000, 4096, 4099, 1 << 16):
        for density in (0.0, 0.001, 0.02, 0.5, 1.0):
            mask = rng.random(size) < density
            assert np.array_equal(sparsify._positions(mask), np.flatnonzero(mask)), (size, density)


@needs_cuda
def test_topk_cpu_and_cuda_pick_the_same_indices():
    gen = torch.Generator().manual_seed(3)
    cases = [torch.ones(10_000), torch.randint(-3, 4, (100_000,), generator=gen).float(), torch.randn(1 << 20)]
    for x in cases:
        for scope in ("global", "tensor"):
            layout = Layout.from_shapes([("a", (x.numel() // 2,)), ("b", (x.numel() - x.numel() // 2,))])
            cpu = make(layout, compressor="topk", ratio=0.01, scope=scope).compress(x)
            gpu = make(layout, compressor="topk", ratio=0.01, scope=scope).compress(x.cuda())
            assert gpu.values.device.type == "cpu" and gpu.indices.device.type == "cpu"
            assert torch.equal(decode_sparse(cpu, x.numel())[0], decode_sparse(gpu, x.numel())[0])


def test_topk_per_tensor_keeps_k_l_in_each_tensor():
    layout = Layout.from_shapes([("w1", (50, 40)), ("b1", (40,)), ("w2", (40, 10)), ("b2", (10,))])
    x = torch.randn(layout.total, generator=torch.Generator().manual_seed(4))
    x[:2000] *= 100  # global selection would take everything from w1
    comp = make(layout, compressor="topk", ratio=0.05, scope="tensor")
    idx, _ = decode_sparse(comp.compress(x), layout.total)
    for e, k_l in zip(layout.entries, (100, 2, 20, 1)):  # max(1, floor(0.05 * d_l))
        inside = idx[(idx >= e.offset) & (idx < e.stop)]
        assert torch.equal(inside, reference_topk(x[e.offset : e.stop], k_l) + e.offset), e.name
    assert comp.last_kept == 123
    assert comp.alpha == pytest.approx(min(100 / 2000, 2 / 40, 20 / 400, 1 / 10))
    global_idx, _ = decode_sparse(make(layout, compressor="topk", ratio=0.05).compress(x), layout.total)
    assert bool((global_idx < 2000).all())


def test_sampled_selection_keeps_about_k_of_the_largest():
    d, k = 1 << 20, 10_485  # ratio 1%
    for seed in range(3):
        x = torch.randn(d, generator=torch.Generator().manual_seed(10 + seed))
        comp = make(d, seed=seed, compressor="topk", ratio=0.01, selection="sampled", sample_fraction=0.01)
        assert comp.alpha is None  # the kept count is random: no fixed contraction constant
        idx, vals = decode_sparse(comp.compress(x), d)
        # spread ~ 1/sqrt(105) = 10% here; [0.5k, 2k] is more than 5 sigma
        assert 0.5 * k <= comp.last_kept <= 2 * k and idx.numel() == comp.last_kept
        dropped = torch.ones(d, dtype=torch.bool)
        dropped[idx] = False
        assert x[idx].abs().min() >= x[dropped].abs().max()  # exactly the largest last_kept entries
        torch.testing.assert_close(vals, x[idx], rtol=0, atol=0)


def test_sampled_selection_never_keeps_zeros():
    x = torch.zeros(1 << 18)
    x[::1000] = torch.arange(1, 264).float()  # 263 nonzeros, k = 2621: the sampled threshold is 0
    comp = make(x.numel(), compressor="topk", ratio=0.01, selection="sampled")
    idx, _ = decode_sparse(comp.compress(x), x.numel())
    assert torch.equal(idx, torch.arange(0, x.numel(), 1000))


# -- Rand-K --------------------------------------------------------------------------------------
def monte_carlo(comp, x: torch.Tensor, trials: int) -> tuple[torch.Tensor, float]:
    """(mean of C(x), mean of ||C(x) - x||^2) over `trials` calls, in float64."""
    total, sq = torch.zeros(x.numel(), dtype=torch.float64), 0.0
    for _ in range(trials):
        c = decode(comp.compress(x), x.numel()).double()
        total += c
        sq += float((c - x.double()).square().sum())
    return total / trials, sq / trials


def test_randk_unscaled_contracts_in_expectation():
    d, k = 100, 10
    x = torch.randn(d, generator=torch.Generator().manual_seed(5))
    comp = make(d, seed=1, compressor="randk", k=k)
    assert comp.alpha == k / d and comp.omega is None
    _, err = monte_carlo(comp, x, 4000)
    # per-trial error has relative std ~0.15 for this x, so the mean's is ~0.25%: 2% is > 5 sigma
    assert err == pytest.approx((1 - k / d) * float(x.double().square().sum()), rel=0.02)


def test_randk_scaled_is_unbiased_with_omega():
    d, k = 100, 10
    x = torch.randn(d, generator=torch.Generator().manual_seed(6))
    comp = make(d, seed=2, compressor="randk", k=k, scaled=True)
    assert comp.omega == d / k - 1 and comp.alpha is None
    mean, err = monte_carlo(comp, x, 4000)
    norm2 = float(x.double().square().sum())
    # E||mean - x||^2 = omega ||x||^2 / trials, i.e. a relative error of 0.047; 0.1 is > 5 sigma of that chi
    assert float((mean - x.double()).norm()) <= 0.1 * math.sqrt(norm2)
    # per-trial error has relative std ~0.5, the mean's ~0.8%: 5% is > 5 sigma
    assert err == pytest.approx((d / k - 1) * norm2, rel=0.05)


def test_randk_indices_are_sorted_unique_and_reproducible():
    d = 10_000
    x = torch.randn(d)
    for k in (1, 50, 3000, 9999):  # small k draws with replacement, large k uses randperm
        a, b, c = (make(d, seed=s, compressor="randk", k=k).compress(x) for s in (7, 7, 8))
        ia, ib, ic = (decode_sparse(p, d)[0] for p in (a, b, c))
        assert ia.numel() == k and bool((ia[1:] > ia[:-1]).all())
        assert torch.equal(ia, ib)
        assert k == 9999 or not torch.equal(ia, ic)


def test_randk_small_k_covers_every_coordinate_uniformly():
    d, k, trials = 50, 5, 4000
    comp = make(d, seed=3, compressor="randk", k=k)
    counts = torch.zeros(d)
    for _ in range(trials):
        counts[decode_sparse(comp.compress(torch.ones(d)), d)[0]] += 1
    # each coordinate is picked Binomial(4000, 0.1): mean 400, std 19; +-100 is > 5 sigma
    assert bool(((counts - 400).abs() <= 100).all())


# -- natural ---------------------------------------------------------------------------------------
def test_natural_outputs_signed_powers_of_two_between_the_neighbours():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(4096, generator=gen) * 10 ** (60 * torch.rand(4096, generator=gen) - 30)
    x[:4] = torch.tensor([0.0, 1.0, -0.25, 2.0**-126])
    c = decode(make(x.numel(), compressor="natural").compress(x), x.numel())
    bits = c.view(torch.int32)
    assert bool(((bits & 0x7FFFFF) == 0).all())  # zero mantissa: 0 or +-2^e, never a subnormal
    nz = x != 0
    assert bool((torch.sign(c[nz]) == torch.sign(x[nz])).all()) and c[0] == 0
    lo, hi = neighbour_powers(x[nz])
    assert bool(((c[nz].abs() == lo) | (c[nz].abs() == hi)).all())
    assert c[1:4].tolist() == [1.0, -0.25, 2.0**-126]  # exact powers of two are kept as they are


def test_natural_is_unbiased_with_omega_one_eighth():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(64, generator=gen) * 10 ** (6 * torch.rand(64, generator=gen) - 3)
    comp = make(x.numel(), seed=4, compressor="natural")
    assert comp.omega == 1 / 8 and comp.alpha == 7 / 8
    trials = 4000
    mean, err = monte_carlo(comp, x, trials)
    xd = x.double()
    # per coordinate var <= x_j^2 / 8, so the mean's std <= |x_j| / sqrt(8 * 4000) = 0.0056|x_j|: 0.03 is > 5 sigma
    assert bool(((mean - xd).abs() <= 0.03 * xd.abs()).all())
    lo, hi = neighbour_powers(x)
    exact = float(((hi - xd.abs()) * (xd.abs() - lo)).sum())  # E||C(x)-x||^2 of this rounding rule
    assert exact <= float(xd.square().sum()) / 8
    assert err == pytest.approx(exact, rel=0.1)  # relative std of the estimate ~1.5% here: 0.1 is > 5 sigma


def test_natural_subnormals_and_huge_values():
    tiny = torch.full((4000,), 3e-39)  # subnormal, about 0.255 * 2^-126
    c = decode(make(4000, seed=5, compressor="natural").compress(tiny), 4000)
    assert set(c.unique().tolist()) <= {0.0, 2.0**-126}
    # unbiased: the share rounded up is Binomial(4000, 0.255)/4000, std 0.0069; 0.035 is 5 sigma
    assert float((c != 0).float().mean()) == pytest.approx(3e-39 / 2.0**-126, abs=0.035)
    huge = torch.tensor([3.0e38, -3.3e38, float(torch.finfo(torch.float32).max)])
    c = decode(make(3, compressor="natural").compress(huge), 3)
    assert c.tolist() == [2.0**127, -(2.0**127), 2.0**127]  # 2^128 is not a float32: rounded down, never inf


# -- QSGD and sign -------------------------------------------------------------------------------
def test_qsgd_levels_and_unbiasedness():
    d, s = 64, 4
    x = torch.randn(d, generator=torch.Generator().manual_seed(11))
    comp = make(d, seed=6, compressor="qsgd", levels=s)
    assert comp.omega == min(d / s**2, math.sqrt(d) / s) and comp.alpha is None
    p = comp.compress(x)
    norm = float(x.norm())
    assert p.meta["levels"] == s and p.meta["norm"] == pytest.approx(norm, rel=1e-6)
    assert int(p.values.abs().max()) <= s
    trials = 4000
    mean, err = monte_carlo(comp, x, trials)
    xd = x.double()
    step = norm / s
    # per coordinate var <= step^2 / 4, so the mean's std <= step / (2 sqrt(4000)) = 0.0079 step: 0.04 step > 5 sigma
    assert bool(((mean - xd).abs() <= 0.04 * step).all())
    frac = (xd.abs() / step) - (xd.abs() / step).floor()
    exact = float((step**2 * frac * (1 - frac)).sum())
    assert exact <= comp.omega * float(xd.square().sum())
    assert err == pytest.approx(exact, rel=0.1)  # relative std of the estimate ~2% here


def test_qsgd_zero_vector_and_dominant_coordinate():
    assert decode(make(5, compressor="qsgd").compress(torch.zeros(5)), 5).tolist() == [0.0] * 5
    x = torch.tensor([0.0, -3.0, 0.0])  # |x_j| / ||x|| == 1: level exactly s
    p = make(3, compressor="qsgd", levels=7).compress(x)
    assert p.values.tolist() == [0, -7, 0]


def test_sign_scale_and_signs():
    x = torch.tensor([1.0, -2.0, 0.0, 3.0, -0.5])
    comp = make(5, compressor="sign")
    c = decode(comp.compress(x), 5)
    scale = 6.5 / 5
    assert c.tolist() == pytest.approx([scale, -scale, scale, scale, -scale])  # zeros go as +scale
    assert comp.alpha == 1 / 5 and comp.omega is None
    y = torch.randn(1000, generator=torch.Generator().manual_seed(12))
    cy = decode(make(1000, compressor="sign").compress(y), 1000).double()
    l1, l2 = float(y.abs().double().sum()), float(y.double().square().sum())
    err = float((cy - y.double()).square().sum())
    assert err == pytest.approx(l2 - l1**2 / 1000, rel=1e-5)  # the contraction identity, float32 scale
    assert err <= (1 - 1 / 1000) * l2


# -- payloads decode to C(x), in every value dtype -------------------------------------------------
def expected(name: str, x: torch.Tensor, dtype: torch.dtype, p, comp) -> torch.Tensor | None:
    """The vector the payload must stand for, built independently of the compressor's code."""
    d = x.numel()
    if name == "identity":
        return x.to(dtype).float()
    if name == "topk":
        out = torch.zeros(d)
        idx = reference_topk(x, comp.k)
        out[idx] = x[idx].to(dtype).float()
        return out
    if name == "randk":
        idx, _ = decode_sparse(p, d)
        assert idx.numel() == comp.k
        out = torch.zeros(d)
        out[idx] = (x[idx] * (d / comp.k if comp.scaled else 1.0)).to(dtype).float()
        return out
    if name == "sign":
        return torch.where(x < 0, -1.0, 1.0) * torch.tensor(float(x.abs().double().sum()) / d).float()
    return None  # natural and qsgd are random: checked by their properties below


@pytest.mark.parametrize("values", list(VALUE_DTYPES))
@pytest.mark.parametrize("name", COMPRESSORS)
def test_payload_decodes_to_the_vector_it_stands_for(name, values):
    d = 3000
    x = torch.randn(d, generator=torch.Generator().manual_seed(13)) * 3
    for cfg in ({}, {"scaled": True}, {"indices": "int32"}, {"indices": "delta16"}, {"indices": "bitmap"}):
        comp = make(d, compressor=name, values=values, ratio=0.05, **cfg)
        p = comp.compress(x)
        for t in (p.values, p.indices, p.signs):
            assert t is None or t.device.type == "cpu"
        c = decode(p, d)
        want = expected(name, x, VALUE_DTYPES[values], p, comp)
        if want is not None:  # exact, but sign's scale: a float32 sum against float64 (1e-5 relative)
            torch.testing.assert_close(c, want, rtol=1e-5 if name == "sign" else 0, atol=0)
        elif name == "natural":
            lo, hi = neighbour_powers(x)
            assert bool(((c.abs() == lo) | (c.abs() == hi)).all() and (torch.sign(c) == torch.sign(x)).all())
        else:  # qsgd: a multiple of norm/s within one step of x
            step = p.meta["norm"] / p.meta["levels"]
            assert bool(((c - x).abs() <= step * (1 + 1e-6)).all())
        if "indices" in cfg and name in ("topk", "randk"):
            assert p.meta["index_coding"] == cfg["indices"]


def test_identity_float32_aliases_the_input():
    x = torch.randn(100)
    assert make(100).compress(x).values.data_ptr() == x.data_ptr()


@needs_cuda
@pytest.mark.parametrize("name", COMPRESSORS)
def test_cuda_input_gives_cpu_payloads(name):
    d = 5000
    x = torch.randn(d, generator=torch.Generator().manual_seed(14))
    for cfg in ({}, {"selection": "sampled"}, {"scaled": True}):
        p = make(d, compressor=name, **cfg).compress(x.cuda())
        for t in (p.values, p.indices, p.signs):
            assert t is None or t.device.type == "cpu"
        c = decode(p, d)
        assert torch.isfinite(c).all()
