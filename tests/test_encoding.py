"""protocol/wire/encoding.py: every payload round-trips, and malformed ones are refused with nothing written."""

from __future__ import annotations

import pytest
import torch

from protocol.config.schema import CompressionConfig
from protocol.errors import ProtocolError
from protocol.wire.encoding import (
    INDEX_CODINGS,
    VALUE_DTYPES,
    Payload,
    decode_into,
    decode_sparse,
    encode_dense,
    encode_natural,
    encode_qsgd,
    encode_sign,
    encode_sparse,
    pack_bits,
    unpack_bits,
)
from protocol.wire.layout import Layout
from worker.compressors import make_compressor

SENTINEL = -7.0  # what `out` holds before a decode; a refused payload must leave it there


def fresh_out(d: int) -> torch.Tensor:
    return torch.full((d,), SENTINEL)


def random_indices(d: int, k: int, seed: int) -> torch.Tensor:
    return torch.randperm(d, generator=torch.Generator().manual_seed(seed))[:k].sort().values


# -- round trips -----------------------------------------------------------------------------------
@pytest.mark.parametrize("values", list(VALUE_DTYPES))
def test_dense_round_trip(values):
    x = torch.randn(1000) * 100
    p = encode_dense(x, values)
    assert p.values.dtype == VALUE_DTYPES[values] and p.nbytes == 1000 * p.values.element_size()
    got = decode_into(p, 1000, fresh_out(1000))
    assert torch.equal(got, x.to(VALUE_DTYPES[values]).float())
    if values == "float32":
        assert p.values is x and got is x  # no copy either way


@pytest.mark.parametrize("values", list(VALUE_DTYPES))
@pytest.mark.parametrize("coding", INDEX_CODINGS + ("auto",))
@pytest.mark.parametrize("d,k", [(1, 1), (100, 0), (100, 37), (70_000, 70), (300_000, 3), (4096, 4096)])
def test_sparse_round_trip(coding, values, d, k):
    idx = random_indices(d, k, seed=d + k)
    vals = torch.randn(k) * 10
    p = encode_sparse(idx, vals, d, values, coding)
    got_idx, got_vals = decode_sparse(p, d)
    assert torch.equal(got_idx, idx)
    assert torch.equal(got_vals, vals.to(VALUE_DTYPES[values]).float())
    dense = decode_into(p, d, fresh_out(d))
    want = torch.zeros(d)
    want[idx] = vals.to(VALUE_DTYPES[values]).float()
    assert torch.equal(dense, want)


def test_delta16_codes_gaps_up_to_65535_and_falls_back_to_int32():
    d = 300_000
    for idx in ([0, 65535, 65536 + 40000], [65535, 65536], [3, 40000, 105535]):  # gaps 65535 and > 32767
        p = encode_sparse(torch.tensor(idx), torch.ones(len(idx)), d, index_coding="delta16")
        assert p.meta["index_coding"] == "delta16" and p.indices.dtype == torch.int16
        assert decode_sparse(p, d)[0].tolist() == idx
    for idx in ([0, 65536], [65536], [5, 10, 200_000]):  # a gap (or the first index) of 65536 or more
        p = encode_sparse(torch.tensor(idx), torch.ones(len(idx)), d, index_coding="delta16")
        assert p.meta["index_coding"] == "int32"
        assert decode_sparse(p, d)[0].tolist() == idx


@pytest.mark.parametrize(
    "d,k,seed",
    [(1000, 10, 0), (1000, 500, 1), (1_000_000, 3, 2), (100_000, 100, 3), (64, 1, 4), (200_000, 2, 5), (10, 0, 6)],
)
def test_auto_picks_the_smallest_valid_coding(d, k, seed):
    idx, vals = random_indices(d, k, seed), torch.ones(k)
    sizes = {}
    for coding in INDEX_CODINGS:
        p = encode_sparse(idx, vals, d, index_coding=coding)
        if p.meta["index_coding"] == coding:  # delta16 may not fit
            sizes[coding] = p.indices.numel() * p.indices.element_size()
    auto = encode_sparse(idx, vals, d, index_coding="auto")
    assert auto.indices.numel() * auto.indices.element_size() == min(sizes.values())
    assert sizes[auto.meta["index_coding"]] == min(sizes.values())
    assert torch.equal(decode_sparse(auto, d)[0], idx)


def test_auto_choices_on_known_cases():
    pick = lambda idx, d: encode_sparse(torch.tensor(idx), torch.ones(len(idx)), d).meta["index_coding"]
    assert pick([0, 100_000, 200_000], 1_000_000) == "int32"  # gaps too wide for delta16, bitmap 125 kB
    assert pick(list(range(0, 1000, 100)), 1000) == "delta16"  # 20 bytes against 40 and 125
    assert pick(list(range(0, 1000, 2)), 1000) == "bitmap"  # 125 bytes against 1000 and 2000


