"""One message or one slow peer must never take the server down or change what it serves.

Each test sends the real server (in a thread) an input that used to crash it, stall it or train wrong
without a word, and checks that it now refuses or survives it, with parameters and optimizer state
unchanged where the input was refused.
"""

import time

import msgpack
import pytest
import torch
import zmq

from protocol.wire import codec
from protocol.wire.encoding import encode_qsgd, encode_sign
from protocol.wire.layout import Layout
from protocol.wire.messages import Hello, Pull, Push, Reply, Welcome
from tests.helpers import FakeWorker, join_all, make_config, push_frames, running_server

LAYOUT = Layout.from_shapes([("w", (4, 5)), ("b", (5,))])
N = LAYOUT.total


def _cfg(workers=1, **kw):
    run = {"max_updates": 100000, "eval_every_s": 1000.0, **kw.pop("run", {})}
    server = {"stop_grace_s": 0.5, **kw.pop("server", {})}
    optimizer = kw.pop("optimizer", {"name": "amsgrad", "lr": 0.01})
    return make_config(workers=workers, run=run, optimizer=optimizer, server=server, **kw)


def _state(server):
    return server.params.clone(), {k: v.clone() for k, v in server.model.opt.state().items()}, server.version


def _unchanged(server, before) -> bool:
    params, state, version = before
    now = server.model.opt.state()
    same_state = set(now) == set(state) and all(torch.equal(now[k], state[k]) for k in state)
    return torch.equal(server.params, params) and server.version == version and same_state


def _with_spec(frames: list, name: str, dtype: str, shape: list, nframes: int) -> list:
    header = msgpack.unpackb(frames[0])
    header["tensors"] = [[name, dtype, shape, nframes]]
    return [msgpack.packb(header), *([b""] * nframes)]


OVERFLOWING = [2**39 - 1, 2**39 - 1, 0]  # zero elements, but its sizes overflow int64 in a view


def test_a_zero_element_tensor_with_overflowing_dimensions_is_refused_in_every_message_type():
    with running_server(_cfg(), model=(LAYOUT, torch.zeros(N))) as (server, endpoint, _):
        w = FakeWorker(endpoint, 0, LAYOUT)
        w.hello()
        assert w.push(torch.randn(N)).applied
        before = _state(server)
        stranger = FakeWorker(endpoint, 0, LAYOUT)
        kinds = {
            Push: push_frames(0, 1, 1, torch.ones(N)),
            Hello: [bytes(f) for f in codec.encode(Hello(0, 0, "h", "cpu", "r", "grad", LAYOUT.signature()))],
            Reply: [bytes(f) for f in codec.encode(Reply(True, "ok", 0, 0, 0.0))],
            Welcome: [bytes(f) for f in codec.encode(Welcome(0, 0))],
        }
        names = {Push: "values", Hello: "values", Reply: "params", Welcome: "params"}
        for cls, frames in kinds.items():
            for sender in (w, stranger):
                reply = sender.send_frames(_with_spec(frames, names[cls], "float32", OVERFLOWING, 1))
                assert reply.TYPE == "reject", (cls, reply)
        assert _unchanged(server, before)
        assert w.push(torch.ones(N)).applied  # and it goes on serving


@pytest.mark.parametrize("scale", [1e300, -3.5e38, 3.5e38])
def test_header_floats_beyond_float32_are_refused_not_a_crash(scale):
    with running_server(_cfg(), model=(LAYOUT, torch.zeros(N))) as (server, endpoint, _):
        w = FakeWorker(endpoint, 0, LAYOUT)
        w.hello()
        before = _state(server)
        sign = encode_sign(torch.rand(N) < 0.5, 1.0)
        qsgd = encode_qsgd(torch.ones(N, dtype=torch.int8), 1.0, 4)
        for p, key in ((sign, "scale"), (qsgd, "norm")):
            p.meta[key] = scale
            push = Push(0, w.seq, w.version, "grad", p.encoding, N, 0.0, 1, p.meta, p.values, p.indices, p.signs)
            reply = w.request(push)
            assert reply.TYPE == "reject" and reply.code == "bad_encoding", reply
        assert _unchanged(server, before)


