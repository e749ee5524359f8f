"""Watching a real run of `python -m launch` (slow tier): the TensorBoard event files the watch loop leaves in
the run folder, evaluations every run.eval_every_updates, and the progress lines in a log."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_tensorboard import STATUS_TAGS, read_scalars

ROOT = Path(__file__).resolve().parent.parent
UPDATES, EVERY = 3000, 500  # long enough for several status samples: forked workers join at once


def _launch(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "launch", "configs/tiny.yaml", *overrides, "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_a_run_leaves_event_files_of_its_metrics_and_status(tmp_path):
    run = tmp_path / "run"
    overrides = [f"run.max_updates={UPDATES}", f"run.eval_every_updates={EVERY}", "run.eval_every_s=1000"]
    out = _launch(run, *overrides, "server.status_every_s=0.1", "run.progress_every_s=0.2", "run.plots=false")
    assert out.returncode == 0, out.stderr + out.stdout
    _assert_plain_progress_lines(out.stdout)
    summary = json.loads((run / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # eval_every_s this long: every evaluation but the first (version 0) comes from eval_every_updates
    assert {m["updates"] for m in metrics} <= set(range(0, UPDATES + 1, EVERY)) and len(metrics) >= 3, metrics
    scalars = read_scalars(run / "tensorboard")
    assert set(STATUS_TAGS + ["eval/test_acc", "eval/test_loss", "eval/train_loss"]) <= set(scalars)
    acc = scalars["eval/test_acc"]
    assert [(s, v) for s, _, v in acc] == [(m["updates"], pytest.approx(m["test_acc"])) for m in metrics]
    t0 = acc[0][1] - metrics[0]["wall_s"]  # the run's start, as the event files date it
    assert [t - t0 for _, t, _ in acc] == pytest.approx([m["wall_s"] for m in metrics], abs=1e-3)
    uplink = scalars["comm/uplink_bytes"]
    steps = [s for s, _, _ in uplink]
    assert len(steps) >= 3 and steps == sorted(set(steps)) and steps[-1] == UPDATES, steps
    values = [v for _, _, v in uplink]
    assert values == sorted(values) and 0 < values[-1] <= summary["uplink_bytes"]
    assert all(0 <= v <= summary["staleness_max"] for _, _, v in scalars["staleness/max"])


def _assert_plain_progress_lines(stdout: str) -> None:
    """stdout is a pipe: one line per change, percent and ETA, no carriage returns."""
    assert "\r" not in stdout
    lines = stdout.splitlines()
    # before training, a line saying what it waits for (the server's start is only seen when the first tick
    # comes before the server's first status.json: on a fast machine it does not)
    assert any(line == "starting the server..." or line.startswith("waiting for workers to join:") for line in lines)
    progress = [line for line in lines if re.match(r"\[ *\d+\.\ds\] +\d+%  (ETA \d|stopping)", line)]
    assert any("ETA" in line for line in progress), stdout
    # the last line, drawn after the server's end
    assert re.search(rf"\] +100%  .*updates {UPDATES}/{UPDATES}", progress[-1]), stdout
