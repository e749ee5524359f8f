"""A real launcher whose run ends badly (slow tier): a killed worker, or SIGINT / SIGTERM / SIGHUP to the
launcher, in both modes and in a sweep. Every process of the run is gone within 10 s of the signal, the exit
code says why, and the run folder still has its summary (marked) and what the server could write."""

import contextlib
import csv
import signal
import subprocess
import sys
import time

import psutil
import pytest

from protocol.runfolder.records import RunSummary, ServerSummary, read_record
from tests.test_launch import LONG, ROOT, _children, _rank, _start, _wait_for_updates

SIGNALS = [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated"), (signal.SIGHUP, 129, "terminated")]


def _stop_all(proc, children):
    """Whatever a failed assertion left running: the launcher and the children it had, by pid."""
    for p in [*children, psutil.Process(proc.pid)] if proc.poll() is None else children:
        with contextlib.suppress(psutil.Error):
            p.kill()
    if proc.poll() is None:
        proc.wait(timeout=10)


def _signal_and_count(proc, sig, within_s=10.0):
    """Send sig to the launcher; the run's children (by pid, captured before) that are still alive after within_s."""
    children = _children(proc)
    proc.send_signal(sig)
    _, alive = psutil.wait_procs(children, timeout=within_s)
    return children, alive


def _summary(run_dir) -> RunSummary:
    s = read_record(RunSummary, run_dir / "summary.json")
    assert s is not None, f"no summary.json in {run_dir}"
    return s


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, status", SIGNALS)
def test_a_stop_signal_to_the_launcher_stops_every_process_and_keeps_the_results(tmp_path, sig, code, status):
    run = tmp_path / "run"
    proc, children = _start(LONG, run), []
    try:
        _wait_for_updates(run, proc)
        children, alive = _signal_and_count(proc, sig)
        assert len(children) >= 5 and not alive, alive  # server, evaluator, 3 workers
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
        assert f"{status} (stopped by {signal.Signals(sig).name}): every process was stopped" in err
        s = _summary(run)
        assert s.status == status and s.failure == f"stopped by {signal.Signals(sig).name}"
        assert s.stop_reason == "terminated" and s.updates > 20  # from the server's own summary
        assert (run / "snapshots" / "final.safetensors").exists() and s.final_test_acc is not None
        assert (run / "plots" / "metrics.png").exists()
    finally:
        _stop_all(proc, children)


@pytest.mark.slow
def test_a_run_failed_by_a_killed_worker_keeps_the_servers_results_and_its_summary(tmp_path):
    run = tmp_path / "run"
    proc, children = _start(LONG, run), []
    try:
        _wait_for_updates(run, proc)
        children = _children(proc)
        next(c for c in children if _rank(c) == "1").send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1 and err.index("error: run failed: worker1") > err.index("stopping every process")
        s = _summary(run)
        assert s.status == "failed" and s.failure.startswith("worker1 (pid") and "SIGKILL" in s.failure
        server = read_record(ServerSummary, run / "server_summary.json")
        assert server is not None and server.stop_reason == "terminated" and s.updates == server.updates > 20
        assert s.processes["server"]["exit"] == 3  # stopped by its SIGTERM, not killed
        assert s.final_test_acc is not None and (run / "plots" / "metrics.png").exists()
    finally:
        _stop_all(proc, children)


@pytest.mark.slow
def test_sigterm_stops_a_sync_run_and_rank_0_still_writes_the_records(tmp_path):
    run = tmp_path / "run"
    proc, children = _start(["configs/tiny.yaml", "mode=sync", "run.max_updates=100000000"], run), []
    try:
        _wait_for_updates(run, proc)
        children, alive = _signal_and_count(proc, signal.SIGTERM)
        assert len(children) >= 4 and not alive, alive  # evaluator, 3 ranks
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, err
        s = _summary(run)
        assert s.status == "terminated" and s.mode == "sync" and s.stop_reason == "terminated"
        assert (run / "server_summary.json").exists() and s.final_test_acc is not None
    finally:
        _stop_all(proc, children)


@pytest.mark.slow
def test_a_stop_signal_stops_the_current_sweep_point_and_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    first = sweep / "001-workers=1_seed=0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "launch", "configs/sweep.yaml", *LONG[1:], "--run-dir", str(sweep), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    children = []
    try:
        _wait_for_updates(first, proc)
        children, alive = _signal_and_count(proc, signal.SIGTERM)
        assert children and not alive, alive
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 143 and time.monotonic() - t0 < 30, err
        assert "terminated (stopped by SIGTERM): every process was stopped" in err
        assert _summary(first).status == "terminated"
        rows = list(csv.DictReader(open(sweep / "sweep.csv")))
        assert [(r["status"], r["error"]) for r in rows] == [("failed", "stopped by SIGTERM")]
        assert not (sweep / "002-workers=1_seed=1").exists()  # no further point started
    finally:
        _stop_all(proc, children)


@pytest.mark.slow
def test_a_launcher_killed_with_sigkill_takes_every_process_of_its_run_with_it(tmp_path):
    """SIGKILL cannot be caught, so the launcher cannot stop its children (each in its own session): they must
    not train on as orphans until run.max_seconds (server shards included)."""
    run = tmp_path / "run"
    proc, children = _start([*LONG, "server.shards=2"], run), []
    try:
        _wait_for_updates(run, proc)
        children, alive = _signal_and_count(proc, signal.SIGKILL, within_s=20.0)
        assert len(children) >= 6 and not alive, [
            " ".join(p.cmdline()) for p in alive
        ]  # 2 shards, evaluator, 3 workers
    finally:
        _stop_all(proc, children)