# -- index width against the vector's size (no 2^31-float allocation: index paths only) ----------------------------
BIG = (1 << 33) + 10  # a declared size beyond int32's reach; nothing of this size is allocated


def test_indices_beyond_int32_travel_as_int64_and_decode_exactly():
    idx = torch.tensor([5, (1 << 32) + 5, BIG - 1])  # int32 would wrap the second to 5
    p = encode_sparse(idx, torch.tensor([1.0, 2.0, 3.0]), BIG)
    assert p.meta["index_coding"] == "int64" and p.indices.dtype == torch.int64
    got_idx, got_vals = decode_sparse(p, BIG)
    assert got_idx.tolist() == idx.tolist() and got_vals.tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("numel", [(1 << 31) - 1, 1 << 31, (1 << 31) + 1, 1 << 40])
def test_auto_never_picks_a_coding_that_cannot_address_the_vector(numel):
    idx = torch.tensor([0, 70_000, numel - 1])  # gaps too wide for delta16
    p = encode_sparse(idx, torch.ones(3), numel)
    assert p.meta["index_coding"] == ("int32" if numel <= 1 << 31 else "int64")
    assert decode_sparse(p, numel)[0].tolist() == idx.tolist()


def test_explicit_int32_is_refused_for_a_vector_beyond_2_31_coordinates():
    with pytest.raises(ValueError, match="int32 cannot address a vector of 2147483649 coordinates"):
        encode_sparse(torch.tensor([1, 2]), torch.ones(2), (1 << 31) + 1, index_coding="int32")
    p = encode_sparse(torch.tensor([1, (1 << 31) - 1]), torch.ones(2), 1 << 31, index_coding="int32")
    assert p.indices.dtype == torch.int32  # 2^31 coordinates: every index fits


def test_int32_payload_for_a_vector_beyond_2_31_coordinates_is_refused_on_decode():
    p = Payload(
        "sparse", BIG, torch.ones(1), indices=torch.tensor([5], dtype=torch.int32), meta={"index_coding": "int32"}
    )
    with pytest.raises(ProtocolError) as err:
        decode_sparse(p, BIG)
    assert err.value.code == "bad_encoding" and "cannot address" in err.value.message


def test_delta16_falls_back_to_a_coding_that_addresses_the_vector():
    wide = encode_sparse(torch.tensor([0, 1 << 32]), torch.ones(2), BIG, index_coding="delta16")
    assert wide.meta["index_coding"] == "int64" and decode_sparse(wide, BIG)[0].tolist() == [0, 1 << 32]
    small = encode_sparse(torch.tensor([0, 1 << 20]), torch.ones(2), 1 << 21, index_coding="delta16")
    assert small.meta["index_coding"] == "int32"  # small models keep their wire format


def test_int64_payloads_are_validated_like_int32_ones():
    def p(idx, numel=10):
        return Payload("sparse", numel, torch.ones(len(idx)), indices=torch.tensor(idx), meta={"index_coding": "int64"})

    assert decode_sparse(p([1, 9]), 10)[0].tolist() == [1, 9]
    for bad, code in (([3, 10], "bad_index"), ([4, 4], "bad_index"), ([-1, 2], "bad_index")):
        with pytest.raises(ProtocolError) as err:
            decode_into(p(bad), 10, fresh_out(10))
        assert err.value.code == code
    wrong_dtype = Payload("sparse", 10, torch.ones(1), indices=torch.tensor([1], dtype=torch.int32))
    wrong_dtype.meta = {"index_coding": "int64"}
    with pytest.raises(ProtocolError, match="expected torch.int64"):
        decode_sparse(wrong_dtype, 10)


def test_encoder_refuses_indices_outside_the_vector():
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
        encode_sparse(torch.tensor([3, 10]), torch.ones(2), 10)


def test_natural_round_trip_is_exact():
    x = torch.tensor([0.0, -0.0, 1.0, -2.0, 0.125, 2.0**-126, -(2.0**127), 2.0**100, -(2.0**-100)])
    p = encode_natural(x)
    assert p.values.dtype == torch.uint8 and p.nbytes == x.numel() + (x.numel() + 7) // 8
    got = decode_into(p, x.numel(), fresh_out(x.numel()))
    assert torch.equal(got.view(torch.int32), x.view(torch.int32))  # bit for bit, the sign of -0.0 too
    with pytest.raises(ValueError):
        encode_natural(torch.tensor([1.5]))
    with pytest.raises(ValueError):
        encode_natural(torch.tensor([1e-40]))  # subnormal: not an exact power of two in the exponent byte


