"""Smoke tests of the reproduction scripts (experiments/): each runs in --quick mode through the real runtime
into tmp_path and must write its markdown report and the images the report shows."""

import importlib
import re

import pytest

# each study's entry point is its package's __main__ (python -m experiments.NAME)
artificial_delay, async_vs_sync, ef21_logreg, noise_floor, stability_edge = (
    importlib.import_module(f"experiments.{name}.__main__")
    for name in ("artificial_delay", "async_vs_sync", "ef21_logreg", "noise_floor", "stability_edge")
)


def _check_report(out, report: str, prefix: str, sections: list[str]) -> None:
    text = (out / report).read_text()
    for section in sections:
        assert section in text, section
    shown = re.findall(r"!\[[^\]]*\]\((img/[^)]+\.png)\)", text)
    assert shown and all(name.startswith(f"img/{prefix}") for name in shown)
    for name in shown:
        size = (out / name).stat().st_size
        assert 1000 < size < 200_000, (name, size)  # drawn, and small enough to commit
    assert "python -m launch experiments/" in text  # the exact commands (with the study's own config) are in the report


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_artificial_delay_quick_writes_report_and_plots(tmp_path):
    out = tmp_path / "out"
    assert artificial_delay.main(["--quick", "--out", str(out), "--runs", str(tmp_path / "runs")]) == 0
    _check_report(
        out,
        "artificial_delay.md",
        "artificial_delay_",
        ["## Torch form", "## Paper form", "## Measured staleness", "Staleness uniform on 0..D-1"],
    )
    assert len(list((tmp_path / "runs").glob("artificial_delay-*/torch/0*"))) == 2  # one run folder per D


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stability_edge_quick_writes_report_and_plots(tmp_path):
    out = tmp_path / "out"
    assert stability_edge.main(["--quick", "--out", str(out), "--runs", str(tmp_path / "runs")]) == 0
    _check_report(
        out,
        "stability_edge.md",
        "stability_edge_",
        ["## (a) Stable lr against tau", "## (c) Momentum", "## (b) Digits MLP", "lr x lambda"],
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_noise_floor_quick_writes_report_and_plots(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    assert noise_floor.main(["--quick", "--out", str(out), "--runs", str(runs)]) == 0
    sections = [
        "## Setup",
        "## Setting d100",
        "### The claims, setting d100",
        "## Plateau against n",
        "## Run details and cross-checks",
        "## What the numbers say",
    ]
    _check_report(out, "noise_floor.md", "noise_floor_", sections)
    folders = sorted(runs.glob("noise_floor-*/d100-n3-*/0*"))
    assert len(folders) == 2  # EF21-SGD and EF21-SGDM with n = 3 workers...
    assert all((f / "logs" / "workers1-2.log").exists() for f in folders)  # ...two of them in one process
    (out / "noise_floor.md").unlink()
    base = next(runs.glob("noise_floor-*"))
    assert noise_floor.main(["--quick", "--out", str(out), "--report-only", str(base)]) == 0
    _check_report(out, "noise_floor.md", "noise_floor_", sections)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ef21_logreg_quick_writes_report_and_plots(tmp_path):
    out = tmp_path / "out"
    assert ef21_logreg.main(["--quick", "--out", str(out), "--runs", str(tmp_path / "runs")]) == 0
    _check_report(
        out,
        "ef21_logreg.md",
        "ef21_logreg_",
        [
            "## Tuning (seed 0)",
            "### Batch 1",
            "### Batch 128",
            "## Expectations against the measurements",
            "B = 1: EF21-SGDM below EF21-SGD",
            "B = 128: EF21-SGD2M below EF21-SGD",
        ],
    )
    assert len(list((tmp_path / "runs").glob("ef21_logreg-*/b*/0*"))) == 8  # one run per (batch, method)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_async_vs_sync_quick_writes_report_and_plots(tmp_path):
    out = tmp_path / "out"
    assert async_vs_sync.main(["--quick", "--out", str(out), "--runs", str(tmp_path / "runs")]) == 0
    _check_report(
        out,
        "async_vs_sync.md",
        "async_vs_sync_",
        [
            "## Expectations against the measurements",
            "## Straggler: the runs",
            "## Learning rate grid",
            "## Scaling with the number of workers",
            "## What happened, and why",
            "mode=sync",
        ],
    )
    (base,) = (tmp_path / "runs").glob("async_vs_sync-quick-*")
    straggler = sorted(p.name for p in (base / "straggler").iterdir())
    assert [name.split("-")[1] for name in straggler] == ["async", "sync"]  # interleaved, async first
    assert len(list((base / "scaling-0").glob("*/summary.json"))) == 4  # N = 1, 2 x both modes
    # the report is rebuilt from the folder alone, and a second invocation into it runs nothing again
    assert async_vs_sync.main(["--report-only", str(base), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "async_vs_sync.md").exists()
    assert async_vs_sync.main(["--quick", "--into", str(base), "--batches", "straggler", "--out", str(out)]) == 0
    assert len((base / "commands.txt").read_text().splitlines()) == len(list(base.glob("*/*/summary.json")))
