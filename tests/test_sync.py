"""The synchronous baseline (sync/loop.py): the same training as async with one worker, the same as one
process averaging every rank's gradient (dense) or running the server's EF21 arithmetic (compressed),
and ranks that never diverge. Multi-process runs bind to 127.0.0.1 on free ports and are bounded."""

import csv
import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from protocol.config.loader import resolved_yaml
from protocol.errors import ConfigError
from protocol.runfolder.snapshot import read_snapshot
from protocol.wire.messages import Push
from ps.aggregate import EF21Aggregator
from ps.optim import make_optimizer
from sync.__main__ import exit_code
from sync.group import loopback_interface, rank_device
from sync.loop import SyncWorker
from tests.helpers import make_config
from tests.test_equivalence import _distributed
from worker.loop import rank_uplink
from worker.tasks import Task

ROOT = Path(__file__).resolve().parent.parent
RANK_TIMEOUT_S = 180


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture
def gloo_world_of_one(tmp_path, monkeypatch):
    """A gloo group of one rank in this process (file:// rendezvous: no TCP store; gloo on loopback)."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", loopback_interface() or "lo")
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1, timeout=timedelta(seconds=60)
    )
    yield
    dist.destroy_process_group()


# -- (1) one sync worker == one async worker with staleness 0 ----------------------------------------------
@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "amsgrad", "lr": 3e-3},
        {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    ],
)
def test_one_sync_worker_equals_one_async_worker(tmp_path, gloo_world_of_one, optimizer):
    steps = 120
    sections = dict(
        workers=1,
        seed=3,
        task={"dataset": "digits", "model": "mlp", "hidden": [32], "batch_size": 16},
        optimizer=optimizer,
        run={"max_updates": steps, "eval_every_s": 1000},
        server={"stop_grace_s": 1},
    )
    (tmp_path / "async").mkdir()
    async_rows, _, result, async_final = _distributed(make_config(**sections), tmp_path / "async")
    (tmp_path / "sync").mkdir()
    stats = SyncWorker(make_config(mode="sync", **sections), 0, 1, run_dir=tmp_path / "sync").run()
    sync_rows = _rows(tmp_path / "sync" / "updates.csv")
    _, sync_final, _ = read_snapshot(tmp_path / "sync" / "snapshots" / "final.safetensors")
    assert result["updates"] == stats.applied == len(sync_rows) == steps and stats.stop_reason == "max_updates"
    assert [r["version"] for r in sync_rows] == [r["version"] for r in async_rows]
    assert {r["staleness"] for r in sync_rows} == {"0"}
    losses = [torch.tensor([float(r["loss"]) for r in rows]) for rows in (sync_rows, async_rows)]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sync_final, async_final, rtol=1e-5, atol=1e-6)
    assert losses[0][-10:].mean() < 0.5 * losses[0][:10].mean()  # it trained, so the comparison means something
    sync_summary = json.loads((tmp_path / "sync" / "server_summary.json").read_text())
    assert set(result) <= set(sync_summary), "server_summary.json lacks keys the async server writes"
    assert sync_summary["ranks_agree"] is True and sync_summary["pushes_applied"] == steps


# -- multi-process runs ---------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(cfg, tmp_path: Path) -> list[torch.Tensor]:
    """Run cfg.workers ranks of tests/sync_rank.py; every rank's final parameters, in rank order."""
    config = tmp_path / "config.yaml"
    config.write_text(resolved_yaml(cfg))
    base = {
        **os.environ,
        "WORLD_SIZE": str(cfg.workers),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "PYTHONUNBUFFERED": "1",
    }
    procs, logs = [], []
    try:
        for rank in range(cfg.workers):
            logs.append(tmp_path / f"rank{rank}.log")
            with open(logs[-1], "w") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, str(ROOT / "tests" / "sync_rank.py"), str(config), str(tmp_path)],
                        env={**base, "RANK": str(rank)},
                        cwd=ROOT,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        codes = [p.wait(timeout=RANK_TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    assert codes == [0] * cfg.workers, "\n".join(log.read_text()[-3000:] for log in logs)
    return [read_snapshot(tmp_path / f"rank{rank}.safetensors").params for rank in range(cfg.workers)]


def _sections(workers: int, steps: int, **compression) -> dict:
    return dict(
        mode="sync",
        workers=workers,
        seed=5,
        task={"dataset": "digits", "model": "logreg", "batch_size": 16},
        optimizer={"name": "amsgrad", "lr": 1e-2},
        compression=compression,
        worker={"slowdown": [1, 3][:workers], "compute_s": 0.001, "jitter": 0.5},  # math unchanged
        run={"max_updates": steps, "eval_every_s": 0.05},
    )


def _averaged_reference(cfg, steps: int) -> tuple[torch.Tensor, list[list[float]]]:
    """One process: every rank's minibatch gradient at the same x, their mean, the server's optimizer."""
    task, n = Task(cfg), cfg.workers
    samplers = [task.batches(rank, n) for rank in range(n)]
    opt = make_optimizer(task.net.params, cfg.optimizer)
    losses = []
    for _ in range(steps):
        grads, step_losses = [], []
        for sampler in samplers:
            step_losses.append(task.gradient(next(sampler)))
            grads.append(task.net.grad.clone())
        opt.step(torch.stack(grads).sum(0) / n, cfg.optimizer.lr)
        losses.append(step_losses)
    return task.net.params.clone(), losses


def _assert_consistent_run(run: Path, cfg, steps: int, ref_losses: list[list[float]] | None = None) -> None:
    rows = _rows(run / "updates.csv")
    assert len(rows) == steps * cfg.workers
    assert [(int(r["version"]), int(r["worker"])) for r in rows] == [
        (v, w) for v in range(1, steps + 1) for w in range(cfg.workers)
    ]
    if ref_losses is not None:
        got = torch.tensor([float(r["loss"]) for r in rows])
        torch.testing.assert_close(got, torch.tensor(ref_losses).reshape(-1), rtol=1e-4, atol=1e-6)
    summary = json.loads((run / "server_summary.json").read_text())
    assert summary["ranks_agree"] is True and summary["updates"] == steps and summary["staleness_max"] == 0


@pytest.mark.parametrize("workers", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_dense_sync_run_equals_one_process_averaging_the_same_gradients(tmp_path, workers):
    steps = 30
    cfg = make_config(**_sections(workers, steps))
    params = run_ranks(cfg, tmp_path)
    ref, ref_losses = _averaged_reference(cfg, steps)
    assert all(torch.equal(p, params[0]) for p in params[1:]), "ranks diverged"
    torch.testing.assert_close(params[0], ref, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ref, Task(cfg).net.params)  # it moved
    _assert_consistent_run(tmp_path / "run", cfg, steps, ref_losses)


def _ef21_reference(cfg, steps: int) -> torch.Tensor:
    """One process running every rank's uplink and the server's EF21 aggregator, one step per round of pushes."""
    task, n = Task(cfg), cfg.workers
    samplers = [task.batches(rank, n) for rank in range(n)]
    uplinks = [rank_uplink(cfg, rank, task.net) for rank in range(n)]
    agg = EF21Aggregator(task.net.numel, cfg.compression.resync_every)
    opt = make_optimizer(task.net.params, cfg.optimizer)
    for step in range(steps):
        for rank in range(n):
            loss = task.gradient(next(samplers[rank]))
            kind, p = uplinks[rank].prepare(task.net.grad)
            push = Push(
                rank=rank,
                seq=step,
                base_version=step,
                kind=kind,
                encoding=p.encoding,
                numel=p.numel,
                loss=loss,
                samples=16,
                meta=p.meta,
                values=p.values,
                indices=p.indices,
                signs=p.signs,
            )
            direction = agg.apply(rank, agg.stage(push))
            uplinks[rank].commit(True)
        opt.step(direction, cfg.optimizer.lr)
    return task.net.params.clone()


@pytest.mark.parametrize(
    "workers,compression",
    [
        (3, {"method": "ef21", "compressor": "topk", "ratio": 0.05}),
        pytest.param(
            2,
            {"method": "ef21-sgdm", "compressor": "randk", "ratio": 0.1, "eta": 0.5, "values": "bfloat16"},
            marks=pytest.mark.slow,
        ),
    ],
)
def test_ef21_sync_ranks_never_diverge_and_equal_the_servers_arithmetic(tmp_path, workers, compression):
    steps = 30
    cfg = make_config(**_sections(workers, steps, **compression))
    params = run_ranks(cfg, tmp_path)
    assert all(torch.equal(p, params[0]) for p in params[1:]), "ranks diverged"
    torch.testing.assert_close(params[0], _ef21_reference(cfg, steps), rtol=1e-5, atol=1e-6)
    _assert_consistent_run(tmp_path / "run", cfg, steps)
    rows = _rows(tmp_path / "run" / "updates.csv")
    first, later = int(rows[0]["bytes"]), [int(r["bytes"]) for r in rows[workers:]]
    assert max(later) < first / 3  # a dense reset first, then compressed deltas


# -- config -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sections,key",
    [
        ({"staleness": {"delay": "uniform", "delay_versions": 3}}, "staleness.delay"),
        ({"staleness": {"apply_every": 2}}, "staleness.apply_every"),
    ],
)
def test_sync_mode_refuses_what_it_cannot_do_naming_the_key(sections, key):
    make_config(**sections)  # fine in async mode
    with pytest.raises(ConfigError) as info:
        make_config(mode="sync", **sections)
    assert info.value.key == key


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when no GPU is visible")
def test_a_cuda_rank_without_a_gpu_fails_naming_the_key():
    with pytest.raises(ConfigError) as info:
        rank_device(make_config(mode="sync", worker={"device": "cuda"}), 0, 2)
    assert info.value.key == "worker.device" and "no CUDA device" in str(info.value)


def test_exit_codes_tell_a_normal_end_from_a_signal_and_from_a_peer_that_stopped():
    assert exit_code("max_updates", "") == exit_code("max_seconds", "") == 0
    assert exit_code("terminated", "terminated") == 143 and exit_code("interrupted", "interrupted") == 130
    assert exit_code("terminated", "") == 3