def test_qsgd_and_sign_round_trips():
    levels = torch.tensor([0, 3, -3, 1, -2], dtype=torch.int8)
    got = decode_into(encode_qsgd(levels, 6.0, 3), 5, fresh_out(5))
    assert got.tolist() == [0.0, 6.0, -6.0, 2.0, -4.0]
    negative = torch.tensor([True, False, False, True, True, False, True, False, True, True, False])
    p = encode_sign(negative, 0.5)
    assert p.nbytes == 2
    assert decode_into(p, 11, fresh_out(11)).tolist() == [-0.5 if n else 0.5 for n in negative.tolist()]


@pytest.mark.parametrize("d", [1, 7, 8, 9, 1001])
def test_bits_round_trip(d):
    mask = torch.rand(d, generator=torch.Generator().manual_seed(d)) < 0.5
    packed = pack_bits(mask)
    assert packed.numel() == (d + 7) // 8 and torch.equal(unpack_bits(packed, d), mask)


# -- malformed payloads --------------------------------------------------------------------------
def sparse(idx, vals=None, coding="int32", d=10, **changes) -> Payload:
    """A sparse payload built by hand (encode_sparse would refuse to build most of these)."""
    vals = torch.ones(len(idx)) if vals is None else vals
    dtype = {"int32": torch.int32, "delta16": torch.int16}.get(coding, torch.uint8)
    p = Payload("sparse", d, vals, indices=torch.tensor(idx, dtype=dtype), meta={"index_coding": coding})
    for key, value in changes.items():
        setattr(p, key, value)
    return p


