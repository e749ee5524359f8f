"""python -m launch.summary on folders it must not trust: a launcher's run folder, a corrupt server summary, a
shard that left none, an evaluator that has not scored the final snapshot (launch/summary.py)."""

from __future__ import annotations

import json
from pathlib import Path

from launch import summary
from protocol.config.loader import load_experiment, resolved_yaml
from protocol.runfolder.records import ServerSummary, write_record

ROOT = Path(__file__).resolve().parent.parent


def _run(tmp_path: Path, *overrides: str) -> Path:
    """A hand-run folder as the server and the evaluator leave it (no plots: matplotlib is not the point)."""
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_experiment(str(ROOT / "configs/tiny.yaml"), ["run.plots=false", *overrides])
    (run / "config.yaml").write_text(resolved_yaml(cfg))
    write_record(run / "server_summary.json", ServerSummary(updates=300, wall_s=1.0, stop_reason="max_updates"))
    final = {"wall_s": 1.0, "updates": 300, "test_acc": 0.9, "test_loss": 0.3, "final": True}
    (run / "metrics.jsonl").write_text(json.dumps(final) + "\n")
    return run


def test_a_launchers_run_folder_is_left_as_it_is(tmp_path, capsys):
    """Its summary.json (processes, status failed) was rewritten as status ok with no processes."""
    run = _run(tmp_path)
    (run / "processes.csv").write_text("wall_s,process,pid,cpu_percent,rss_mb\n")
    (run / "summary.json").write_text('{"status": "failed", "processes": {"server": {}}}')
    assert summary.main([str(run)]) == 2
    assert "python -m launch" in capsys.readouterr().err
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"


def test_a_truncated_server_summary_is_named_not_read_as_zero_updates(tmp_path, capsys):
    """It was read as an empty record: 'done: 0 updates', status ok."""
    run = _run(tmp_path)
    (run / "server_summary.json").write_text('{"updates": 30')
    assert summary.main([str(run)]) == 2
    assert "server_summary.json cannot be read" in capsys.readouterr().err
    assert not (run / "summary.json").exists()


def test_a_shard_without_a_summary_fails_the_run_until_it_has_one(tmp_path, capsys):
    """Shard 1 killed (or still running): status ok; and the merged server_summary.json of that first call
    was kept by every later one, after the shard had ended."""
    run = _run(tmp_path, "server.shards=2")
    for s in (0, 1):
        (run / f"shard-{s}").mkdir()
    write_record(run / "shard-0" / "server_summary.json", ServerSummary(updates=300, wall_s=1.0))
    assert summary.main([str(run)]) == 1
    assert "shard-1/server_summary.json" in capsys.readouterr().err
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    write_record(run / "shard-1" / "server_summary.json", ServerSummary(updates=299, wall_s=1.0))
    assert summary.main([str(run)]) == 0
    done = json.loads((run / "summary.json").read_text())
    assert done["status"] == "ok" and done["updates"] == 299 and done["shard_spread"] == 1


def test_an_evaluation_that_is_not_the_final_one_is_said(tmp_path, capsys):
    run = _run(tmp_path)
    (run / "metrics.jsonl").write_text(json.dumps({"wall_s": 0.5, "updates": 120, "test_acc": 0.7}) + "\n")
    assert summary.main([str(run)]) == 0
    assert "not scored the final snapshot (yet): test_acc is that of update 120" in capsys.readouterr().err


def test_twice_gives_the_same_line(tmp_path, capsys):
    run = _run(tmp_path)
    assert summary.main([str(run)]) == 0
    first = capsys.readouterr().out
    assert summary.main([str(run)]) == 0 and capsys.readouterr().out == first
