"""Real multi-process runs of `python -m launch ... mode=sync` (the slow tier): gloo groups on 127.0.0.1."""

import json
import signal
import time

import psutil
import pytest

from protocol.config.loader import load_experiment
from protocol.runfolder.snapshot import read_snapshot
from tests.test_launch import RUN_FILES, SUMMARY_KEYS, _children, _rows, _start, _wait_for_updates, launch

SYNC_FILES = [f for f in RUN_FILES if f != "logs/server.log"]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 3])
def test_tiny_sync_run_leaves_a_consistent_run_folder(tmp_path, workers):
    run = tmp_path / "run"
    t0 = time.monotonic()
    out = launch(["configs/tiny.yaml", "mode=sync", f"workers={workers}"], run)
    assert out.returncode == 0, out.stderr + out.stdout
    assert time.monotonic() - t0 < 200
    per_rank = [f"logs/worker{i}.log" for i in range(workers)] + [f"worker-{i}.json" for i in range(workers)]
    for name in SYNC_FILES + per_rank:
        assert (run / name).exists(), name
    s = json.loads((run / "summary.json").read_text())
    assert all(k in s for k in SUMMARY_KEYS) and s["mode"] == "sync" and s["stop_reason"] == "max_updates"
    rows = _rows(run)
    assert s["updates"] == 300 and s["pushes_applied"] == s["pushes_received"] == len(rows) == 300 * workers
    assert [(int(r["version"]), int(r["worker"])) for r in rows] == [
        (v, w) for v in range(1, 301) for w in range(workers)
    ]
    assert all(r["applied"] == "1" and r["staleness"] == "0" and r["reason"] == "ok" for r in rows)
    assert all(int(r["base_version"]) == int(r["version"]) - 1 for r in rows)
    assert s["uplink_bytes"] == sum(int(r["bytes"]) for r in rows)
    assert s["staleness_max"] == 0 and s["staleness_mean"] == 0.0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["final"] and metrics[-1]["updates"] == 300
    assert s["final_test_acc"] == metrics[-1]["test_acc"] > 0.8
    meta, params, _ = read_snapshot(run / "snapshots" / "final.safetensors")
    assert meta["version"] == 300 and params.numel() == s["num_params"] == 650
    server = json.loads((run / "server_summary.json").read_text())
    assert server["ranks_agree"] is True and sorted(server["workers"]) == [str(i) for i in range(workers)]
    for i in range(workers):
        stats = json.loads((run / f"worker-{i}.json").read_text())
        assert stats["pushes"] == stats["applied"] == 300 and stats["stop_reason"] == "max_updates"
    assert load_experiment(run / "config.yaml").mode == "sync"


def _pid_of(run, name: str, timeout_s: float = 60.0) -> int:
    """The pid processes.csv gives the launcher's child `name` (sampled every second)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        path = run / "processes.csv"
        rows = path.read_text().splitlines()[1:] if path.exists() else []
        pids = [int(r.split(",")[2]) for r in rows if r.split(",")[1] == name]
        if pids:
            return pids[-1]
        time.sleep(0.2)
    raise AssertionError(f"{name} never appeared in processes.csv")


@pytest.mark.slow
def test_a_killed_sync_rank_stops_everything_and_is_named(tmp_path):
    run = tmp_path / "run"
    proc = _start(["configs/tiny.yaml", "mode=sync", "run.max_updates=100000000", "run.max_seconds=300"], run)
    try:
        _wait_for_updates(run, proc)
        children = _children(proc)
        victim = psutil.Process(_pid_of(run, "worker1"))  # a forked rank's /proc environ is the fork server's
        t0 = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - t0 < 30
        assert proc.returncode == 1
        assert "worker1" in err.split(";")[0] and "SIGKILL" in err, err
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, alive
    finally:
        if proc.poll() is None:
            proc.kill()
