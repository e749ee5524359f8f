"""The sharpness of a trained model: the top eigenvalue of the full-batch training loss's Hessian, by power
iteration on Hessian-vector products (double backprop), as the reference code's hess_largest_eigenvalue
(docs/algorithms.md, Stability threshold). Linear stability of a minimum under delayed SGD needs lr * sharpness
< 2 sin(pi/(2(2 tau + 1))).
"""

from __future__ import annotations

from pathlib import Path

import torch

from protocol.config.loader import load_experiment
from protocol.runfolder.snapshot import read_snapshot
from worker.tasks import Task


def top_eigenvalue(task: Task, iters: int = 100, tol: float = 1e-4, seed: int = 0) -> float:
    """Largest-magnitude Hessian eigenvalue of the data loss over the whole training set at task's parameters."""
    params = list(task.net.model.parameters())
    outputs, targets = task.spec.forward(task.net.model, task.spec.train)
    loss = task.spec.loss(outputs, targets)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen) for p in params]
    v = _normalise(v)
    value = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        new = float(sum((h * u).sum() for h, u in zip(hv, v)))  # Rayleigh quotient v' H v
        v = _normalise(hv)
        if abs(new - value) <= tol * abs(new):
            return new
        value = new
    return value


def _normalise(vs) -> list[torch.Tensor]:
    norm = torch.sqrt(sum((x * x).sum() for x in vs))
    return [x / norm for x in vs]


def run_sharpness(run_dir: Path) -> float | None:
    """Sharpness at a finished run's final parameters (None if the run left none, or they are not finite)."""
    snap = run_dir / "snapshots" / "final.safetensors"
    if not snap.exists():
        return None
    cfg = load_experiment(run_dir / "config.yaml")
    _, params, _ = read_snapshot(snap)
    if not torch.isfinite(params).all():
        return None
    task = Task(cfg)
    task.net.params.copy_(params)
    return top_eigenvalue(task)


def init_sharpness(run_dir: Path) -> float:
    """Sharpness at a run's initial parameters (every process builds them from the run's seed)."""
    return top_eigenvalue(Task(load_experiment(run_dir / "config.yaml")))
