"""Bring your own model: a task factory in a file outside the project, through `python -m launch`.

The quick tier calls launch.__main__.main in-process for the factories that must stop the launch (exit 2,
naming task.factory and the cause, before any process starts or any run folder is made); the slow tier
trains a user's model and data set, kept in pytest's tmp_path, with the real processes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import TensorDataset, random_split

from launch.__main__ import main
from launch.preflight import factory_layout
from protocol.config.loader import load_experiment
from protocol.runfolder.snapshot import read_snapshot
from worker.tasks.loader import eval_batches, rank_loader

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "tiny.yaml")

# A user's own task: its data set class, a random_split of it (torch Subsets), its model.
USER_TASK = '''
"""Three noisy concentric rings of points; the label is the ring. Not linearly separable."""

import math

import torch
from torch import nn
from torch.utils.data import Dataset, random_split

from worker.tasks.api import TaskSpec


class Rings(Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 3, (n,), generator=g)
        angle = torch.rand(n, generator=g) * 2 * math.pi
        radius = self.y.float() + 1 + 0.15 * torch.randn(n, generator=g)
        self.x = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class RingNet(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh())
        self.out = nn.Linear(width, 3)

    def forward(self, x):
        return self.out(self.hidden(x))


def build(task):
    data = Rings(task.args["samples"], task.args["data_seed"])
    train, test = random_split(data, [0.8, 0.2], generator=torch.Generator().manual_seed(0))
    return TaskSpec(RingNet(task.args["width"]), train=train, test=test)
'''
ARGS = {"width": 32, "samples": 1500, "data_seed": 3}


def _import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _launch(args: list[str], run_dir: Path, timeout: float = 180) -> subprocess.CompletedProcess:
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


@pytest.mark.slow
def test_a_model_and_data_set_outside_the_project_train_through_the_launcher(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "mytask.py").write_text(USER_TASK)
    factory = f"{user / 'mytask.py'}:build"
    run = tmp_path / "run"
    overrides = [f"task.factory={factory}", f"task.args={json.dumps(ARGS)}", "optimizer.lr=0.01", "run.max_updates=400"]
    out = _launch([TINY, *overrides], run)
    assert out.returncode == 0, out.stderr + out.stdout

    for name in ["summary.json", "metrics.jsonl", "updates.csv", "logs/evaluator.log", "plots/metrics.png"]:
        assert (run / name).is_file(), name
    assert (run / "plots" / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    recorded = load_experiment(run / "config.yaml").task
    assert (recorded.factory, recorded.args) == (factory, ARGS)

    summary = json.loads((run / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["final"] and metrics[-1]["updates"] == summary["updates"] == 400
    assert summary["final_test_acc"] == metrics[-1]["test_acc"] > 0.6  # 3 rings: chance is 1/3

    # the saved weights load by name into a fresh module of the user's class (another initialisation)
    mod = _import_file(user / "mytask.py", "user_mytask")
    model = mod.RingNet(ARGS["width"])
    model.load_state_dict(load_file(run / "model" / "model.safetensors"), strict=True)
    _, params, _ = read_snapshot(run / "snapshots" / "final.safetensors")
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in model.parameters()]), params)  # what was served

    # its accuracy on the user's test split, computed here, is the run's final test accuracy
    test = mod.build(SimpleNamespace(args=ARGS)).test
    x = torch.stack([test[i][0] for i in range(len(test))])
    y = torch.stack([test[i][1] for i in range(len(test))])
    with torch.no_grad():
        correct = int((model.eval()(x).argmax(dim=1) == y).sum())
    assert correct == round(summary["final_test_acc"] * len(test)), (correct, len(test), summary["final_test_acc"])


# -- factories that must stop the launch -------------------------------------------------------------------
BROKEN = {
    "raises.py": """
        def build(task):
            raise FileNotFoundError("/data/mine.csv is not there")
    """,
    "not_a_spec.py": """
        from torch import nn

        def build(task):
            return nn.Linear(2, 2)
    """,
    "float64.py": """
        import torch
        from torch import nn
        from worker.tasks.api import TaskSpec

        def build(task):
            model = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2).double())
            return TaskSpec(model, train=(torch.zeros(8, 2), torch.zeros(8, dtype=torch.long)))
    """,
    "no_data.py": """
        from torch import nn
        from worker.tasks.api import TaskSpec

        def build(task):
            return TaskSpec(nn.Linear(2, 2), train=None)
    """,
    "bad_import.py": """
        import numpyy
    """,
}


@pytest.mark.parametrize(
    "factory,cause",
    [
        ("taups_no_such_module:build", "cannot import taups_no_such_module: ModuleNotFoundError"),
        ("{tmp}/missing.py:build", "{tmp}/missing.py does not exist"),
        ("{tmp}/bad_import.py:build", "cannot load {tmp}/bad_import.py: ModuleNotFoundError: No module named 'numpyy'"),
        ("{tmp}/raises.py:make", "{tmp}/raises.py has no function 'make'"),
        ("{tmp}/raises.py:build", "raised FileNotFoundError: /data/mine.csv is not there"),
        ("{tmp}/not_a_spec.py:build", "returned Linear, not a TaskSpec"),
        ("{tmp}/float64.py:build", "parameter '2.weight' is torch.float64"),
        ("{tmp}/no_data.py:build", "TaskSpec needs training data (train) or a batch stream (batches)"),
    ],
)
def test_a_broken_factory_stops_the_launch_naming_task_factory_and_the_cause(tmp_path, capsys, factory, cause):
    for name, text in BROKEN.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    factory, cause = factory.format(tmp=tmp_path), cause.format(tmp=tmp_path)
    run = tmp_path / "run"
    assert main([TINY, f"task.factory={factory}", "--run-dir", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: config key 'task.factory': "), err
    assert cause in err, err
    assert not run.exists()  # stopped before a run folder or any process


def test_a_factory_named_as_a_module_lays_out_only_its_trainable_parameters(tmp_path, monkeypatch):
    (tmp_path / "user_frozen_task.py").write_text(
        textwrap.dedent("""
        import torch
        from torch import nn
        from worker.tasks.api import TaskSpec

        def build(task):
            model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
            model[0].requires_grad_(False)
            return TaskSpec(model, train=(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)))
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = load_experiment(TINY, ["task.factory=user_frozen_task:build"])
    layout = factory_layout(cfg)
    assert [(e.name, e.shape) for e in layout.entries] == [("2.weight", (2, 5)), ("2.bias", (2,))]


# -- a user's Dataset through the rank loaders ---------------------------------------------------------------
def test_subsets_from_random_split_are_read_in_collated_batches():
    """torch's Subset has a __getitems__ that returns a list of samples: the loaders must still collate
    them into (inputs, targets) batches, as a DataLoader does for anyone else."""
    data = TensorDataset(torch.arange(40.0).reshape(20, 2), torch.arange(20))
    train, test = random_split(data, [0.75, 0.25], generator=torch.Generator().manual_seed(0))
    x, y = next(iter(rank_loader(train, 4, "random", rank=0, world=1, seed=0)))
    assert x.shape == (4, 2) and y.shape == (4,) and torch.equal(x[:, 0], 2.0 * y)
    [(x, y)] = list(eval_batches(test, max_samples=100))
    assert torch.equal(y, torch.stack([test[i][1] for i in range(len(test))])) and torch.equal(x[:, 1], 2.0 * y + 1)
