"""A task at run time: the TaskSpec its factory built, the model on flat buffers, the rank's batches, the
gradient of a batch, and the evaluation of a parameter vector. The same for every task (worker/tasks/api.py).

The objective is f(x) = mean over a batch of loss(forward(model, batch)) + regularizer(model).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

from protocol.config.schema import ExperimentConfig
from protocol.wire.layout import Layout
from worker.tasks.api import Data, TaskError, TaskSpec, call_factory, load_factory
from worker.tasks.builtin import builtin
from worker.tasks.flat import FlatModel
from worker.tasks.loader import batch_size_of, eval_batches, rank_loader, to_device

EVAL_BATCH = 4096


def build_spec(cfg: ExperimentConfig) -> TaskSpec:
    """The experiment's task: its factory (task.factory, or the built-in one of task.dataset) called after
    seeding torch with the experiment seed, so every process builds the same initial model. Raises
    TaskError naming what is wrong."""
    torch.manual_seed(cfg.seed)
    if not cfg.task.factory:
        return call_factory(builtin, cfg.task, f"the built-in {cfg.task.dataset} task")
    return call_factory(load_factory(cfg.task.factory), cfg.task, cfg.task.factory)


def another_rank(spec: TaskSpec) -> TaskSpec:
    """The same task with its own copy of the model (ranks hosted by one process share the data)."""
    return dataclasses.replace(spec, model=copy.deepcopy(spec.model))


class Task:
    def __init__(self, cfg: ExperimentConfig, device: str | torch.device = "cpu", spec: TaskSpec | None = None):
        self.cfg = cfg
        self.device = torch.device(device)
        self.spec = spec if spec is not None else build_spec(cfg)
        self.net = FlatModel(self.spec.model, self.device)
        self.amp = cfg.worker.amp == "bf16"

    @property
    def layout(self) -> Layout:
        return self.net.layout

    def batches(self, rank: int, world: int) -> Iterator[Any]:
        """The rank's endless stream of training batches (its DataLoader, or the task's own stream)."""
        t, seed = self.cfg.task, self.cfg.seed
        if self.spec.batches is not None:
            return self.spec.batches(rank, world, seed, t.batch_size)
        assert self.spec.train is not None
        loader = rank_loader(self.spec.train, t.batch_size, t.sampling, rank, world, seed, t.loader_workers,
                             self.spec.collate_fn)  # fmt: skip
        return iter(loader)

    def gradient(self, batch: Any) -> float:
        """The objective's gradient at the current parameters on one batch, into net.grad; returns the
        batch's mean loss (without the regularizer)."""
        self.net.zero_grad()
        loss = self._loss(to_device(batch, self.device))
        total = loss + self._regularizer()
        total.backward()
        return float(loss.detach())

    def _loss(self, batch: Any) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            outputs, targets = self.spec.forward(self.net.model, batch)
            loss = self.spec.loss(outputs, targets)
        return loss.float()

    def _regularizer(self) -> torch.Tensor:
        reg = self.spec.regularizer
        return reg(self.net.model) if reg is not None else torch.zeros((), device=self.device)

    @torch.no_grad()
    def evaluate(
        self, params: torch.Tensor, max_samples: int, grad_norm: bool = False, buffers: torch.Tensor | None = None
    ) -> dict:
        """train_loss (objective incl. regularizer), test_loss, test_acc and the task's other metrics
        (test_<name>) at `params` (and `buffers`), over at most max_samples samples of each split; with
        grad_norm (or a task that asks for it) also grad_norm_sq, ||grad f||^2 of the training objective."""
        self.net.params.copy_(params.to(self.device))
        if buffers is not None and buffers.numel():
            self.net.load_buffers(buffers.to(self.device))
        self.net.model.eval()
        try:
            return self._evaluate(max_samples, grad_norm or self.spec.report_grad_norm)
        finally:
            self.net.model.train()

    def _evaluate(self, max_samples: int, grad_norm: bool) -> dict:
        train_loss, _ = self._score(self.spec.train, max_samples)
        test_loss, metrics = self._score(self.spec.test, max_samples)
        out: dict[str, Any] = {
            "train_loss": None if train_loss is None else train_loss + float(self._regularizer()),
            "test_loss": test_loss,
            "test_acc": metrics.pop("acc", None),
            **{f"test_{name}": value for name, value in metrics.items()},
        }
        if grad_norm:
            out["grad_norm_sq"] = self.grad_norm_sq(max_samples)
        return out

    def _score(self, data: Data | None, max_samples: int) -> tuple[float | None, dict[str, float]]:
        """Mean loss and metrics over the first max_samples samples (each batch weighted by its size)."""
        if data is None:
            return None, {}
        total, n = 0.0, 0
        sums: dict[str, float] = {}
        for batch in eval_batches(data, max_samples, EVAL_BATCH, self.spec.collate_fn):
            size = batch_size_of(batch)
            outputs, targets = self.spec.forward(self.net.model, to_device(batch, self.device))
            total += float(self.spec.loss(outputs, targets)) * size
            for name, value in (self.spec.metrics(outputs, targets) if self.spec.metrics else {}).items():
                sums[name] = sums.get(name, 0.0) + float(value) * size
            n += size
        n = max(n, 1)
        return total / n, {name: value / n for name, value in sums.items()}

    def grad_norm_sq(self, max_samples: int) -> float:
        """||grad f(x)||^2 at the current parameters: f = the training objective over the first max_samples
        training samples, regularizer included; one full-batch backward pass, in chunks, into net.grad."""
        if self.spec.train is None:
            raise TaskError("grad_norm_sq needs training data (TaskSpec.train)")
        self.net.zero_grad()
        batches = list(eval_batches(self.spec.train, max_samples, EVAL_BATCH, self.spec.collate_fn))
        n = sum(batch_size_of(b) for b in batches)
        with torch.enable_grad():
            for batch in batches:  # chunk means weighted by their share: the full mean
                (self._loss(to_device(batch, self.device)) * (batch_size_of(batch) / n)).backward()
            if self.spec.regularizer is not None:
                self._regularizer().backward()
        return float(self.net.grad.double().square().sum())
