"""Staleness-aware training through the real server: lr rules, delay simulation, stability thresholds,
and the bounds (max_staleness, ssp, apply_every) -- docs/algorithms.md, Staleness and Test oracles 2 and 3."""

import math
import threading

import pytest
import torch

from protocol.config.schema import StalenessConfig
from protocol.errors import ProtocolError
from protocol.wire.layout import Layout
from ps.gate import ReplyGate
from ps.model import ServedModel
from ps.policy import StalenessPolicy, lr_scale, stable_lr_threshold
from tests.helpers import FakeWorker, join_all, make_config, running_server, served

ONE = Layout.from_shapes([("x", (1,))])


def _cfg(workers=1, lr=0.1, staleness=None, optimizer=None, max_updates=10**9):
    return make_config(
        workers=workers,
        optimizer={"name": "sgd", "lr": lr, **(optimizer or {})},
        staleness=staleness or {},
        run={"max_updates": max_updates, "eval_every_s": 1e6},
        server={"stop_grace_s": 0.5},
    )


# -- rules ------------------------------------------------------------------------------------------
def test_lr_rules():
    assert lr_scale("constant", 7) == 1.0
    assert lr_scale("inverse", 0) == 1.0 and lr_scale("inverse", 4) == 0.25
    assert lr_scale("stability", 0) == 1.0
    assert lr_scale("stability", 4) == pytest.approx(0.17365, abs=1e-5)  # R5 (b) in docs/algorithms.md: 0.0174
    # at lr0 0.1
    assert lr_scale("stability", 1000) * 1000 == pytest.approx(math.pi / 4, rel=1e-3)  # ~0.785 lr0 / tau
    for tau, threshold in ((1, 1.0), (4, 0.3473), (16, 0.09516)):
        assert stable_lr_threshold(tau) == pytest.approx(threshold, abs=1e-4)


def test_policy_drop_downweight_and_running_mean():
    drop = StalenessPolicy(0.1, StalenessConfig(max_staleness=3))
    assert drop.decide(3).accept and not drop.decide(4).accept and drop.dropped == 1
    down = StalenessPolicy(0.1, StalenessConfig(max_staleness=2, over_bound="downweight"))
    assert down.decide(8).lr == pytest.approx(0.1 * 2 / 8)
    mean = StalenessPolicy(1.0, StalenessConfig(lr_rule="inverse", lr_from="mean", mean_window=2))
    mean.decide(2)
    assert mean.decide(6).lr == pytest.approx(1 / 4)  # mean of the last 2 taus


def test_gate_ssp_and_barrier_bookkeeping():
    g = ReplyGate(ssp=1)
    for r in range(3):
        g.join(r)
    assert g.pushed(0, False) == [0]  # 1 ahead of the slowest: allowed
    assert g.pushed(0, False) == []  # 2 ahead: waits
    assert g.pushed(1, False) == [1] and g.pushed(2, False) == [0, 2]  # slowest caught up: 0 released (arrival order)
    b = ReplyGate(barrier=True)
    for r in range(2):
        b.join(r)
    assert b.pushed(0, False) == [] and b.pushed(1, True) == [0, 1]


# -- delay simulation ---------------------------------------------------------------------------------
def test_artificial_uniform_delay_gives_uniform_staleness(tmp_path):
    D, n = 6, 3000
    cfg = _cfg(lr=1e-3, staleness={"delay": "uniform", "delay_versions": D})
    with running_server(cfg, run_dir=tmp_path, model=(ONE, torch.ones(1))) as (server, endpoint, _):
        w = FakeWorker(endpoint, 0, ONE)
        w.hello()
        seen = [w.push(torch.ones(1)).staleness for _ in range(n)]
    steady = seen[D:]  # the first D pushes see fewer stored versions
    counts = [steady.count(k) for k in range(D)]
    assert set(steady) == set(range(D))
    expected = len(steady) / D
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    assert chi2 < 20.5, counts  # chi-square, 5 degrees of freedom: p = 0.001 at 20.5 (fixed seed)


def test_artificial_delay_memory_is_bounded():
    cfg = _cfg(staleness={"delay": "uniform", "delay_versions": 1000, "delay_memory_mb": 0.001})
    with pytest.raises(ProtocolError, match="delay_memory_mb"):  # refused before anything is allocated
        ServedModel.create(cfg, served(Layout.from_shapes([("x", (1000,))]), torch.ones(1000)))


