"""A run survives its processes and its network: silent workers leave, lossy messages are resent and never
applied twice, and killed processes come back (chaos through the real launcher)."""

import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from protocol.runfolder.records import RunSummary, read_record
from protocol.wire.layout import Layout
from tests.helpers import FakeWorker, join_all, make_config, running_server
from worker.loop import WorkerLoop, worker_channel

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = Layout.from_shapes([("w", (4, 4))])
N = LAYOUT.total


def _barrier_cfg(**run):
    return make_config(
        workers=3,
        optimizer={"name": "sgd", "lr": 0.1},
        staleness={"apply_every": 3, "barrier": True},
        run={"max_updates": 10**6, "eval_every_s": 1000, **run},
        server={"worker_timeout_s": 1.0, "stop_grace_s": 0.5},
    )


def _push_async(w: FakeWorker) -> dict:
    out: dict = {}
    threading.Thread(target=lambda: out.update(reply=w.push(torch.ones(N))), daemon=True).start()
    return out


def test_a_silent_worker_under_a_barrier_leaves_within_worker_timeout_and_the_others_go_on():
    with running_server(_barrier_cfg(), model=(LAYOUT, torch.zeros(N))) as (server, endpoint, result):
        ws = [FakeWorker(endpoint, r, LAYOUT) for r in range(3)]
        join_all(ws)
        t0 = time.monotonic()
        waiting = [_push_async(w) for w in ws[:2]]  # rank 2 never pushes: the barrier waits for it
        while not all("reply" in o for o in waiting):
            assert time.monotonic() - t0 < 4, "the barrier still waits for the silent rank"
            time.sleep(0.05)
        assert time.monotonic() - t0 < 1.0 + 2.5  # worker_timeout_s, and the once-a-second check
        assert all(o["reply"].applied for o in waiting) and server.version == 1
        assert server.evicted == [2]
        again = [_push_async(w) for w in ws[:2]]  # groups of the two left now
        while not all("reply" in o for o in again):
            assert time.monotonic() - t0 < 8
            time.sleep(0.05)
        assert server.version == 2
        back = ws[2].hello()  # the rank comes back and goes on where it was: groups of three again
        assert back.TYPE == "welcome" and back.next_seq == 0
        last = [_push_async(w) for w in ws]
        while not all("reply" in o for o in last):
            assert time.monotonic() - t0 < 12
            time.sleep(0.05)
        assert server.version == 3
        server.signal_stop("done")
    assert result["workers_left"] == [2]


def test_too_few_workers_left_stop_the_run_with_an_error_naming_them():
    with running_server(_barrier_cfg(min_workers=3), model=(LAYOUT, torch.zeros(N))) as (server, endpoint, result):
        ws = [FakeWorker(endpoint, r, LAYOUT) for r in range(3)]
        join_all(ws)
        _push_async(ws[0])
        deadline = time.monotonic() + 5
        while server.stop_reason is None and time.monotonic() < deadline:
            time.sleep(0.05)
    assert result["stop_reason"].startswith("too_few_workers") and "[1, 2]" in result["stop_reason"]


def _lossy_cfg():
    return make_config(
        workers=3,
        seed=2,
        task={"model": "logreg", "batch_size": 16},
        optimizer={"name": "sgd", "lr": 0.05},
        compression={"method": "ef21-sgdm", "compressor": "topk", "ratio": 0.05, "resync_every": 50},
        faults={"drop": 0.05, "duplicate": 0.05, "delay": 0.05, "reorder": 0.05, "delay_s": 0.02},
        run={"max_updates": 600, "eval_every_s": 1000},
        server={"resend_s": 0.2, "stop_grace_s": 2},
    )


