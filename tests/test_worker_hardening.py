"""A worker must not die of a pause it survived, push garbage it could have seen, or clip values in silence."""

import logging
import threading

import pytest
import torch

from protocol.config.schema import CompressionConfig
from protocol.wire.channel import Channel
from protocol.wire.encoding import encode_dense, encode_sparse
from protocol.wire.layout import Layout
from protocol.wire.messages import Pull, Reply
from tests.helpers import make_config, running_server
from worker.compressors import make_compressor
from worker.loop import MAX_NONFINITE, WorkerError, WorkerLoop


def _cfg(**kw):
    return make_config(
        workers=1,
        task={"model": "logreg", "batch_size": 16},
        optimizer=kw.pop("optimizer", {"name": "sgd", "lr": 0.05}),
        run={"max_updates": kw.pop("updates", 50), "eval_every_s": 1000},
        server={"stop_grace_s": 1, "reply_timeout_s": 2.0},
        **kw,
    )


class JumpingClock:
    """A clock that leaps past any deadline the moment it is read after `jump()`: a process paused longer
    than its reply timeout, with the reply already waiting in its socket."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def jump(self, seconds: float) -> None:
        self.t += seconds


def test_a_reply_that_arrived_during_a_pause_longer_than_the_timeout_is_still_read():
    router = Channel("router")
    endpoint = router.bind("tcp://127.0.0.1:0")
    clock = JumpingClock()
    loop = WorkerLoop(_cfg(), 0, Channel("dealer"), clock=clock)
    loop.chan.connect(endpoint)
    sent = threading.Event()

    def answer():
        identity = router.recv(5).identity
        router.send(Reply(True, "ok", 0, 1, 0.1), to=identity)
        sent.set()

    server = threading.Thread(target=answer, daemon=True)
    server.start()
    original_recv = loop.chan.recv

    def paused_recv(timeout_s, alloc=None):
        sent.wait(5)
        clock.jump(1000.0)  # the whole wait happened while the process was stopped
        return original_recv(timeout_s, alloc)

    loop.chan.recv = paused_recv
    try:
        reply = loop._exchange(Pull(rank=0))
        assert reply.TYPE == "reply" and reply.version == 1
    finally:
        server.join(5)
        loop.chan.close()
        router.close()


def test_compressors_refuse_vectors_with_nan_or_inf():
    layout = Layout.from_shapes([("w", (100,))])
    for name in ("topk", "randk", "natural", "qsgd", "sign", "identity"):
        comp = make_compressor(CompressionConfig(method="ef21", compressor=name, ratio=0.1), layout, seed=0)
        x = torch.randn(100)
        x[7] = float("nan")
        with pytest.raises(ValueError, match="NaN or inf"):
            comp.compress(x)
        x[7] = float("inf")
        with pytest.raises(ValueError, match="NaN or inf"):
            comp.compress(x)


class PoisonedLoop(WorkerLoop):
    """A worker whose gradient holds NaN for the first `bad` steps."""

    bad = 0

    def _finite_gradient(self, loss):
        if self.bad:
            self.bad -= 1
            self.task.net.grad[0] = float("nan")
        return super()._finite_gradient(loss)


@pytest.mark.parametrize("method", ["none", "ef21-sgdm"])
def test_a_nan_gradient_is_not_pushed_and_leaves_error_feedback_untouched(method):
    comp = {"method": method, "compressor": "topk" if method != "none" else "identity", "ratio": 0.05}
    cfg = _cfg(compression=comp, updates=30)
    with running_server(cfg) as (server, endpoint, result):
        chan = Channel("dealer")
        chan.connect(endpoint)
        loop = PoisonedLoop(cfg, 0, chan)
        loop.bad = 3
        stats = loop.run()
        chan.close()
    assert stats.skipped_nonfinite == 3 and stats.applied == 30
    assert set(result["rejected_by_reason"]) <= {"stopped"}  # nothing with NaN ever reached the server
    if method == "ef21-sgdm":
        assert bool(torch.isfinite(loop.uplink.g).all()) and bool(torch.isfinite(loop.uplink.v).all())


def test_a_gradient_that_stays_nan_stops_the_worker_with_a_reason():
    cfg = _cfg(updates=1000)
    with running_server(cfg) as (_, endpoint, _):
        chan = Channel("dealer")
        chan.connect(endpoint)
        loop = PoisonedLoop(cfg, 0, chan)
        loop.bad = 10**6
        with pytest.raises(WorkerError, match="NaN or inf 20 times in a row"):
            loop.run()
        chan.close()
    assert loop.stats.skipped_nonfinite == MAX_NONFINITE


def test_values_clipped_to_the_wire_dtype_are_counted_on_both_sides(caplog):
    x = torch.tensor([1.0, 1e6, -2e6, 3.0])
    dense = encode_dense(x, "float16")
    assert dense.meta["clipped"] == 2 and float(dense.values.float().abs().max()) == 65504.0
    sparse = encode_sparse(torch.tensor([1, 2]), torch.tensor([1e6, 5.0]), 4, "float16")
    assert sparse.meta["clipped"] == 1
    assert "clipped" not in encode_dense(x, "bfloat16").meta  # bfloat16's range holds them

    cfg = _cfg(
        compression={"method": "ef21", "compressor": "topk", "ratio": 0.1, "values": "float16"},
        optimizer={"name": "sgd", "lr": 1e-9},
        updates=120,
    )
    with running_server(cfg) as (_, endpoint, result):
        chan = Channel("dealer")
        chan.connect(endpoint)
        loop = WorkerLoop(cfg, 0, chan)
        loop.task.spec.loss = lambda out, y: 1e9 * out.square().mean()  # gradients far beyond 65504
        with caplog.at_level(logging.WARNING, logger="worker"):
            stats = loop.run()
        chan.close()
    assert stats.pushes_clipped >= 100  # the push that meets the stop is not staged, so not counted there
    assert stats.pushes_clipped - 1 <= result["pushes_clipped"] <= stats.pushes_clipped
    assert result["values_clipped"] >= stats.pushes_clipped
    assert any("clipped to compression.values=float16" in r.message for r in caplog.records)
