"""One worker with staleness 0 through the real server == single-process training (same seed, optimizer)."""

import csv

import pytest
import torch

from protocol.runfolder.snapshot import read_snapshot
from protocol.wire.channel import Channel
from tests.helpers import make_config, running_server
from worker.loop import WorkerLoop
from worker.tasks import Task

STEPS = 150


def _reference(cfg):
    """The same task, batches and optimizer in one process, with torch.optim on the model."""
    task = Task(cfg)
    stream = task.batches(0, 1)
    o = cfg.optimizer
    if o.name == "amsgrad":
        opt = torch.optim.Adam(task.net.model.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, amsgrad=True)
    else:
        opt = torch.optim.SGD(task.net.model.parameters(), lr=o.lr, momentum=o.momentum)
    losses = []
    for _ in range(STEPS):
        losses.append(task.gradient(next(stream)))
        opt.step()
    return losses, task.net.params.clone()


def _distributed(cfg, run_dir):
    with running_server(cfg, run_dir=run_dir) as (server, endpoint, result):
        chan = Channel("dealer")
        chan.connect(endpoint)
        try:
            stats = WorkerLoop(cfg, 0, chan).run()
        finally:
            chan.close()
    with open(run_dir / "updates.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["applied"] == "1"]
    _, final, _ = read_snapshot(run_dir / "snapshots" / "final.safetensors")
    return rows, stats, result, final


@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "amsgrad", "lr": 3e-3},
        {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    ],
)
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_one_worker_reproduces_single_process_training(tmp_path, optimizer, model):
    cfg = make_config(
        workers=1,
        seed=3,
        task={"dataset": "digits", "model": model, "hidden": [32], "channels": [4], "batch_size": 16},
        optimizer=optimizer,
        run={"max_updates": STEPS, "eval_every_s": 1000},
        server={"stop_grace_s": 1},
    )
    ref_losses, ref_params = _reference(cfg)
    rows, stats, result, final = _distributed(cfg, tmp_path)
    assert result["updates"] == STEPS and stats.applied == STEPS
    assert [int(r["staleness"]) for r in rows] == [0] * STEPS
    losses = [float(r["loss"]) for r in rows]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(final, ref_params, rtol=1e-4, atol=1e-5)
    assert ref_losses[-1] < 0.5 * ref_losses[0]  # it trained, so the comparison means something