NAT_OK = encode_natural(torch.tensor([1.0, -2.0, 0.0]))
BAD = {
    "out_of_range": (sparse([2, 10]), "bad_index"),
    "negative_index": (sparse([-1, 3]), "bad_index"),
    "unsorted": (sparse([5, 3]), "bad_index"),
    "duplicate": (sparse([3, 3]), "bad_index"),
    "delta16_zero_gap": (sparse([3, 0], coding="delta16"), "bad_index"),
    "delta16_past_end": (sparse([3, 7], coding="delta16"), "bad_index"),
    "int64_indices": (sparse([1, 2], indices=torch.tensor([1, 2])), "bad_shape"),
    "index_count": (sparse([1, 2], vals=torch.ones(3)), "bad_shape"),
    "no_indices": (sparse([1], indices=None), "bad_encoding"),
    "float64_values": (sparse([1], vals=torch.ones(1, dtype=torch.float64)), "bad_encoding"),
    "2d_values": (sparse([1], vals=torch.ones(1, 1)), "bad_encoding"),
    "no_values": (sparse([1], values=None), "bad_encoding"),
    "more_values_than_numel": (sparse(list(range(11)), d=10), "bad_shape"),
    "unknown_coding": (sparse([1], meta={"index_coding": "zip"}), "bad_encoding"),
    "bitmap_count": (sparse([0b10100000, 0], vals=torch.ones(3), coding="bitmap"), "bad_shape"),  # 2 marks
    "bitmap_length": (sparse([0b10100000], coding="bitmap", values=torch.ones(2)), "bad_shape"),
    "sparse_nan": (sparse([1, 4], vals=torch.tensor([1.0, float("nan")])), "nonfinite"),
    "sparse_inf_bf16": (sparse([1, 4], vals=torch.tensor([1.0, float("inf")]).bfloat16()), "nonfinite"),
    "dense_nan": (Payload("dense", 10, torch.full((10,), float("nan"))), "nonfinite"),
    "dense_inf_bf16": (Payload("dense", 10, torch.full((10,), float("inf")).bfloat16()), "nonfinite"),
    "dense_nan_f16": (Payload("dense", 10, torch.tensor([1.0] * 9 + [float("nan")]).half()), "nonfinite"),
    "dense_length": (Payload("dense", 10, torch.ones(9)), "bad_shape"),
    "dense_int": (Payload("dense", 10, torch.ones(10, dtype=torch.int32)), "bad_encoding"),
    "numel_mismatch": (Payload("dense", 11, torch.ones(11)), "bad_shape"),
    "unknown_encoding": (Payload("gzip", 10, torch.ones(10)), "bad_encoding"),
    "natural_255": (
        Payload("natural", 10, torch.full((10,), 255, dtype=torch.uint8), signs=torch.zeros(2, dtype=torch.uint8)),
        "nonfinite",
    ),
    "natural_dtype": (
        Payload("natural", 10, torch.zeros(10, dtype=torch.int8), signs=torch.zeros(2, dtype=torch.uint8)),
        "bad_shape",
    ),
    "natural_signs": (Payload("natural", 10, torch.zeros(10, dtype=torch.uint8), signs=None), "bad_shape"),
    "qsgd_level_above_s": (encode_qsgd(torch.tensor([0, 4] + [0] * 8), 1.0, 3), "bad_encoding"),
    "qsgd_level_below_minus_s": (encode_qsgd(torch.tensor([-4] + [0] * 9), 1.0, 3), "bad_encoding"),
    "qsgd_no_norm": (Payload("qsgd", 10, torch.zeros(10, dtype=torch.int8), meta={"levels": 3}), "bad_encoding"),
    "qsgd_nan_norm": (encode_qsgd(torch.zeros(10), float("nan"), 3), "bad_encoding"),
    "qsgd_inf_norm": (encode_qsgd(torch.zeros(10), float("inf"), 3), "bad_encoding"),
    "qsgd_str_norm": (
        Payload("qsgd", 10, torch.zeros(10, dtype=torch.int8), meta={"levels": 3, "norm": "1"}),
        "bad_encoding",
    ),
    "qsgd_no_levels": (Payload("qsgd", 10, torch.zeros(10, dtype=torch.int8), meta={"norm": 1.0}), "bad_encoding"),
    "qsgd_levels_0": (encode_qsgd(torch.zeros(10), 1.0, 0), "bad_encoding"),
    "qsgd_levels_128": (encode_qsgd(torch.zeros(10), 1.0, 128), "bad_encoding"),
    "qsgd_levels_bool": (encode_qsgd(torch.zeros(10), 1.0, True), "bad_encoding"),
    "qsgd_shape": (Payload("qsgd", 10, torch.zeros(9, dtype=torch.int8), meta={"norm": 1.0, "levels": 3}), "bad_shape"),
    "sign_no_scale": (Payload("sign", 10, signs=torch.zeros(2, dtype=torch.uint8)), "bad_encoding"),
    "sign_nan_scale": (encode_sign(torch.zeros(10, dtype=torch.bool), float("nan")), "bad_encoding"),
    "sign_bits_length": (
        Payload("sign", 10, signs=torch.zeros(1, dtype=torch.uint8), meta={"scale": 1.0}),
        "bad_shape",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_payloads_are_refused_and_nothing_is_written(case):
    payload, code = BAD[case]
    out = fresh_out(10)
    with pytest.raises(ProtocolError) as err:
        decode_into(payload, 10, out)
    assert err.value.code == code
    assert bool((out == SENTINEL).all()), "decode_into wrote into `out` before refusing"


def test_sparse_decoder_refuses_other_encodings():
    with pytest.raises(ProtocolError) as err:
        decode_sparse(encode_dense(torch.ones(10)), 10)
    assert err.value.code == "bad_encoding"


# -- sizes -------------------------------------------------------------------------------------------
def test_topk_payload_is_k_values_plus_k_indices():
    d = 1_000_000
    layout = Layout.from_shapes([("w", (d,))])
    x = torch.randn(d, generator=torch.Generator().manual_seed(7))
    dense = encode_dense(x).nbytes
    sizes = {}
    for values in ("float32", "bfloat16"):
        cfg = CompressionConfig(method="ef21", compressor="topk", ratio=0.01, values=values, indices="int32")
        sizes[values] = make_compressor(cfg, layout, 0).compress(x).nbytes
    k = 10_000
    assert sizes["float32"] == 8 * k and dense / sizes["float32"] >= 50
    assert sizes["bfloat16"] == 6 * k < sizes["float32"]
    cfg = CompressionConfig(method="ef21", compressor="topk", ratio=0.01, values="bfloat16")
    assert make_compressor(cfg, layout, 0).compress(x).nbytes == 4 * k  # auto: delta16 gaps (~100 apart)


@pytest.mark.parametrize("value_dtype", ["float16", "bfloat16"])
def test_narrow_values_saturate_instead_of_overflowing(value_dtype):
    """A finite value beyond float16's range is sent as +-max (a finite push), a non-finite one stays non-finite."""
    limit = torch.finfo(VALUE_DTYPES[value_dtype]).max
    x = torch.tensor([1e6, -1e6, 0.5, 3.0e38, float("inf")])
    dense = encode_dense(x, value_dtype).values.float()
    sparse_vals = encode_sparse(torch.arange(5), x, 10, value_dtype).values.float()
    for got in (dense, sparse_vals):
        expect_big = 1e6 if value_dtype == "bfloat16" else limit
        assert got[0] == pytest.approx(expect_big, rel=1e-2) and got[1] == pytest.approx(-expect_big, rel=1e-2)
        assert got[2] == 0.5 and torch.isfinite(got[3]) and torch.isinf(got[4])
