"""Sweeps: grid expansion and validation, running points (with a stand-in runner), tables, and one real sweep."""

import csv
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from launch.run import RunFailed
from launch.sweep import _blame, expand_sweep, grid, sweep_keys
from launch.sweep_run import report_plan, run_sweep, write_sweep_reports
from launch.sweep_tables import PointResult, group_results
from protocol.config.loader import load_experiment
from protocol.config.typed import to_dict
from protocol.errors import ConfigError
from protocol.runfolder.records import RunSummary
from tests.helpers import make_config
from tests.runfolders import fake_run

ROOT = Path(__file__).resolve().parent.parent


def test_grid_follows_the_written_order_with_seed_fastest():
    sweep = {"seed": [0, 1], "workers": [1, 2], "optimizer.lr": [0.1, 0.2]}
    assert sweep_keys(sweep) == ["workers", "optimizer.lr", "seed"]
    combos = grid(sweep)
    assert [tuple(v for _, v in c) for c in combos] == [
        (1, 0.1, 0),
        (1, 0.1, 1),
        (1, 0.2, 0),
        (1, 0.2, 1),
        (2, 0.1, 0),
        (2, 0.1, 1),
        (2, 0.2, 0),
        (2, 0.2, 1),
    ]
    assert all([k for k, _ in c] == ["workers", "optimizer.lr", "seed"] for c in combos)
    assert grid({"mode": ["async"]}) == [(("mode", "async"),)]


def test_points_get_their_values_at_dotted_paths_and_an_empty_sweep():
    cfg = make_config(workers=4, sweep={"worker.slowdown": [[1, 4], []], "optimizer.lr": ["1e-3"], "seed": [3, 5]})
    points = expand_sweep(cfg)
    assert [p.index for p in points] == [1, 2, 3, 4]
    p = points[1]
    assert p.cfg.worker.slowdown == (1.0, 4.0) and p.cfg.optimizer.lr == 1e-3 and p.cfg.seed == 5
    assert p.cfg.workers == 4 and p.cfg.sweep == {} and points[2].cfg.worker.slowdown == ()
    assert p.label == "worker.slowdown=[1, 4] optimizer.lr=1e-3 seed=5"
    assert p.folder == "002-worker.slowdown=1x4_optimizer.lr=1e-3_seed=5"
    assert points[2].folder == "003-worker.slowdown=none_optimizer.lr=1e-3_seed=3"
    assert p.group == (("worker.slowdown", [1, 4]), ("optimizer.lr", "1e-3"))
    assert to_dict(cfg)["sweep"]["seed"] == [3, 5]  # the base keeps its sweep


