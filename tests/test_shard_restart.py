"""A killed server shard comes back under run.max_restarts (docs/fault-tolerance.md): it resumes from its own
checkpoint, the workers join it again, and the run completes with every shard's updates applied once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from protocol.runfolder.records import RunSummary, read_record

ROOT = Path(__file__).resolve().parent.parent
ARGS = [
    "configs/quickstart.yaml",
    "server.shards=2",
    "run.max_updates=2000",
    "worker.compute_s=0.004",
    "run.max_restarts=2",
    "checkpoint.every_updates=200",
    "checkpoint.every_s=0",
    "run.plots=false",
    "run.tensorboard=false",
]


def _version(run_dir: Path, shard: int) -> int:
    try:
        return json.loads((run_dir / f"shard-{shard}" / "status.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return -1


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_killed_shard_resumes_its_checkpoint_and_the_run_completes(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "launch", *ARGS, "--run-dir", str(run), "--quiet"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while _version(run, 1) < 700:
            assert proc.poll() is None and time.monotonic() < deadline, "shard 1 did not reach version 700"
            time.sleep(0.05)
        shard1 = [p for p in psutil.Process(proc.pid).children(recursive=True)
                  if "--shard 1" in " ".join(p.cmdline())]  # fmt: skip
        assert len(shard1) == 1
        shard1[0].send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert proc.returncode == 0, out
    summary = read_record(RunSummary, run / "summary.json")
    assert summary.status == "ok" and summary.restarts == {"server1": 1}, summary
    shards = json.loads((run / "summary.json").read_text())["shards"]
    versions = [s["updates"] for s in shards]
    # shard 0 ends the run at max_updates; shard 1 redid the updates after its checkpoint and is told to stop
    # by the workers, within the updates it lost (at most checkpoint.every_updates behind)
    assert versions[0] == 2000 and 2000 - 200 <= versions[1] <= 2000 and summary.updates == min(versions)
    for s, version in enumerate(versions):
        rows = [r.split(",") for r in (run / f"shard-{s}" / "updates.csv").read_text().splitlines()[1:]]
        applied = [int(r[0]) for r in rows if r[6] == "1"]
        assert applied == list(range(1, version + 1))  # none applied twice (rows past the checkpoint redone)
    assert (run / "snapshots" / "final.safetensors").exists()
