"""Smoke tests of the reproduction scripts (experiments/): each runs in --quick mode through the real runtime
into tmp_path and must write its markdown report and the images the report shows."""

import re

import pytest

from experiments import artificial_delay, async_vs_sync, stability_edge


def _check_report(out, report: str, prefix: str, sections: list[str]) -> None:
    text = (out / report).read_text()
    for section in sections:
        assert section in text, section
    shown = re.findall(r"!\[[^\]]*\]\((img/[^)]+\.png)\)", text)
    assert shown and all(name.startswith(f"img/{prefix}") for name in shown)
    for name in shown:
        size = (out / name).stat().st_size
        assert 1000 < size < 200_000, (name, size)  # drawn, and small enough to commit
    assert "python -m launch configs/" in text  # the exact commands are in the report


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_artificial_delay_quick_writes_report_and_plots(tmp_path):
    out = tmp_path / "out"
    assert artificial_delay.main(["--quick", "--out", str(out), "--runs", str(tmp_path / "runs")]) == 0
    _check_report(out, "artificial_delay.md", "artificial_delay_",
                  ["## Torch form", "## Paper form", "## Measured staleness", "Staleness uniform on 0..D-1"])
    assert len(list((tmp_path / "runs").glob("artificial_delay-*/torch/0*"))) == 2  # one run folder per D


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stability_edge_quick_writes_report_and_plots(tmp_path):
    out = tmp_path / "out"
    assert stability_edge.main(["--quick", "--out", str(out), "--runs", str(tmp_path / "runs")]) == 0
    _check_report(out, "stability_edge.md", "stability_edge_",
                  ["## (a) Stable lr against tau", "## (c) Momentum", "## (b) Digits MLP", "lr x lambda"])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_async_vs_sync_quick_writes_report_and_plots(tmp_path):
    out = tmp_path / "out"
    assert async_vs_sync.main(["--quick", "--out", str(out), "--runs", str(tmp_path / "runs")]) == 0
    _check_report(out, "async_vs_sync.md", "async_vs_sync_",
                  ["## Expectations against the measurements", "## Straggler: the runs", "## Learning rate grid",
                   "## Scaling with the number of workers", "## What happened, and why", "mode=sync"])
    (base,) = (tmp_path / "runs").glob("async_vs_sync-quick-*")
    straggler = sorted(p.name for p in (base / "straggler").iterdir())
    assert [name.split("-")[1] for name in straggler] == ["async", "sync"]  # interleaved, async first
    assert len(list((base / "scaling-0").glob("*/summary.json"))) == 4  # N = 1, 2 x both modes
    # the report is rebuilt from the folder alone, and a second invocation into it runs nothing again
    assert async_vs_sync.main(["--report-only", str(base), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "async_vs_sync.md").exists()
    assert async_vs_sync.main(["--quick", "--into", str(base), "--batches", "straggler", "--out", str(out)]) == 0
    assert len((base / "commands.txt").read_text().splitlines()) == len(list(base.glob("*/*/summary.json")))
