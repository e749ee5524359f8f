"""The reproduction scripts (experiments/): where a study writes its report by default (quick tier), and
smoke tests (slow): each study runs in --quick mode through the real runtime into tmp_path, with the
default report folder, and must write its markdown report and the images the report shows into its
experiment folder there, leaving the committed reports in docs/results untouched."""

import importlib
import re
from pathlib import Path

import pytest

from experiments.common.report import report_folder

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ("artificial_delay", "async_vs_sync", "ef21_logreg", "noise_floor", "stability_edge", "fashion_mnist")
# each study's entry point is its package's __main__ (python -m experiments.NAME)
artificial_delay, async_vs_sync, ef21_logreg, noise_floor, stability_edge, fashion_mnist = (
    importlib.import_module(f"experiments.{name}.__main__") for name in STUDIES
)
FASHION = Path("/usr/share/datasets/fashion-mnist")


def _results_state() -> dict:
    """Every file under docs/results with its size and modification time (a rewrite changes the time)."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in (ROOT / "docs" / "results").rglob("*") if p.is_file()}


@pytest.fixture
def results_untouched():
    """The test's study runs must neither change nor add a file under docs/results."""
    before = _results_state()
    assert before, "docs/results holds the committed reports"
    yield
    assert _results_state() == before, "a study run with default arguments wrote into docs/results"


