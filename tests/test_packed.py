"""protocol/packed: a message as one byte buffer (the sync baseline's all-gather) round-trips and is validated."""

import pytest
import torch

from protocol.errors import ProtocolError
from protocol.wire import codec
from protocol.wire.encoding import encode_sparse
from protocol.wire.messages import Push, Stop
from protocol.wire.packed import pack, unpack


def _push(**tensors):
    return Push(
        rank=2,
        seq=5,
        base_version=5,
        kind="delta",
        encoding="sparse",
        numel=1000,
        loss=0.25,
        samples=16,
        meta={"index_coding": "delta16"},
        **tensors,
    )


def test_a_push_round_trips_with_the_size_it_has_on_the_wire():
    p = encode_sparse(torch.tensor([3, 70, 999]), torch.tensor([1.5, -2.0, 0.25]), 1000, "bfloat16", "delta16")
    msg = _push(values=p.values, indices=p.indices)
    buf, header_len = pack(msg)
    frames = codec.encode(msg)
    assert buf.dtype == torch.uint8 and buf.numel() == sum(len(f) for f in frames)
    assert header_len == len(frames[0])
    got = unpack(buf.clone(), header_len)
    assert isinstance(got, Push) and got.meta == msg.meta and got.loss == 0.25 and got.kind == "delta"
    assert got.values.dtype == torch.bfloat16 and torch.equal(got.values, p.values)
    assert got.indices.dtype == torch.int16 and torch.equal(got.indices, p.indices)
    assert got.signs is None


def test_pack_reuses_a_large_enough_buffer_and_messages_without_tensors_work():
    out = torch.zeros(1 << 12, dtype=torch.uint8)
    buf, header_len = pack(_push(values=torch.ones(8)), out)
    assert buf.data_ptr() == out.data_ptr()
    assert torch.equal(unpack(buf, header_len).values, torch.ones(8))
    buf, header_len = pack(Stop(reason="x", version=1))
    assert buf.numel() == header_len and unpack(buf, header_len) == Stop(reason="x", version=1)


@pytest.mark.parametrize("cut", [1, 4, -1])
def test_a_buffer_that_does_not_add_up_is_refused(cut):
    buf, header_len = pack(_push(values=torch.ones(8)))
    bad = buf[:-cut] if cut > 0 else torch.cat([buf, torch.zeros(3, dtype=torch.uint8)])
    with pytest.raises(ProtocolError) as info:
        unpack(bad, header_len)
    assert info.value.code == "truncated"


@pytest.mark.parametrize("header_len", [0, 3, 1 << 20])
def test_a_wrong_header_length_is_refused(header_len):
    buf, _ = pack(_push(values=torch.ones(8)))
    with pytest.raises(ProtocolError) as info:
        unpack(buf, header_len)
    assert info.value.code == "bad_header"