@pytest.mark.parametrize(
    "sweep,key,message",
    [
        ({"optimizer.lrr": [0.1]}, "sweep.optimizer.lrr", "is not a setting of the config"),
        ({"task": [{"model": "mlp"}]}, "sweep.task", "sections cannot be swept"),
        ({"sweep": [{}]}, "sweep.sweep", "is not a setting"),
        ({"optimizer.betas.0": [0.5]}, "sweep.optimizer.betas.0", "is not a setting"),
        ({"workers": []}, "sweep.workers", "needs at least one value"),
        ({"workers": 3}, "sweep.workers", "expected a list"),
    ],
)
def test_sweep_keys_must_name_settings_and_values_be_lists(sweep, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        make_config(sweep=sweep)
    assert info.value.key == key


@pytest.mark.parametrize(
    "sweep,key,message",
    [
        (
            {"optimizer.lr": [0.1, -1], "seed": [0, 1]},
            "sweep.optimizer.lr",
            "value -1 (point optimizer.lr=-1 seed=0): must be > 0",
        ),
        ({"mode": ["async", "bogus"]}, "sweep.mode", "value bogus: must be one of"),
        ({"task.batch_size": [8, -1]}, "sweep.task.batch_size", "value -1: must be >= 0"),
        ({"optimizer.betas": [[0.9]]}, "sweep.optimizer.betas", "value [0.9]: expected a list of 2 values"),
        # the error is about worker.slowdown (not swept), caused by the workers value even alone
        ({"workers": [2, 1]}, "sweep.workers", "value 1: config key 'worker.slowdown': has more entries than workers"),
    ],
)
def test_every_point_is_validated_before_running_naming_key_and_value(sweep, key, message):
    cfg = make_config(workers=2, worker={"slowdown": [1, 2]}, sweep=sweep)
    with pytest.raises(ConfigError) as info:
        expand_sweep(cfg)
    assert info.value.key == key and message in info.value.message, info.value


def test_a_combination_only_invalid_together_names_the_point():
    base = to_dict(make_config())
    err = _blame(base, ConfigError("server.endpoint", "clash"), (("workers", 2), ("seed", 1)))
    assert err.key == "sweep" and err.message == "point workers=2 seed=1: config key 'server.endpoint': clash"


def test_sweeping_data_files_checks_each_one_before_running(tmp_path):
    (tmp_path / "good").write_text("1 1:1\n-1 2:1\n")
    cfg = make_config(
        task={"dataset": "libsvm", "path": str(tmp_path / "good"), "model": "logreg"},
        sweep={"task.path": [str(tmp_path / "good"), str(tmp_path / "missing")]},
    )
    with pytest.raises(ConfigError, match="missing does not exist") as info:
        expand_sweep(cfg)
    assert info.value.key == "sweep.task.path"


def _stand_in(cfg, run_dir, quiet):
    """A runner that fails one point and otherwise reports figures computed from the point's values."""
    if cfg.optimizer.lr == 0.2 and cfg.seed == 2:
        raise RunFailed("worker1 (pid 7) exited with code 1 during the run; last lines:\nboom")
    return RunSummary(
        final_test_acc=cfg.optimizer.lr + cfg.seed / 100,
        final_test_loss=1.0,
        wall_s=2.0 + cfg.seed,
        updates=100,
        updates_per_s=50.0,
        uplink_bytes=1000 * cfg.workers,
        staleness_mean=1.5,
        time_to_acc_s={"0.9": 1.0 if cfg.seed else None, "0.95": None, "0.97": None},
    )


def test_sweep_runs_every_point_records_failures_and_tables_over_seeds(tmp_path, capsys):
    cfg = make_config(run={"plots": False}, sweep={"optimizer.lr": [0.1, 0.2], "seed": [0, 1, 2]})
    points = expand_sweep(cfg)
    results = run_sweep(cfg, points, tmp_path, quiet=True, runner=_stand_in)
    out = capsys.readouterr().out
    assert "[1/6] optimizer.lr=0.1 seed=0" in out and "[6/6] optimizer.lr=0.2 seed=2\n  failed: worker1" in out
    assert [r.ok for r in results] == [True] * 5 + [False]
    for p in points:
        assert "sweep: {}" in (tmp_path / p.folder / "config.yaml").read_text()
    rows = list(csv.DictReader(open(tmp_path / "sweep.csv")))
    assert [r["status"] for r in rows] == ["ok"] * 5 + ["failed"] and rows[5]["error"].endswith("boom")
    assert rows[4]["optimizer.lr"] == "0.2" and rows[4]["seed"] == "1"
    assert float(rows[4]["final_test_acc"]) == pytest.approx(0.21)
    groups = list(csv.DictReader(open(tmp_path / "sweep_groups.csv")))
    assert [(g["optimizer.lr"], g["points"], g["failed"]) for g in groups] == [("0.1", "3", "0"), ("0.2", "3", "1")]
    accs = [0.1, 0.11, 0.12]
    assert float(groups[0]["final_test_acc_mean"]) == pytest.approx(statistics.mean(accs))
    assert float(groups[0]["final_test_acc_std"]) == pytest.approx(statistics.stdev(accs))
    assert groups[1]["final_test_acc_n"] == "2" and float(groups[1]["final_test_acc_std"]) == pytest.approx(
        statistics.stdev([0.2, 0.21])
    )
    assert groups[0]["time_to_acc_0.9_n"] == "2" and groups[0]["time_to_acc_0.95_mean"] == ""
    md = (tmp_path / "sweep.md").read_text()
    assert "6 of 6 points run, 1 failed; swept: optimizer.lr, seed." in md
    assert (
        "| 0.1 | 3 | 0.11 ± 0.01 | 1 ± 0 | 3 ± 1 | 100 ± 0 | 50 ± 0 | 1 ± 0 (2/3) | - (0/3) | - (0/3) "
        "| 2000 ± 0 | 1.5 ± 0 |"
    ) in md
    assert "| 0.2 | 2 (1 failed) | 0.205 ± 0.007071 |" in md
    assert "6. `006-optimizer.lr=0.2_seed=2` (optimizer.lr=0.2 seed=2):" in md and "boom" in md
    assert "## Plots" not in md and not (tmp_path / "report").exists()  # run.plots: false


def test_points_that_differ_only_in_seed_form_one_group():
    cfg = make_config(sweep={"seed": [0, 1], "workers": [1, 2]})
    groups = group_results([PointResult(p, Path("."), RunSummary()) for p in expand_sweep(cfg)])
    assert [(g.label, len(g.results)) for g in groups] == [("workers=1", 2), ("workers=2", 2)]
    seeds_only = expand_sweep(make_config(sweep={"seed": [0, 1]}))
    only_seeds = group_results([PointResult(p, Path("."), RunSummary()) for p in seeds_only])
    assert [(g.label, len(g.results)) for g in only_seeds] == [("all points", 2)]


def test_large_sweeps_get_one_overlay_per_group(tmp_path, monkeypatch):
    monkeypatch.setattr("launch.sweep_run.SMALL_SWEEP", 2)  # keeps the test small: 3 points count as many
    points = expand_sweep(make_config(sweep={"optimizer.lr": [0.1, 0.2], "seed": [0, 1]}))
    folders = [tmp_path / p.folder for p in points]
    results = [PointResult(p, folder, RunSummary()) for p, folder in zip(points, folders)]
    results[1].error = "failed"  # failed points are left out of the plots
    report = tmp_path / "report"
    assert report_plan(tmp_path, results) == [
        ("optimizer.lr=0.1", [("seed=0", folders[0])], report / "001-optimizer.lr=0.1"),
        ("optimizer.lr=0.2", [("seed=0", folders[2]), ("seed=1", folders[3])], report / "002-optimizer.lr=0.2"),
    ]
    monkeypatch.setattr("launch.sweep_run.SMALL_SWEEP", 3)
    assert report_plan(tmp_path, results) == [
        ("all points", [(points[i].label, folders[i]) for i in (0, 2, 3)], tmp_path / "report")
    ]


def test_sweep_report_overlays_the_points(tmp_path):
    points = expand_sweep(make_config(sweep={"seed": [0, 1]}))
    results = [PointResult(p, fake_run(tmp_path / p.folder, acc_end=0.5 + p.index / 10), RunSummary()) for p in points]
    [(title, md)] = write_sweep_reports(tmp_path, results)
    assert title == "all points" and md == tmp_path / "report" / "report.md"
    rows = [line.split(" | ")[:3] for line in md.read_text().splitlines() if line.startswith("| seed=")]
    assert rows == [
        ["| seed=0", "[001-seed=0](../001-seed=0)", "0.6"],
        ["| seed=1", "[002-seed=1](../002-seed=1)", "0.7"],
    ]
    assert (md.parent / "accuracy_bytes.png").read_bytes()[:4] == b"\x89PNG"


def test_launcher_refuses_a_bad_sweep_value_before_running_anything(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch",
            "configs/tiny.yaml",
            "sweep.optimizer.lr=[0.01, -1]",
            "--run-dir",
            str(tmp_path / "sweep"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 2, out.stderr
    assert "error: config key 'sweep.optimizer.lr': value -1: must be > 0" in out.stderr
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_two_point_sweep_of_tiny_through_the_launcher(tmp_path):
    sweep_dir = tmp_path / "sweep"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch",
            "configs/tiny.yaml",
            "sweep.workers=[1, 2]",
            "run.max_updates=100",
            "--run-dir",
            str(sweep_dir),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    assert "[1/2] workers=1" in out.stdout and "[2/2] workers=2" in out.stdout
    for i, folder in enumerate(["001-workers=1", "002-workers=2"], 1):
        point = load_experiment(sweep_dir / folder / "config.yaml")
        assert point.workers == i and point.sweep == {} and point.run.max_updates == 100
        for name in ("summary.json", "updates.csv", "metrics.jsonl", "plots/metrics.png"):
            assert (sweep_dir / folder / name).exists(), (folder, name)
    assert load_experiment(sweep_dir / "config.yaml").sweep == {"workers": [1, 2]}
    rows = list(csv.DictReader(open(sweep_dir / "sweep.csv")))
    assert [(r["workers"], r["status"], r["updates"]) for r in rows] == [("1", "ok", "100"), ("2", "ok", "100")]
    assert all(float(r["final_test_acc"]) > 0.5 for r in rows)
    assert "[all points](report/report.md)" in (sweep_dir / "sweep.md").read_text()
    for name in ("report.md", "metrics.png", "staleness.png", "bytes.png", "accuracy_bytes.png"):
        assert (sweep_dir / "report" / name).exists(), name