@pytest.mark.parametrize("study", STUDIES)
def test_the_report_goes_into_the_experiment_folder_unless_out_says_otherwise(study, tmp_path):
    main = importlib.import_module(f"experiments.{study}.__main__")
    base = tmp_path / "runs" / f"{study}-20260101-000000"
    for argv in ([], ["--quick"], ["--quick", "--report-only", str(base)]):
        assert report_folder(main.parser().parse_args(argv).out, base) == base, argv
    chosen = main.parser().parse_args(["--quick", "--out", "docs/results"]).out
    assert report_folder(chosen, base) == Path("docs/results")


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
def test_artificial_delay_quick_writes_report_and_plots(tmp_path, results_untouched):
    assert artificial_delay.main(["--quick", "--runs", str(tmp_path / "runs")]) == 0
    (base,) = (tmp_path / "runs").glob("artificial_delay-*")
    _check_report(
        base,
        "artificial_delay.md",
        "artificial_delay_",
        ["## Torch form", "## Paper form", "## Measured staleness", "Staleness uniform on 0..D-1"],
    )
    assert len(list(base.glob("torch/0*"))) == 2  # one run folder per D


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_stability_edge_quick_writes_report_and_plots(tmp_path, results_untouched):
    assert stability_edge.main(["--quick", "--runs", str(tmp_path / "runs")]) == 0
    (base,) = (tmp_path / "runs").glob("stability_edge-*")
    _check_report(
        base,
        "stability_edge.md",
        "stability_edge_",
        ["## (a) Stable lr against tau", "## (c) Momentum", "## (b) Digits MLP", "lr x lambda"],
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_noise_floor_quick_writes_report_and_plots(tmp_path, results_untouched):
    runs = tmp_path / "runs"
    assert noise_floor.main(["--quick", "--runs", str(runs)]) == 0
    sections = [
        "## Setup",
        "## Setting d100",
        "### The claims, setting d100",
        "## Plateau against n",
        "## Run details and cross-checks",
        "## What the numbers say",
    ]
    (base,) = runs.glob("noise_floor-*")
    _check_report(base, "noise_floor.md", "noise_floor_", sections)
    folders = sorted(base.glob("d100-n3-*/0*"))
    assert len(folders) == 2  # EF21-SGD and EF21-SGDM with n = 3 workers...
    assert all((f / "logs" / "workers1-2.log").exists() for f in folders)  # ...two of them in one process
    out = tmp_path / "out"
    assert noise_floor.main(["--quick", "--out", str(out), "--report-only", str(base)]) == 0
    _check_report(out, "noise_floor.md", "noise_floor_", sections)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ef21_logreg_quick_writes_report_and_plots(tmp_path, results_untouched):
    assert ef21_logreg.main(["--quick", "--runs", str(tmp_path / "runs")]) == 0
    (base,) = (tmp_path / "runs").glob("ef21_logreg-*")
    _check_report(
        base,
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
    assert len(list(base.glob("b*/0*"))) == 8  # one run per (batch, method)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_async_vs_sync_quick_writes_report_and_plots(tmp_path, results_untouched):
    assert async_vs_sync.main(["--quick", "--runs", str(tmp_path / "runs")]) == 0
    (base,) = (tmp_path / "runs").glob("async_vs_sync-quick-*")
    _check_report(
        base,
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
    straggler = sorted(p.name for p in (base / "straggler").iterdir())
    assert [name.split("-")[1] for name in straggler] == ["async", "sync"]  # interleaved, async first
    assert len(list((base / "scaling-0").glob("*/summary.json"))) == 4  # N = 1, 2 x both modes
    # the report is rebuilt from the folder alone, and a second invocation into it runs nothing again
    assert async_vs_sync.main(["--report-only", str(base), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "async_vs_sync.md").exists()
    assert async_vs_sync.main(["--quick", "--into", str(base), "--batches", "straggler"]) == 0
    assert len((base / "commands.txt").read_text().splitlines()) == len(list(base.glob("*/*/summary.json")))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_quick_writes_report_and_plots(tmp_path, results_untouched):
    assert fashion_mnist.main(["--quick", "--runs", str(tmp_path / "runs")]) == 0
    (base,) = (tmp_path / "runs").glob("fashion_mnist-quick-*")
    sections = [
        "## Expectations against the measurements",
        "## The runs",
        "## The wide CNN",
        "## Against the published",
    ]
    text = _fashion_report(base, sections)
    assert "mode=sync" in text and "compression.method=ef21-sgdm" in text  # the wide EF21 run's overrides
    assert "python -m launch configs/fashion_mnist.yaml" in text  # the headline run's own command
    runs = sorted(p.relative_to(base).as_posix() for p in base.glob("*/*/summary.json"))
    assert [r.removesuffix("/summary.json") for r in runs] == [
        "dense/01-apam-dense",
        "ef21/01-apam-ef21-sgdm",
        "ef21/02-sgd-ef21-sgdm",
        "straggler/01-async",
        "straggler/02-sync",
        "wide/01-dense",
        "wide/02-ef21-sgdm",
    ]
    # the report is rebuilt from the folder alone, and a second invocation into it runs nothing again
    assert fashion_mnist.main(["--report-only", str(base), "--out", str(tmp_path / "again")]) == 0
    _fashion_report(tmp_path / "again", sections)
    assert fashion_mnist.main(["--quick", "--into", str(base), "--batches", "dense"]) == 0
    assert len((base / "commands.txt").read_text().splitlines()) == len(runs)


def _fashion_report(out: Path, sections: list[str]) -> str:
    text = (out / "fashion_mnist.md").read_text()
    assert all(section in text for section in sections)
    shown = re.findall(r"!\[[^\]]*\]\((img/[^)]+\.png)\)", text)
    assert sorted(shown) == [f"img/fashion_mnist_{n}.png" for n in ("bytes", "small", "straggler", "wide")]
    assert all(1000 < (out / name).stat().st_size < 200_000 for name in shown)
    return text


def test_the_data_set_sizes_a_report_states_come_from_the_run_config(tmp_path):
    from experiments.common.sweeps import data_sizes

    (tmp_path / "config.yaml").write_text((ROOT / "experiments" / "async_vs_sync" / "config.yaml").read_text())
    assert data_sizes(tmp_path) == (1438, 359)  # the digits' fixed 80/20 split


def test_ef21_logreg_setup_computes_shards_and_index_bytes():
    from experiments.ef21_logreg.report import _shard, index_coding

    assert _shard(1438, 10) == "143-144" and _shard(1440, 10) == "144"
    assert index_coding("auto", 6, 650) == ("delta16", 12)  # 2 bytes per index beat int32 and a 82-byte bitmap
    assert index_coding("auto", 600, 650) == ("bitmap", 82)
    assert index_coding("delta16", 6, 70_000) == ("int32", 24)  # a gap delta16 cannot code
