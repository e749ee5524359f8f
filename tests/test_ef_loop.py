"""EF21 through the real server: the server in a thread, real WorkerLoops in threads, in-process objects
inspected after the run (docs/algorithms.md, Lock-step and drift, and Test oracles 6)."""

import threading

import pytest
import torch

from protocol.wire.channel import Channel
from ps.aggregate import EF21Aggregator
from tests.helpers import make_config, running_server
from worker.loop import WorkerLoop

JUMP_AT = 60  # rank 1's sequence number jumps after this many replies


def _config(workers, updates, values="float32", resync_every=100):
    return make_config(
        workers=workers,
        seed=1,
        task={"model": "logreg", "batch_size": 16},
        optimizer={"name": "sgd", "lr": 0.05},
        compression={
            "method": "ef21-sgdm",
            "compressor": "topk",
            "ratio": 0.02,
            "values": values,
            "resync_every": resync_every,
        },
        run={"max_updates": updates, "eval_every_s": 1000},
        server={"stop_grace_s": 2},
    )


def _train(cfg, loops_of, run_dir=None):
    """Run every rank's WorkerLoop (built by loops_of(rank, channel)) in a thread against a real server."""
    with running_server(cfg, run_dir=run_dir) as (server, endpoint, result):
        chans = [Channel("dealer") for _ in range(cfg.workers)]
        loops = []
        for rank, chan in enumerate(chans):
            chan.connect(endpoint)
            loops.append(loops_of(rank, chan))
        threads = [threading.Thread(target=loop.run, daemon=True) for loop in loops]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a worker did not stop"
        for chan in chans:
            chan.close()
    return server, loops, result


class JumpingLoop(WorkerLoop):
    """A worker whose sequence number skips ahead once, as after a lost or duplicated message."""

    jumped = False

    def _handle(self, reply):
        super()._handle(reply)
        if not self.jumped and self.seq == JUMP_AT:
            self.jumped = True
            self.seq += 3


def _recording_kinds(loop):
    kinds = []
    prepare = loop.uplink.prepare
    loop.uplink.prepare = lambda grad: kinds.append(prepare(grad)) or kinds[-1]
    loop.kinds = kinds
    return loop


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_seq_jump_is_refused_and_resynchronised_with_a_dense_reset(tmp_path):
    cfg = _config(workers=2, updates=400)
    make = lambda rank, chan: _recording_kinds((JumpingLoop if rank == 1 else WorkerLoop)(cfg, rank, chan))
    server, loops, result = _train(cfg, make, run_dir=tmp_path)
    jumper = loops[1]
    assert jumper.jumped and jumper.stats.rejected == 1
    assert result["rejected_by_reason"].get("bad_seq") == 1
    kinds = [kind for kind, _ in jumper.kinds]
    assert kinds.count("reset") == 2 and kinds[0] == "reset"  # the first push, and the resync
    resync = kinds.index("reset", 1)
    assert resync == JUMP_AT + 1  # the refused delta, then at once a dense reset
    assert set(kinds[1:resync]) == set(kinds[resync + 1 :]) == {"delta"}
    assert loops[0].stats.rejected == 0 and [k for k, _ in loops[0].kinds].count("reset") == 1
    assert result["updates"] == 400 and result["ef_drift_max"] < 1e-5, result
    for rank, loop in enumerate(loops):  # both sides hold the same g_i, bit for bit
        assert torch.equal(server.model.agg.g_i[rank], loop.uplink.g), rank


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("values", ["float32", "bfloat16"])
def test_server_g_is_the_mean_of_the_workers_g_i_after_thousands_of_topk_pushes(values, monkeypatch):
    before_final_recompute = []
    recompute = EF21Aggregator.recompute

    def spy(self, measure=True):  # g as the incremental sums left it, before it is recomputed exactly
        before_final_recompute.append(self.g.clone())
        return recompute(self, measure)

    monkeypatch.setattr(EF21Aggregator, "recompute", spy)
    cfg = _config(workers=4, updates=3000, values=values, resync_every=10**6)  # no periodic exact recompute
    server, loops, result = _train(cfg, lambda rank, chan: WorkerLoop(cfg, rank, chan))
    assert result["pushes_applied"] == 3000 and all(loop.stats.applied > 300 for loop in loops)
    g_server = before_final_recompute[-1]  # the recompute at the end of the run
    mean = torch.stack([loop.uplink.g for loop in loops]).double().mean(0)
    rel = float((g_server.double() - mean).norm() / mean.norm())
    assert rel < 1e-5, rel
    for rank, loop in enumerate(loops):
        assert torch.equal(server.model.agg.g_i[rank], loop.uplink.g), rank
    assert result["ef_drift_max"] < 1e-5
