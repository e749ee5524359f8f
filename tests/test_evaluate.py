"""python -m launch.evaluate: refuses arguments that name nothing, gives up on a run that is over without a
final snapshot, and names a snapshot of another model with both sizes (quick tier, in process)."""

import json
import os
import time

import pytest
import torch

from launch.endwatch import EndWatch
from launch.evaluate import Evaluator, main
from launch.inproc import make_config
from protocol.config.loader import resolved_yaml
from protocol.runfolder.snapshot import write_snapshot

TINY = {"task": {"dataset": "digits", "model": "logreg"}}  # 650 parameters


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    (run / "snapshots").mkdir(parents=True)
    (run / "config.yaml").write_text(resolved_yaml(make_config(**TINY)))
    return run


def _evaluate(run_dir, *extra):
    return main(["--config", str(run_dir / "config.yaml"), "--run-dir", str(run_dir), *extra])


def _snapshot(run_dir, name, numel, **meta):
    write_snapshot(run_dir / "snapshots" / name, torch.zeros(numel), {"wall_s": 1.0, "version": 7, **meta})


def test_a_missing_or_non_folder_run_dir_exits_2_naming_the_argument(run_dir, capsys):
    assert main(["--config", str(run_dir / "config.yaml"), "--run-dir", str(run_dir / "typo")]) == 2
    assert f"error: --run-dir {run_dir / 'typo'} does not exist" in capsys.readouterr().err
    assert main(["--config", str(run_dir / "config.yaml"), "--run-dir", str(run_dir / "config.yaml")]) == 2
    assert f"error: --run-dir {run_dir / 'config.yaml'} is not a folder" in capsys.readouterr().err


def test_a_missing_config_exits_2_naming_the_argument(run_dir, capsys):
    assert main(["--config", str(run_dir / "nope.yaml"), "--run-dir", str(run_dir)]) == 2
    assert f"error: --config {run_dir / 'nope.yaml'} does not exist" in capsys.readouterr().err


def test_the_evaluator_gives_up_on_a_folder_where_nothing_changes(run_dir, capsys):
    t0 = time.monotonic()
    assert _evaluate(run_dir, "--idle-timeout", "0.5") == 1
    assert time.monotonic() - t0 < 10
    err = capsys.readouterr().err
    assert f"error: nothing in {run_dir} changed for 0.5s and it has no snapshots/final.safetensors" in err


def test_the_evaluator_gives_up_when_the_run_ended_without_a_final_snapshot(run_dir):
    now = [0.0]
    watch = EndWatch(run_dir, idle_timeout_s=1000, final_grace_s=5, clock=lambda: now[0])
    assert watch.verdict() is None
    (run_dir / "server_summary.json").write_text("{}")  # the server has ended...
    now[0] = 1.0
    assert watch.verdict() is None  # ...final.safetensors may still be on its way (it is written just before)
    now[0] = 6.5
    assert "has ended (server_summary.json) but wrote no snapshots/final.safetensors within 5s" in watch.verdict()


def test_a_run_that_keeps_writing_is_waited_for(run_dir):
    now, base = [0.0], time.time_ns()
    status = run_dir / "status.json"
    status.write_text("{}")
    watch = EndWatch(run_dir, idle_timeout_s=30, clock=lambda: now[0])
    for step in range(1, 10):  # the server rewrites status.json every 20 s: never 30 s of quiet
        now[0] = 20.0 * step
        os.utime(status, ns=(base + 20 * 10**9 * step,) * 2)
        assert watch.verdict() is None, step
    now[0] += 30
    assert "changed for 30s" in watch.verdict()


def test_a_snapshot_of_another_model_is_named_with_both_sizes_and_skipped(run_dir, capsys):
    _snapshot(run_dir, "latest.safetensors", 10)
    evaluator = Evaluator(make_config(**TINY), run_dir)
    assert evaluator.poll_once() is False
    out = capsys.readouterr().out
    assert f"skipped: {run_dir / 'snapshots' / 'latest.safetensors'} holds 10 parameters" in out
    assert "this config's model has 650" in out
    assert not (run_dir / "metrics.jsonl").exists()


def test_a_final_snapshot_of_another_model_exits_1_naming_it(run_dir, capsys):
    _snapshot(run_dir, "final.safetensors", 10, final=True)
    assert _evaluate(run_dir) == 1
    err = capsys.readouterr().err
    assert f"error: {run_dir / 'snapshots' / 'final.safetensors'} holds 10 parameters" in err and "has 650" in err


def test_a_final_snapshot_of_the_model_is_scored_and_ends_the_evaluator(run_dir):
    _snapshot(run_dir, "final.safetensors", 650, final=True)
    assert _evaluate(run_dir) == 0
    [line] = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert line["final"] and line["updates"] == 7 and 0 <= line["test_acc"] <= 1
