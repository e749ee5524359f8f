"""Reports: overlaid plots of recorded run folders and report.md, from folders the tests fabricate."""

import pytest

from launch.plots import plot_run, uplink_mib_at
from launch.report import main, write_report
from launch.tables import FIGURES, fmt, fmt_stat, stat
from tests.runfolders import fake_run

PNG = b"\x89PNG\r\n\x1a\n"


def test_report_overlays_runs_and_tables_their_figures(tmp_path):
    a = fake_run(tmp_path / "run-a", acc_end=0.9, summary={"time_to_acc_s": {"0.9": 0.2}})
    b = fake_run(tmp_path / "run-b", acc_end=0.8, push_bytes=300, staleness=3)
    report = write_report([("A", a), ("B", b)], tmp_path / "out", "A vs B")
    names = [p.name for p in report.plots.paths]
    assert names == ["metrics.png", "staleness.png", "bytes.png", "accuracy_bytes.png"]
    for p in report.plots.paths:
        assert p.parent == tmp_path / "out" and p.read_bytes()[:8] == PNG
    s = report.plots.series
    assert s["metrics"]["test accuracy vs wall time"] == ["A", "B"]
    assert s["metrics"]["test accuracy vs updates"] == ["A", "B"]
    assert s["metrics"]["loss vs wall time"] == ["A test", "A train", "B test", "B train"]
    assert s["staleness"] == {
        "staleness histogram": ["A", "B"],
        "staleness vs wall time": ["A", "B"],
        "applied lr vs wall time": ["A", "B"],
        "staleness histogram per worker": [],
    }  # per worker only for a single run
    assert s["bytes"] == {"uplink vs pushes received": ["A", "B"], "uplink vs wall time": ["A", "B"]}
    assert s["accuracy_bytes"] == {"test accuracy vs uplink": ["A", "B"], "loss vs uplink": ["A test", "B test"]}
    md = report.markdown.read_text().splitlines()
    assert md[0] == "# A vs B"
    assert f"| run | folder | {' | '.join(FIGURES)} |" in md
    assert "| A | [run-a](../run-a) | 0.9 | 0.42 | 0.2 | 20 | 100 | 0.2 | - | - | 21,000 | 1 |" in md
    assert "| B | [run-b](../run-b) | 0.8 | 0.42 | 0.2 | 20 | 100 | - | - | - | 6300 | 3 |" in md
    assert [line for line in md if line.startswith("![")] == [
        "![metrics](metrics.png)",
        "![staleness](staleness.png)",
        "![bytes](bytes.png)",
        "![accuracy_bytes](accuracy_bytes.png)",
    ]


def test_a_run_without_accuracy_draws_only_losses(tmp_path):
    run = fake_run(tmp_path / "lstsq", acc_end=None)
    plots = plot_run(run)
    assert all(p.parent == run / "plots" and p.read_bytes()[:8] == PNG for p in plots.paths)
    assert plots.series["metrics"]["test accuracy vs updates"] == []
    assert plots.series["metrics"]["loss vs updates"] == ["lstsq test", "lstsq train"]
    assert plots.series["accuracy_bytes"] == {"test accuracy vs uplink": [], "loss vs uplink": ["lstsq test"]}


def test_grad_norm_is_drawn_only_for_runs_that_record_it(tmp_path):
    plain = fake_run(tmp_path / "plain")
    assert "grad_norm" not in plot_run(plain).series and not (plain / "plots" / "grad_norm.png").exists()
    ef = fake_run(tmp_path / "ef", grad_norm=True)
    report = write_report([("plain", plain), ("ef21", ef)], tmp_path / "out")
    assert report.plots.paths[-1].name == "grad_norm.png" and report.plots.paths[-1].read_bytes()[:8] == PNG
    assert report.plots.series["grad_norm"] == {"grad norm vs updates": ["ef21"], "grad norm vs uplink": ["ef21"]}
    assert "![grad_norm](grad_norm.png)" in report.markdown.read_text()


def test_uplink_at_a_version_counts_every_push_received_until_it_was_made():
    upd = {"version": [1, 1, 2, 3], "bytes": [100, 50, 100, 100], "applied": [1, 0, 1, 1]}  # a rejected push
    assert uplink_mib_at(upd, [0, 1, 2, 3, 9]) == [x / 2**20 for x in (0, 100, 250, 350, 350)]


def test_statistics_use_the_sample_std_and_count_missing_values():
    s = stat([1.0, 2.0, None, 4.0])
    assert s.n == 3 and s.mean == pytest.approx(7 / 3)
    assert s.std == pytest.approx((((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2) ** 0.5)
    assert stat([5.0]).std is None and stat([None]).mean is None
    assert fmt_stat(stat([1.0, 3.0]), 3) == "2 ± 1.414 (2/3)"
    assert fmt(115946466) == "115,946,466" and fmt(0.97214) == "0.9721" and fmt(None) == "-"


def test_command_line_report_with_labels(tmp_path, capsys):
    a, b = fake_run(tmp_path / "a"), fake_run(tmp_path / "b")
    assert main([str(a), str(b), "--out", str(tmp_path / "rep"), "--labels", "async", "sync"]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| async | [a](../a) |" in md and "| sync | [b](../b) |" in md
    assert (tmp_path / "rep" / "accuracy_bytes.png").read_bytes()[:8] == PNG
    assert "report: " in capsys.readouterr().out


def test_command_line_refuses_bad_arguments(tmp_path, capsys):
    a, b = fake_run(tmp_path / "a"), fake_run(tmp_path / "b")
    (tmp_path / "empty").mkdir()
    out = ["--out", str(tmp_path / "rep")]
    assert main([str(a), str(b), *out, "--labels", "one"]) == 2
    assert "--labels gives 1 label for 2 runs" in capsys.readouterr().err
    assert main([str(a), str(tmp_path / "empty"), *out]) == 2
    assert f"not a run folder (no summary.json or metrics.jsonl): {tmp_path / 'empty'}" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists()


def test_single_run_plots_staleness_per_worker(tmp_path):
    from launch.plots import plot_run

    run = fake_run(tmp_path / "run", acc_end=0.9, push_bytes=100, staleness=2)
    s = plot_run(run).series["staleness"]
    workers = s["staleness histogram per worker"]
    assert workers and all(label.startswith("worker ") for label in workers)