# -- stability thresholds (At Stability's Edge) through the real server ------------------------------
def _envelopes(xs):
    half, n = len(xs) // 2, len(xs)
    window = max(50, n // 10)
    return max(map(abs, xs[half - window : half])), max(map(abs, xs[n - window :]))


def _delayed_sgd_trajectory(lr, tau, steps):
    """1-D quadratic f = x^2/2 (curvature 1), one worker, the server answering with a tau-old snapshot."""
    cfg = _cfg(lr=lr, staleness={"delay": "constant", "delay_versions": tau + 1})
    with running_server(cfg, model=(ONE, torch.ones(1))) as (server, endpoint, _):
        w = FakeWorker(endpoint, 0, ONE)
        w.hello()
        xs = []
        for _ in range(steps):
            reply = w.push(w.params.clone())  # gradient of x^2/2 at the (stale) parameters received
            assert reply.staleness == min(tau, server.version - 1)
            xs.append(float(server.params))
            if abs(xs[-1]) > 1e6:
                break
    return xs


@pytest.mark.parametrize("tau,steps", [(1, 1000), (4, 1000), (16, 3000)])
def test_delayed_sgd_converges_just_below_and_diverges_just_above_the_stability_bound(tau, steps):
    threshold = stable_lr_threshold(tau)  # 1.0, 0.3473, 0.0952
    mid, end = _envelopes(_delayed_sgd_trajectory(0.97 * threshold, tau, steps))
    assert end < mid < 1.0, (mid, end)  # shrinking oscillation
    xs = _delayed_sgd_trajectory(1.03 * threshold, tau, steps)
    mid, end = _envelopes(xs)
    assert end > mid > 1.0 or abs(xs[-1]) > 1e6, (mid, end)  # growing oscillation


def _round_robin_momentum(lr, mode, workers=17, steps=6000):
    """W = tau + 1 identical workers pushing in turn see staleness tau = 16 on every push."""
    cfg = _cfg(workers=workers, lr=lr, optimizer={"momentum": 0.9, "momentum_mode": mode})
    with running_server(cfg, model=(ONE, torch.ones(1))) as (server, endpoint, _):
        ws = [FakeWorker(endpoint, r, ONE) for r in range(workers)]
        join_all(ws)
        xs = []
        for step in range(steps):
            w = ws[step % workers]
            w.push(w.params.clone())
            xs.append(float(server.params))
        for w in ws:
            w.close()
    return xs


@pytest.mark.slow
@pytest.mark.parametrize("mode,threshold", [("server", 0.00749), ("shifted", 0.01226)])
def test_momentum_thresholds_at_tau_16(mode, threshold):
    """Server momentum 0.9 cuts the stable lr to ~0.0075; per-worker (shifted) momentum keeps ~0.0123."""
    mid, end = _envelopes(_round_robin_momentum(0.97 * threshold, mode))
    assert end < mid, (mode, mid, end)
    mid, end = _envelopes(_round_robin_momentum(1.03 * threshold, mode))
    assert end > mid, (mode, mid, end)


# -- bounds over multi-worker runs with stragglers -------------------------------------------------------
def _threaded_run(cfg, workers, pushes, slow_rank=None, tmp_path=None):
    """Real server, worker threads; the straggler sleeps between pushes. Returns updates.csv rows."""
    import csv
    import time

    with running_server(cfg, run_dir=tmp_path, model=(ONE, torch.zeros(1))) as (server, endpoint, _):
        ws = [FakeWorker(endpoint, r, ONE) for r in range(workers)]
        join_all(ws)

        def work(w):
            for _ in range(pushes):
                if w.rank == slow_rank:
                    time.sleep(0.004)
                reply = w.push(torch.ones(1))
                assert reply.TYPE == "reply", reply

        threads = [threading.Thread(target=work, args=(w,)) for w in ws]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        summary = server.report.counters.summary_fields()
    server.report.log.flush()
    with open(tmp_path / "updates.csv") as f:
        return list(csv.DictReader(f)), summary


def test_max_staleness_holds_with_a_straggler(tmp_path):
    cfg = _cfg(workers=4, staleness={"max_staleness": 2})
    rows, summary = _threaded_run(cfg, 4, 150, slow_rank=3, tmp_path=tmp_path)
    applied = [r for r in rows if r["applied"] == "1"]
    dropped = [r for r in rows if r["reason"] == "stale"]
    assert all(int(r["staleness"]) <= 2 for r in applied)
    assert dropped and all(int(r["staleness"]) > 2 for r in dropped)
    assert summary["pushes_dropped_stale"] == len(dropped)


def test_ssp_bound_holds_with_a_straggler(tmp_path):
    s = 3
    cfg = _cfg(workers=4, staleness={"ssp": s})
    rows, _ = _threaded_run(cfg, 4, 120, slow_rank=3, tmp_path=tmp_path)
    clock = dict.fromkeys(range(4), 0)
    widest = 0
    for r in rows:  # rows are in the order the server handled the pushes
        clock[int(r["worker"])] += 1
        widest = max(widest, max(clock.values()) - min(clock.values()))
    assert widest <= s + 1, widest  # a worker s ahead may make one more push, then waits
    assert widest == s + 1  # and the straggler really made the others wait at the bound


@pytest.mark.parametrize("barrier", [False, True])
def test_apply_every_groups_pushes_into_one_step(tmp_path, barrier):
    k = 4
    cfg = _cfg(workers=4, lr=0.5, staleness={"apply_every": k, "barrier": barrier})
    rows, _ = _threaded_run(cfg, 4, 60, slow_rank=3, tmp_path=tmp_path)
    versions = [int(r["version"]) for r in rows]
    assert versions == [(i + 1) // k for i in range(len(rows))]  # one step per k applied pushes
    if barrier:  # a synchronous parameter server: every group has one push per worker, all fresh
        assert all(int(r["staleness"]) == 0 for r in rows)
        for g in range(len(rows) // k):
            assert sorted(int(r["worker"]) for r in rows[g * k : (g + 1) * k]) == [0, 1, 2, 3]
