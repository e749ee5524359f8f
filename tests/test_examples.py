"""The examples/ a newcomer copies: each YAML is valid and passes the preflight, the factories read their data
as documented, and (slow tier) each example trains through `python -m launch` into a complete run folder
whose model/model.safetensors loads as examples/README.md says. The BatchNorm example's run checks that
snapshots serve the mean of the running statistics the workers sent."""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from examples import batchnorm_frozen, fashion_cnn, tabular_csv
from examples.data import make_blobs
from launch.__main__ import main
from launch.preflight import check_model, preflight
from protocol.config.loader import load_experiment
from protocol.runfolder.snapshot import read_snapshot
from worker.tasks import Task
from worker.tasks.data import FASHION_MEAN, FASHION_STD, _mnist

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ["fashion_cnn", "tabular_csv", "batchnorm_frozen"]
FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")


def _yaml(name: str) -> Path:
    return ROOT / "examples" / f"{name}.yaml"


def _params(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# -- quick: configs, parameter counts, data ---------------------------------------------------------------
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_config_is_valid_commented_and_passes_the_preflight(name, monkeypatch):
    monkeypatch.chdir(ROOT)  # the factory paths are relative to the repository root, as the README says
    if name == "fashion_cnn" and not FASHION.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    path = _yaml(name)
    for n, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and ":" in stripped and not stripped.endswith(":"):
            assert "#" in line, f"{path.name}:{n} has no comment: {line!r}"
    cfg = load_experiment(path)
    assert cfg.task.factory == f"examples/{name}.py:build"
    preflight(cfg, cuda_devices=0, memory_bytes=1 << 40)  # imports and calls the factory


@needs_fashion
def test_parameter_counts_are_the_documented_ones():
    readme = (ROOT / "examples" / "README.md").read_text()
    counts = {
        "fashion_cnn": _params(fashion_cnn.FashionCNN()),
        "tabular_csv": _params(tabular_csv.build(SimpleNamespace(args={})).model),
        "batchnorm_frozen": _params(batchnorm_frozen.DigitsNet()),
    }
    assert counts == {"fashion_cnn": 55386, "tabular_csv": 291, "batchnorm_frozen": 9994}
    assert _params(batchnorm_frozen.build(SimpleNamespace(args={})).model, trainable_only=True) == 9834
    for n in [*counts.values(), 9834]:
        assert f"{n:,} parameters" in readme or f"{n:,} of the" in readme, n
    assert "55,386 parameters" in _yaml("fashion_cnn").read_text()
    builtin = check_model(load_experiment(ROOT / "configs" / "fashion_mnist.yaml")).total
    assert builtin <= 100_000 and f"{builtin:,} parameters" in (ROOT / "configs" / "fashion_mnist.yaml").read_text()


def test_blobs_csv_is_what_make_blobs_writes(tmp_path):
    make_blobs.write(tmp_path / "blobs.csv")
    shipped = ROOT / "examples" / "data" / "blobs.csv"
    assert (tmp_path / "blobs.csv").read_bytes() == shipped.read_bytes()
    assert shipped.stat().st_size < 50_000


def test_tabular_reads_an_npz_as_the_csv_and_names_a_missing_label_column(tmp_path):
    x, y = tabular_csv.read_table(ROOT / "examples" / "data" / "blobs.csv", "label")
    np.savez(tmp_path / "blobs.npz", x=x, y=y)
    from_csv = tabular_csv.build(SimpleNamespace(args={}))
    from_npz = tabular_csv.build(SimpleNamespace(args={"path": str(tmp_path / "blobs.npz")}))
    for a, b in zip([*from_csv.train, *from_csv.test], [*from_npz.train, *from_npz.test]):
        assert torch.equal(a, b)
    # the model standardises with the training rows' statistics: its first layer sees mean 0, std 1
    standardized = from_csv.model[0](from_csv.train[0])
    assert torch.allclose(standardized.mean(dim=0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(standardized.std(dim=0), torch.ones(5), atol=1e-5)
    with pytest.raises(ValueError, match=r"has no column 'target' \(columns: x0, x1, x2, x3, x4, label\)"):
        tabular_csv.build(SimpleNamespace(args={"label": "target"}))


@needs_fashion
def test_fashion_cnn_reads_the_idx_files_as_the_builtin_task_does():
    x, y = fashion_cnn.load_split(FASHION, "t10k")
    builtin = _mnist(FASHION, image=True, norm=(FASHION_MEAN, FASHION_STD))
    assert torch.equal(y, builtin.y_test) and torch.allclose(x, builtin.x_test, atol=1e-6)


def test_fashion_cnn_without_its_files_stops_the_launch_naming_the_debian_package(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main([str(_yaml("fashion_cnn")), f"task.args.path={tmp_path}", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config key 'task.factory': examples/fashion_cnn.py:build raised FileNotFoundError")
    assert "apt-get install dataset-fashion-mnist" in err and "task.args.path" in err


def test_batchnorm_frozen_takes_a_pretrained_stem_and_does_not_serve_it(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    pretrained = {"stem.0.weight": torch.randn(16, 1, 3, 3), "stem.0.bias": torch.randn(16)}
    save_file(pretrained, str(tmp_path / "pre.safetensors"))
    cfg = load_experiment(_yaml("batchnorm_frozen"), [f"task.args.pretrained={tmp_path}/pre.safetensors"])
    task = Task(cfg)
    stem = task.spec.model.stem[0]
    assert torch.equal(stem.weight, pretrained["stem.0.weight"]) and torch.equal(stem.bias, pretrained["stem.0.bias"])
    served = [e.name for e in task.layout.entries]
    assert "stem.0.weight" not in served and "stem.1.weight" in served and task.net.numel == 9834


# -- slow: each example through the launcher ------------------------------------------------------------------
RUN_SETTINGS = {  # tiny: a few seconds of training each
    "fashion_cnn": ["workers=2", "run.max_updates=40", "run.eval_every_s=60"],  # scored at 0 and at the end
    "tabular_csv": ["workers=2", "run.max_updates=300"],
    "batchnorm_frozen": ["workers=3", "run.max_updates=150"],
}


def _launch(args: list[str], run_dir: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """`python -m launch ARGS --run-dir RUN --quiet` from the repository root; on timeout its whole process
    group (server, workers, evaluator) is killed, so a hung run leaves nothing behind."""
    cmd = [sys.executable, "-m", "launch", *args, "--run-dir", str(run_dir), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"python -m launch still running after {timeout}s:\n{err}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    """The run folder of an example (run once per module, on first use)."""
    runs: dict[str, Path] = {}

    def run(name: str) -> Path:
        if name not in runs:
            if name == "fashion_cnn" and not FASHION.is_dir():
                pytest.skip("Debian's dataset-fashion-mnist is not installed")
            run_dir = tmp_path_factory.mktemp(name) / "run"
            out = _launch([str(_yaml(name)), *RUN_SETTINGS[name]], run_dir)
            assert out.returncode == 0, out.stderr + out.stdout
            runs[name] = run_dir
        return runs[name]

    return run


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_trains_through_the_launcher_into_a_complete_run_folder(name, example_run):
    run = example_run(name)
    for part in ["config.yaml", "metrics.jsonl", "summary.json", "plots/metrics.png", "model/model.safetensors"]:
        assert (run / part).is_file(), part
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = _summary(run)
    updates = int(RUN_SETTINGS[name][1].split("=")[1])
    assert metrics[-1]["final"] and metrics[-1]["updates"] == summary["updates"] == updates
    assert summary["final_test_acc"] == metrics[-1]["test_acc"] > 0.3  # 10 or 3 classes: far above chance
    assert load_experiment(run / "config.yaml").task.factory == f"examples/{name}.py:build"


@pytest.mark.slow
def test_the_readme_snippet_loads_the_fashion_model_and_scores_the_final_accuracy(example_run):
    run = example_run("fashion_cnn")
    readme = (ROOT / "examples" / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S).group(1).replace("runs/<run>", str(run))
    out = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) == pytest.approx(_summary(run)["final_test_acc"], abs=1e-6)  # the full test set


def _buffer_pushes(run: Path, numel: int) -> dict[int, list[tuple[int, bool, bool]]]:
    """Per worker, its pushes in order as (seq, carried buffers, noted by the server). A push that carried
    buffers is at least 4 bytes per buffer value larger than the worker's smallest; the server notes the
    buffers of every push it staged, not of those that arrived after the stop."""
    with open(run / "updates.csv") as f:
        rows = list(csv.DictReader(f))
    pushes: dict[int, list[tuple[int, bool, bool]]] = {}
    for worker in sorted({int(r["worker"]) for r in rows}):
        mine = [r for r in rows if int(r["worker"]) == worker]
        smallest = min(int(r["bytes"]) for r in mine)
        pushes[worker] = sorted(
            (int(r["seq"]), int(r["bytes"]) - smallest >= 4 * numel, r["reason"] != "stopped") for r in mine
        )
    return pushes


@pytest.mark.slow
def test_batchnorm_snapshot_serves_the_mean_of_the_statistics_the_workers_sent(example_run, monkeypatch):
    run = example_run("batchnorm_frozen")
    monkeypatch.chdir(ROOT)
    cfg = load_experiment(run / "config.yaml")
    task = Task(cfg)  # the model every process built (seeded), the same data and per-rank batch streams
    layout = task.net.buffer_layout
    every = cfg.worker.buffers_every
    pushes = _buffer_pushes(run, layout.total)
    assert sorted(pushes) == list(range(cfg.workers))
    # The first BatchNorm follows the frozen conv: its statistics depend only on the batches a worker drew
    # (one per push), not on the parameters it was served, so each worker's can be recomputed here.
    expected = []
    for worker, seen in pushes.items():
        assert [seq for seq, _, _ in seen] == list(range(len(seen)))  # one batch per push, none rejected
        assert [carried for _, carried, _ in seen] == [seq % every == 0 for seq, _, _ in seen]
        last = max(seq for seq, carried, noted in seen if carried and noted)
        stem = copy.deepcopy(task.spec.model.stem)  # initial statistics, train mode
        batches = task.batches(worker, cfg.workers)
        with torch.no_grad():
            for _ in range(last + 1):
                stem(next(batches)[0])
        expected.append({k: v.double() for k, v in stem[1].state_dict().items() if "running" in k or "num" in k})

    _, _, buffers = read_snapshot(run / "snapshots" / "final.safetensors")
    served = {e.name: buffers[e.offset : e.stop].view(e.shape) for e in layout.entries}
    for name in ["running_mean", "running_var", "num_batches_tracked"]:
        mean = torch.stack([e[name] for e in expected]).mean(dim=0).float()
        assert torch.allclose(served[f"stem.1.{name}"], mean, rtol=1e-5, atol=1e-6), name
    # not the initial statistics (zeros and ones), in either BatchNorm
    for bn in ["stem.1", "body.1"]:
        assert served[f"{bn}.running_mean"].abs().max() > 0.01 and (served[f"{bn}.running_var"] - 1).abs().max() > 0.01


@pytest.mark.slow
def test_batchnorm_model_is_scored_with_the_served_statistics(example_run, monkeypatch):
    run = example_run("batchnorm_frozen")
    monkeypatch.chdir(ROOT)
    cfg = load_experiment(run / "config.yaml")
    spec = batchnorm_frozen.build(cfg.task)  # the user's data; the model here gets the saved weights
    model = batchnorm_frozen.DigitsNet(cfg.task.args["width"])
    state = load_file(run / "model" / "model.safetensors")
    model.load_state_dict(state, strict=True)

    _, params, buffers = read_snapshot(run / "snapshots" / "final.safetensors")
    net = Task(cfg).net
    net.params.copy_(params)
    net.load_buffers(buffers)
    for name, value in net.model.state_dict().items():  # the served parameters, statistics and frozen stem
        assert torch.equal(state[name], value), name

    x, y = spec.test
    with torch.no_grad():
        correct = int((model.eval()(x).argmax(dim=1) == y).sum())
    final = _summary(run)["final_test_acc"]
    assert correct == round(final * len(y)) and final > 0.5, (correct, len(y), final)