def _send_push(w: FakeWorker, seq: int) -> None:
    w.chan.send(Push(w.rank, seq, w.version, "grad", "dense", N, 0.0, 1, values=torch.ones(N)))


def _no_reply_within(w: FakeWorker, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and w.chan.poll(left):
        if w.chan.recv(1).msg.TYPE != "heartbeat":
            return False
    return True


@pytest.mark.parametrize("staleness", [{"ssp": 0}, {"apply_every": 2, "barrier": True}])
def test_a_rank_that_rejoins_or_pushes_again_while_its_reply_is_held_does_not_break_the_loop(staleness):
    with running_server(_cfg(2, staleness=staleness), model=(LAYOUT, torch.zeros(N))) as (server, endpoint, _):
        w0, w1 = FakeWorker(endpoint, 0, LAYOUT), FakeWorker(endpoint, 1, LAYOUT)
        join_all([w0, w1])
        _send_push(w0, 0)  # ssp 0: w0 runs ahead of w1; the barrier: half a group. Either way: held
        assert _no_reply_within(w0, 0.5)
        again = w0.push(torch.ones(N), seq=1, advance=False)  # again, before the held reply: refused
        assert again.TYPE == "reject" and again.code == "bad_seq"
        w0_new = FakeWorker(endpoint, 0, LAYOUT)  # the rank rejoins from a new connection while held
        w0.close()
        time.sleep(0.3)  # ZeroMQ notices the closed connection
        assert w0_new.hello().TYPE == "welcome" and w0_new.seq == 1
        assert w1.push(torch.ones(N)).TYPE == "reply"  # the held entry went with the old connection: no KeyError
        _send_push(w0_new, 1)
        assert w1.push(torch.ones(N)).TYPE == "reply"
        assert w0_new.recv().TYPE == "reply"
        assert server.stop_reason is None


def test_a_peer_that_never_reads_cannot_stall_the_others():
    mid = Layout.from_shapes([("w", (1 << 18,))])  # 1 MiB: replies are copied (below COPY_BELOW_BYTES)
    cfg = _cfg(2, server={"send_timeout_s": 30.0})
    with running_server(cfg, model=(mid, torch.zeros(mid.total))) as (server, endpoint, _):
        good, bad = FakeWorker(endpoint, 0, mid), FakeWorker(endpoint, 1, mid)
        join_all([good, bad])
        bad.chan.sock.setsockopt(zmq.RCVHWM, 1)
        for _ in range(200):  # pulls it never reads: its queues fill, later replies are dropped at once
            bad.chan.send(Pull(rank=1))
        t0 = time.monotonic()
        for _ in range(50):
            assert good.push(torch.ones(mid.total)).TYPE == "reply"
        assert time.monotonic() - t0 < 10  # not 30 s per reply to the full peer
        bad.close()
        t0 = time.monotonic()
        assert good.push(torch.ones(mid.total)).TYPE == "reply"
        assert time.monotonic() - t0 < 5  # and nothing lingers once it has gone
    assert server.out.dropped > 0


def test_unread_replies_of_a_large_model_never_exhaust_the_server():
    big = Layout.from_shapes([("w", (1 << 21,))])  # 8 MiB: replies go out as pooled zero-copy snapshots
    with running_server(_cfg(2), model=(big, torch.zeros(big.total))) as (server, endpoint, _):
        good, bad = FakeWorker(endpoint, 0, big), FakeWorker(endpoint, 1, big)
        join_all([good, bad])
        bad.chan.sock.setsockopt(zmq.RCVHWM, 1)
        for _ in range(80):
            bad.chan.send(Pull(rank=1))
        time.sleep(1.0)
        for _ in range(5):
            assert good.push(torch.ones(big.total)).TYPE == "reply"
        assert server.model.pool.allocated <= server.model.pool.max_buffers
        bad.close()
        good.close()
        assert server.stop_reason is None


def test_a_push_whose_squares_overflow_float32_is_refused_and_changes_nothing(tmp_path):
    with running_server(_cfg(), run_dir=tmp_path, model=(LAYOUT, torch.zeros(N))) as (server, endpoint, _):
        w = FakeWorker(endpoint, 0, LAYOUT)
        w.hello()
        assert w.push(torch.randn(N)).applied
        before = _state(server)
        for big in (1e30, 1e20, -3e19):
            poison = torch.zeros(N)
            poison[3] = big
            reply = w.push(poison, advance=False)
            assert reply.TYPE == "reject" and reply.code == "overflow", reply
        assert _unchanged(server, before)
        near = torch.zeros(N)
        near[3] = 1e19  # its square, 1e38, still fits: applied, and v stays finite
        assert w.push(near).applied
        assert all(bool(torch.isfinite(t).all()) for t in server.model.opt.state().values())


def test_max_grad_norm_scales_long_steps_down_and_counts_them():
    cfg = _cfg(optimizer={"name": "sgd", "lr": 1.0}, server={"max_grad_norm": 1.0})
    with running_server(cfg, model=(LAYOUT, torch.zeros(N))) as (server, endpoint, result):
        w = FakeWorker(endpoint, 0, LAYOUT)
        w.hello()
        g = torch.zeros(N)
        g[:2] = torch.tensor([3.0, 4.0])  # norm 5: scaled to 1
        reply = w.push(g)
        torch.testing.assert_close(reply.params[:2], torch.tensor([-0.6, -0.8]))
        short = torch.zeros(N)
        short[0] = 0.5
        w.push(short)  # norm 0.5: unchanged
        torch.testing.assert_close(w.params[0], torch.tensor(-1.1))
        server.signal_stop("done")
    assert result["steps_clipped"] == 1


@pytest.mark.parametrize("over_bound", ["drop", "downweight"])
def test_a_push_beyond_max_staleness_0_changes_nothing(over_bound):
    cfg = _cfg(2, staleness={"max_staleness": 0, "over_bound": over_bound})
    with running_server(cfg, model=(LAYOUT, torch.zeros(N))) as (server, endpoint, _):
        w0, w1 = FakeWorker(endpoint, 0, LAYOUT), FakeWorker(endpoint, 1, LAYOUT)
        join_all([w0, w1])
        assert w0.push(torch.ones(N)).applied
        before = _state(server)
        stale = w1.push(torch.ones(N))  # staleness 1 > 0: weight 0 with downweight, so a drop either way
        assert not stale.applied and stale.reason == "stale"
        assert _unchanged(server, before)


def test_the_running_mean_of_staleness_holds_applied_pushes_only():
    from protocol.config.schema import StalenessConfig
    from ps.policy import StalenessPolicy

    policy = StalenessPolicy(1.0, StalenessConfig(lr_rule="inverse", lr_from="mean", max_staleness=2))
    assert policy.decide(2).lr == 0.5
    assert not policy.decide(100).accept  # dropped: not in the mean
    assert policy.decide(2).lr == 0.5  # the mean is still 2, not (2 + 100 + 2) / 3


def test_a_second_process_cannot_take_a_live_rank_over_until_the_holder_is_gone():
    with running_server(_cfg(2), model=(LAYOUT, torch.zeros(N))) as (server, endpoint, _):
        w0, w1 = FakeWorker(endpoint, 0, LAYOUT), FakeWorker(endpoint, 1, LAYOUT)
        join_all([w0, w1])
        intruder = FakeWorker(endpoint, 0, LAYOUT)
        refused = intruder.hello()
        assert refused.TYPE == "reject" and refused.code == "rank_in_use" and "pid 0" in refused.message
        assert w0.push(torch.ones(N)).applied  # the holder is untouched
        w0.close()
        time.sleep(0.5)  # ZeroMQ notices the closed connection
        assert intruder.hello().TYPE == "welcome"  # the rank is free again, its seq continues
        assert intruder.seq == 1 and intruder.push(torch.ones(N)).applied