@pytest.mark.timeout(180)
def test_a_run_through_a_lossy_network_completes_and_the_ef21_mirror_stays_in_lock_step(tmp_path):
    cfg = _lossy_cfg()
    with running_server(cfg, run_dir=tmp_path) as (server, endpoint, result):
        loops, threads = [], []
        for rank in range(cfg.workers):
            chan = worker_channel(cfg, rank)
            chan.connect(endpoint)
            loops.append(WorkerLoop(cfg, rank, chan))
            threads.append(threading.Thread(target=loops[-1].run, daemon=True))
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)
        assert not any(t.is_alive() for t in threads)
    assert result["stop_reason"] == "max_updates"
    assert result["pushes_received"] == result["pushes_applied"] + result["pushes_rejected"]
    assert result["ef_drift_max"] < 1e-5  # float rounding, not a lost or doubled delta
    assert sum(loop.link.resends for loop in loops) > 0  # the faults did bite
    faults = server.chan.faults.counts
    assert min(faults.values()) > 0, faults
    rows = [r.split(",") for r in (tmp_path / "updates.csv").read_text().splitlines()[1:]]
    applied = [int(r[0]) for r in rows if r[6] == "1"]
    assert applied == list(range(1, len(applied) + 1))  # no update applied twice, none skipped


# -- chaos through the real launcher ---------------------------------------------------------------------------
CHAOS = [
    "configs/quickstart.yaml",
    "run.max_updates=2500",
    "worker.compute_s=0.004",
    "run.max_restarts=3",
    "checkpoint.every_updates=200",
    "checkpoint.every_s=0",
    "server.resend_s=0.5",
    "run.plots=false",
]


def _launch(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "launch", *CHAOS, *extra, "--run-dir", str(run_dir), "--quiet"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _version(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "status.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return -1


def _kill(launcher: psutil.Process, module: str, rng: random.Random) -> None:
    procs = [p for p in launcher.children(recursive=True) if f"-m {module}" in " ".join(p.cmdline())]
    assert procs, f"no {module} process to kill"
    rng.choice(procs).send_signal(signal.SIGKILL)


def _wait_for(run_dir: Path, version: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 90
    while _version(run_dir) < version:
        assert proc.poll() is None and time.monotonic() < deadline, f"the run did not reach version {version}"
        time.sleep(0.05)


@pytest.mark.timeout(300)
def test_chaos_two_workers_and_the_server_killed_the_run_completes_as_an_undisturbed_one(tmp_path):
    calm = _launch(tmp_path / "calm")
    assert calm.wait(200) == 0, calm.stdout.read()
    proc, run = _launch(tmp_path / "chaos"), tmp_path / "chaos"
    launcher, rng = psutil.Process(proc.pid), random.Random(7)
    for at, module in ((400, "worker"), (1000, "ps"), (1700, "worker")):
        _wait_for(run, at, proc)
        _kill(launcher, module, rng)
    out, _ = proc.communicate(timeout=200)
    assert proc.returncode == 0, out
    calm_s, chaos_s = (
        read_record(RunSummary, tmp_path / "calm" / "summary.json"),
        read_record(RunSummary, run / "summary.json"),
    )
    assert chaos_s.status == "ok" and chaos_s.updates == 2500
    assert chaos_s.server_restarts == 1 and sum(chaos_s.restarts.values()) == 3
    assert chaos_s.pushes_received == chaos_s.pushes_applied + chaos_s.pushes_rejected
    rows = [r.split(",") for r in (run / "updates.csv").read_text().splitlines()[1:]]
    applied = [int(r[0]) for r in rows if r[6] == "1"]
    assert applied == list(range(1, 2501))  # no update applied twice (the rows past the checkpoint were redone)
    # the same model quality: the restarts change which pushes interleave how (asynchrony), so the two runs are
    # not the same run; on the 359 test digits a CI run measured 0.0111 apart (4 digits), so the bound is 7 digits
    assert abs(chaos_s.final_test_acc - calm_s.final_test_acc) <= 0.02, (chaos_s.final_test_acc, calm_s.final_test_acc)
