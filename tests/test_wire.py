"""Codec and channel: round trips for every message and dtype; malformed input is refused cleanly."""

import random

import msgpack
import pytest
import torch

from protocol.errors import ProtocolError
from protocol.wire import codec
from protocol.wire.buffers import SendPool
from protocol.wire.channel import Channel, ReceiveError
from protocol.wire.messages import MESSAGE_TYPES, Heartbeat, Hello, Pull, Push, Reject, Reply, Stop, Welcome


@pytest.fixture
def pair():
    router = Channel("router", chunk_bytes=1 << 12, max_message_bytes=1 << 24, send_timeout_s=5)
    endpoint = router.bind("tcp://127.0.0.1:0")
    dealer = Channel("dealer", chunk_bytes=1 << 12, max_message_bytes=1 << 24, send_timeout_s=5)
    dealer.connect(endpoint)
    yield router, dealer
    dealer.close()
    router.close()


def _examples():
    t = torch.arange(10, dtype=torch.float32)
    return [
        Hello(
            rank=1,
            pid=2,
            host="h",
            device="cpu",
            run_id="r",
            uplink="grad",
            signature=[["w", [2, 5], "float32"]],
            buffer_signature=[["bn.running_mean", [4], "float32"]],
        ),
        Welcome(version=3, next_seq=4, layout=[["w", [2, 5], 0]], settings={"workers": 2}, params=t),
        Push(
            rank=0,
            seq=5,
            base_version=7,
            kind="delta",
            encoding="sparse",
            numel=10,
            loss=0.5,
            samples=32,
            meta={"k": 2},
            values=t[:2].clone(),
            indices=torch.tensor([1, 7], dtype=torch.int32),
        ),
        Reply(applied=True, reason="ok", staleness=2, version=9, lr=1e-3, params=t),
        Pull(rank=3),
        Reject(code="bad_seq", message="x", rank=1, seq=2, expected_seq=3),
        Heartbeat(rank=-1, version=4),
        Stop(reason="max_updates", version=10),
    ]


def test_every_message_type_round_trips(pair):
    router, dealer = pair
    examples = _examples()
    assert {type(m) for m in examples} == set(MESSAGE_TYPES.values())
    for msg in examples:
        dealer.send(msg)
        identity, got = (r := router.recv(5)).identity, r.msg
        assert identity is not None
        assert type(got) is type(msg)
        for name in msg.__dataclass_fields__:
            a, b = getattr(msg, name), getattr(got, name)
            if isinstance(a, torch.Tensor):
                assert a.dtype == b.dtype and torch.equal(a, b), name
            else:
                assert a == b, name
        router.send(msg, to=identity)  # and back the other way
        back = dealer.recv(5).msg
        assert type(back) is type(msg)


@pytest.mark.parametrize("dtype", list(codec.DTYPES.values()))
@pytest.mark.parametrize("numel", [0, 1, 1023, 5000])  # 5000 floats span several 4 KiB frames
def test_every_dtype_round_trips_across_frames(pair, dtype, numel):
    router, dealer = pair
    values = (torch.randn(numel) * 100).to(dtype)
    dealer.send(
        Push(
            rank=0,
            seq=0,
            base_version=0,
            kind="grad",
            encoding="dense",
            numel=numel,
            loss=0.0,
            samples=1,
            values=values,
        )
    )
    got = router.recv(5).msg
    assert got.values.dtype == dtype and torch.equal(got.values, values)


def test_header_starts_with_protocol_name_and_version():
    header = msgpack.unpackb(codec.encode(Pull(rank=1))[0])
    assert list(header)[:2] == ["proto", "ver"]
    assert header["proto"] == codec.PROTOCOL and header["ver"] == codec.VERSION


def test_receive_into_preallocated_buffer(pair):
    router, dealer = pair
    dest = torch.zeros(100)
    ptr = dest.data_ptr()
    router_msg = Reply(applied=True, reason="ok", staleness=0, version=1, lr=0.1, params=torch.arange(100.0))
    dealer.send(Pull(rank=0))
    identity = router.recv(5).identity
    router.send(router_msg, to=identity)
    got = dealer.recv(5, alloc=lambda cls, spec: dest).msg
    assert got.params.data_ptr() == ptr and torch.equal(dest, torch.arange(100.0))


