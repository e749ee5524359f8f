"""Real multi-process runs of `python -m launch` (the slow tier)."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from protocol.config.loader import load_experiment
from protocol.runfolder.snapshot import read_snapshot

ROOT = Path(__file__).resolve().parent.parent
RUN_FILES = [
    "config.yaml",
    "updates.csv",
    "metrics.jsonl",
    "summary.json",
    "processes.csv",
    "server_summary.json",
    "logs/server.log",
    "logs/evaluator.log",
    "plots/metrics.png",
    "plots/staleness.png",
    "plots/bytes.png",
    "snapshots/final.safetensors",
]
SUMMARY_KEYS = [
    "updates",
    "pushes_received",
    "pushes_applied",
    "pushes_rejected",
    "uplink_bytes",
    "downlink_bytes",
    "wall_s",
    "final_test_acc",
    "final_test_loss",
    "staleness_mean",
    "staleness_max",
]


def launch(args, run_dir, timeout=240, **kw):
    return subprocess.run(
        [sys.executable, "-m", "launch", *args, "--run-dir", str(run_dir), "--quiet"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        **kw,
    )


def _rows(run_dir):
    with open(run_dir / "updates.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_tiny_config_with_3_workers_leaves_a_consistent_run_folder(tmp_path):
    run = tmp_path / "run"
    out = launch(["configs/tiny.yaml"], run)
    assert out.returncode == 0, out.stderr + out.stdout
    for name in RUN_FILES + [f"logs/worker{i}.log" for i in range(3)] + [f"worker-{i}.json" for i in range(3)]:
        assert (run / name).exists(), name
    s = json.loads((run / "summary.json").read_text())
    assert all(k in s for k in SUMMARY_KEYS)
    rows = _rows(run)
    applied = [r for r in rows if r["applied"] == "1"]
    assert s["updates"] == s["pushes_applied"] == len(applied) == 300
    assert s["pushes_received"] == len(rows) == s["pushes_applied"] + s["pushes_rejected"]
    assert {r["reason"] for r in rows if r["applied"] == "0"} <= {"stopped"}
    assert s["uplink_bytes"] == sum(int(r["bytes"]) for r in rows)
    assert {int(r["worker"]) for r in applied} == {0, 1, 2}
    assert [int(r["version"]) for r in applied] == list(range(1, 301))
    assert all(int(r["staleness"]) == int(r["version"]) - 1 - int(r["base_version"]) for r in applied)
    assert s["staleness_max"] == max(int(r["staleness"]) for r in applied)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["final"] and metrics[-1]["updates"] == 300
    assert s["final_test_acc"] == metrics[-1]["test_acc"] > 0.8
    meta, params, _ = read_snapshot(run / "snapshots" / "final.safetensors")
    assert meta["version"] == 300 and params.numel() == s["num_params"] == 650
    assert load_experiment(run / "config.yaml").workers == 3
    assert (run / "plots" / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_quickstart_reaches_95_percent_on_digits(tmp_path):
    out = launch(["configs/quickstart.yaml"], tmp_path / "run", timeout=400)
    assert out.returncode == 0, out.stderr + out.stdout
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["final_test_acc"] >= 0.95, s


def _start(args, run_dir):
    return subprocess.Popen(
        [sys.executable, "-m", "launch", *args, "--run-dir", str(run_dir), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _wait_for_updates(run_dir, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads((run_dir / "status.json").read_text())["updates"] > 20:
                return
        except (OSError, ValueError, KeyError):
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError("the run never started updating")


def _rank(p):
    cmd = p.cmdline()
    return cmd[cmd.index("--rank") + 1] if "--rank" in cmd else None


def _children(proc):
    return psutil.Process(proc.pid).children(recursive=True)


LONG = ["configs/tiny.yaml", "run.max_updates=100000000", "run.max_seconds=300"]


@pytest.mark.slow
def test_a_killed_worker_stops_everything_and_is_named(tmp_path):
    run = tmp_path / "run"
    proc = _start(LONG, run)
    try:
        _wait_for_updates(run, proc)
        children = _children(proc)
        victim = next(c for c in children if _rank(c) == "1")
        t0 = time.monotonic()
        victim.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        # the server gets stop_grace_s (5 s) + a margin to write its results, then the final score and plots
        assert time.monotonic() - t0 < 30
        assert proc.returncode == 1
        assert "worker1" in err and "SIGKILL" in err
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, alive
    finally:
        if proc.poll() is None:
            proc.kill()


def test_worker_that_cannot_reach_the_server_fails_clearly(tmp_path):
    cfg = tmp_path / "c.yaml"
    text = (ROOT / "configs" / "tiny.yaml").read_text()
    cfg.write_text(text.replace("connect_timeout_s: 60", "connect_timeout_s: 2"))
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "worker", "--config", str(cfg), "--rank", "0", "--server", "tcp://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 1
    assert "could not reach the parameter server at tcp://127.0.0.1:9 within 2s" in out.stderr
    assert time.monotonic() - t0 < 30


@pytest.mark.slow
def test_each_role_runs_by_hand(tmp_path):
    """python -m launch.prepare writes the run's config and initial model and prints the commands; the server
    and the workers started by hand with those commands train the run."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    prep = subprocess.run(
        [sys.executable, "-m", "launch.prepare", "configs/tiny.yaml", "--run-dir", str(run)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip
    assert prep.returncode == 0, prep.stderr
    assert f"--run-id {run.name}" in prep.stdout and "python -m ps" in prep.stdout
    cfg, tmp_path = run / "config.yaml", run
    server = subprocess.Popen(
        [sys.executable, "-m", "ps", "--config", str(cfg), "--run-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        line = server.stdout.readline()
        assert line.startswith("TAUPS_SERVER_READY tcp://127.0.0.1:")
        endpoint = line.split()[1]
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "worker",
                    "--config",
                    str(cfg),
                    "--rank",
                    str(r),
                    "--server",
                    endpoint,
                    "--run-id",
                    run.name,
                    "--run-dir",
                    str(tmp_path / "hosts" / f"w{r}"),  # made by the worker, as on another host
                ],  # fmt: skip
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
            )
            for r in range(3)
        ]
        assert [w.wait(timeout=120) for w in workers] == [0, 0, 0]
        assert server.wait(timeout=60) == 0
        assert json.loads((tmp_path / "server_summary.json").read_text())["updates"] == 300
        assert all((tmp_path / "hosts" / f"w{r}" / f"worker-{r}.json").exists() for r in range(3))
        done = subprocess.run(
            [sys.executable, "-m", "launch.summary", str(run)], capture_output=True, text=True, cwd=ROOT, timeout=120
        )
        assert done.returncode == 0 and done.stdout.startswith("done: 300 updates"), done.stderr
        assert json.loads((run / "summary.json").read_text())["updates"] == 300
    finally:
        for p in [server, *locals().get("workers", [])]:
            if p.poll() is None:
                p.kill()