def _bad_cases():
    good = [
        bytes(f)
        for f in codec.encode(
            Push(
                rank=0,
                seq=0,
                base_version=0,
                kind="grad",
                encoding="dense",
                numel=8,
                loss=0.0,
                samples=1,
                values=torch.ones(8),
            )
        )
    ]
    header = msgpack.unpackb(good[0])

    def with_header(**changes):
        h = {**header, **changes}
        return [msgpack.packb(h), *good[1:]]

    def with_fields(**changes):
        return with_header(fields={**header["fields"], **changes})

    return {
        "garbage header": ([b"\xc1\xff\x00garbage"], "bad_header"),
        "not a map": ([msgpack.packb([1, 2])], "bad_header"),
        "wrong protocol": (with_header(proto="other"), "bad_header"),
        "wrong version": (with_header(ver=99), "bad_version"),
        "unknown type": (with_header(type="nope"), "bad_type"),
        "missing field": (with_header(fields={k: v for k, v in header["fields"].items() if k != "seq"}), "bad_field"),
        "unknown field": (with_fields(extra=1), "bad_field"),
        "wrong field type": (with_fields(seq="zero"), "bad_field"),
        "bool for int": (with_fields(rank=True), "bad_field"),
        "truncated frames": (good[:1], "truncated"),
        "short frame": ([good[0], good[1][:-4]], "truncated"),
        "long frame": ([good[0], good[1] + b"\0\0\0\0"], "bad_tensor"),
        "extra frame": ([*good, b"more"], "extra_frames"),
        "unknown dtype": (with_header(tensors=[["values", "complex64", [8], 1]]), "bad_tensor"),
        "unknown tensor": (with_header(tensors=[["params", "float32", [8], 1]]), "bad_tensor"),
        "negative shape": (with_header(tensors=[["values", "float32", [-8], 1]]), "bad_tensor"),
        "oversized": (with_header(tensors=[["values", "float32", [1 << 30], 1]]), "oversized"),
        "zero frames": (with_header(tensors=[["values", "float32", [8], 0]]), "bad_tensor"),
        "huge header": ([b"\x00" * (codec.MAX_HEADER_BYTES + 10)], "oversized"),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_malformed_messages_are_refused_and_the_channel_stays_usable(pair, case):
    router, dealer = pair
    frames, code = _bad_cases()[case]
    dealer.sock.send_multipart(frames)
    with pytest.raises(ReceiveError) as info:
        router.recv(5)
    assert info.value.code == code, info.value
    assert info.value.identity is not None  # so the server can answer with a Reject
    dealer.send(Pull(rank=7))  # the next message decodes normally: nothing was left half-read
    msg = router.recv(5).msg
    assert msg == Pull(rank=7)


def test_fuzzed_frames_never_crash_the_receiver(pair):
    router, dealer = pair
    rng = random.Random(0)
    good = [
        bytes(f)
        for f in codec.encode(
            Push(
                rank=0,
                seq=0,
                base_version=0,
                kind="grad",
                encoding="dense",
                numel=16,
                loss=0.0,
                samples=1,
                values=torch.ones(16),
            )
        )
    ]
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(300):
        frames = [bytearray(f) for f in good]
        for _ in range(rng.randint(1, 4)):
            f = rng.randrange(len(frames))
            if frames[f] and rng.random() < 0.7:
                frames[f][rng.randrange(len(frames[f]))] = rng.randrange(256)
            else:
                frames[f] = frames[f][: rng.randrange(len(frames[f]) + 1)]
        dealer.sock.send_multipart([bytes(f) for f in frames])
        try:
            router.recv(5)
            outcomes["ok"] += 1
        except ReceiveError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 50  # most mutations break something, and each was refused cleanly


def test_allocator_may_refuse_before_receiving(pair):
    router, dealer = pair
    dealer.send(
        Push(
            rank=0,
            seq=0,
            base_version=0,
            kind="grad",
            encoding="dense",
            numel=8,
            loss=0.0,
            samples=1,
            values=torch.ones(8),
        )
    )

    def refuse(cls, spec):
        raise ProtocolError("oversized", "no room")

    with pytest.raises(ReceiveError, match="no room"):
        router.recv(5, alloc=refuse)


def test_bind_reports_the_port_it_picked():
    ch = Channel("router")
    try:
        endpoint = ch.bind("tcp://127.0.0.1:0")
        assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith(":0")
    finally:
        ch.close()


def test_ipc_endpoints_work(tmp_path):
    router = Channel("router")
    endpoint = router.bind(f"ipc://{tmp_path}/s.ipc")
    dealer = Channel("dealer")
    dealer.connect(endpoint)
    try:
        dealer.send(Pull(rank=1))
        msg = router.recv(5).msg
        assert msg == Pull(rank=1)
    finally:
        dealer.close()
        router.close()


def test_recv_times_out():
    ch = Channel("dealer")
    ch.connect("tcp://127.0.0.1:9")  # nothing answers
    try:
        with pytest.raises(TimeoutError):
            ch.recv(0.05)
    finally:
        ch.close()


def test_send_pool_reuses_buffers_once_zeromq_released_them(pair):
    router, dealer = pair
    src = torch.randn(50_000)
    pool = SendPool(src.numel())
    dealer.send(Pull(rank=0))
    identity = router.recv(5).identity
    for _ in range(5):
        buf = pool.snapshot(src)
        tracker = router.send(
            Reply(applied=True, reason="ok", staleness=0, version=0, lr=0.0, params=buf), to=identity, track=True
        ).tracker
        pool.sent(buf, tracker)
        got = dealer.recv(5).msg
        assert torch.equal(got.params, src)
        tracker.wait(timeout=5)  # released by ZeroMQ's I/O thread, possibly just after the peer got the bytes
    assert pool.allocated == 1


class _Tracker:  # stands in for zmq.MessageTracker: the test decides when the send completes
    done = False

    def wait(self, timeout=None):
        self.done = True


def test_send_pool_never_hands_out_a_buffer_still_in_flight_nor_waits_for_one():
    pool = SendPool(8, max_buffers=2)
    first, tracker = pool.snapshot(torch.ones(8)), _Tracker()
    pool.sent(first, tracker)
    second = pool.snapshot(torch.zeros(8))
    assert second.data_ptr() != first.data_ptr() and torch.equal(first, torch.ones(8))  # in flight: untouched
    pool.sent(second, _Tracker())
    # at max_buffers with every buffer in flight: no buffer, at once (a peer that never reads must not stall
    # the server), and nothing in flight was touched
    assert pool.snapshot(torch.full((8,), 2.0)) is None and pool.allocated == 2
    assert torch.equal(first, torch.ones(8)) and torch.equal(second, torch.zeros(8))
    tracker.done = True
    third = pool.snapshot(torch.full((8,), 2.0))  # the completed send is reclaimed and reused
    assert third.data_ptr() == first.data_ptr() and pool.allocated == 2
    pool.unused(third)  # a snapshot that was not sent is free again at once
    assert pool.snapshot(torch.ones(8)).data_ptr() == first.data_ptr()