@pytest.mark.slow
def test_six_workers_three_per_process_leave_a_consistent_run_folder(tmp_path):
    run = tmp_path / "run"
    out = launch(["configs/tiny.yaml", "workers=6", "worker.per_process=3"], run)
    assert out.returncode == 0, out.stderr + out.stdout
    for name in ["logs/workers0-2.log", "logs/workers3-5.log"] + [f"worker-{i}.json" for i in range(6)]:
        assert (run / name).exists(), name
    s = json.loads((run / "summary.json").read_text())
    assert sorted(k for k in s["processes"] if k.startswith("worker")) == ["workers0-2", "workers3-5"]
    assert all(p["exit"] == 0 for p in s["processes"].values())
    rows = _rows(run)
    applied = [r for r in rows if r["applied"] == "1"]
    assert s["updates"] == s["pushes_applied"] == len(applied) == 300
    assert s["pushes_received"] == len(rows) == s["pushes_applied"] + s["pushes_rejected"]
    assert {r["reason"] for r in rows if r["applied"] == "0"} <= {"stopped"}
    assert {int(r["worker"]) for r in applied} == set(range(6))
    stats = [json.loads((run / f"worker-{i}.json").read_text()) for i in range(6)]
    assert sum(w["applied"] for w in stats) == 300 and sum(w["pushes"] for w in stats) == len(rows)
    log = (run / "logs" / "workers3-5.log").read_text()
    for rank in (3, 4, 5):  # every line names its rank: the thread is worker<rank>
        assert f"worker{rank} INFO rank {rank} joined" in log and f"rank {rank} stopped (max_updates)" in log


@pytest.mark.slow
def test_a_killed_multi_rank_process_is_named_and_the_other_leaves_cleanly(tmp_path):
    run = tmp_path / "run"
    proc = _start([*LONG, "workers=6", "worker.per_process=3"], run)
    try:
        _wait_for_updates(run, proc)
        children = _children(proc)
        victim = next(c for c in children if "--ranks" in c.cmdline() and "3-5" in c.cmdline())
        victim.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 1
        assert "workers3-5" in err and "SIGKILL" in err
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, alive
        # the launcher's SIGTERM reached the other process (and the server): every rank of it left between steps
        # (asked to stop, or told Stop by the server first) and the host reported them, not killed mid-way
        lines = (run / "logs" / "workers0-2.log").read_text().splitlines()
        ended = " ".join(line for line in lines if "MainThread INFO" in line)
        left = re.search(r"ranks ([\d, -]+) were asked to stop", ended)
        cancelled = {
            r
            for span in (left.group(1).split(", ") if left else [])
            for r in range(int(span.split("-")[0]), int(span.split("-")[-1]) + 1)
        }
        assert all(f"rank {r} stopped" in ended or r in cancelled for r in range(3)), lines
    finally:
        if proc.poll() is None:
            proc.kill()
