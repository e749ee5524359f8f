"""A training task: data, model, loss, minibatch sampling, gradients into the flat buffer, evaluation.

The objective is f(x) = mean loss over the training data + regularizer(x), where the regularizer is
none, l2 (lambda/2 ||x||^2) or nonconvex (lambda * sum x^2 / (1 + x^2), the EF21 papers' choice).
The synthetic kind quadratic has no data: f(x) = 1/2 ||x - x*||^2 + regularizer(x), its stochastic
gradients carry Gaussian noise instead of minibatch noise (quadratic.py).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from protocol.config.schema import ExperimentConfig, TaskConfig
from worker.tasks.data import Dataset, load_dataset
from worker.tasks.flat import FlatModel
from worker.tasks.models import build_model
from worker.tasks.quadratic import NoiseBatch, NoiseSampler, QuadraticProblem


def rank_seed(seed: int, rank: int, stream: int = 0) -> int:
    """Independent, reproducible seed per (experiment seed, rank, stream); stream 0 draws minibatches."""
    key = [seed, rank] if stream == 0 else [seed, rank, stream]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


class BatchSampler:
    """Epochs over an index set, reshuffled each epoch by the rank's own generator.

    random: the index set is the whole training set (each rank its own order);
    shard:  the index set is this rank's contiguous slice of one fixed permutation.
    batch_size 0 yields the whole index set every time (deterministic full gradients).
    """

    def __init__(self, n: int, batch_size: int, sampling: str, rank: int, world: int, seed: int):
        if sampling == "shard":
            perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
            lo, hi = rank * n // world, (rank + 1) * n // world
            self.indices = perm[lo:hi].sort().values
        else:
            self.indices = torch.arange(n)
        if len(self.indices) == 0:
            raise ValueError(f"rank {rank} has no training data (n={n}, world={world})")
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(rank_seed(seed, rank))
        self._order = self.indices
        self._pos = len(self.indices) if batch_size else 0

    def next(self) -> torch.Tensor:
        if self.batch_size == 0:
            return self.indices
        if self._pos + self.batch_size > len(self._order):
            self._order = self.indices[torch.randperm(len(self.indices), generator=self.gen)]
            self._pos = 0
        batch = self._order[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return batch


class Task:
    def __init__(self, cfg: ExperimentConfig, device: str | torch.device = "cpu", data: Dataset | None = None):
        self.cfg: TaskConfig = cfg.task
        self.device = torch.device(device)
        quadratic = cfg.task.dataset == "synthetic" and cfg.task.synthetic.kind == "quadratic"
        self.quadratic = QuadraticProblem(cfg.task.synthetic, self.device) if quadratic else None
        self.data = None if quadratic else (data or load_dataset(cfg.task)).to(self.device)
        torch.manual_seed(cfg.seed)  # every process builds the same initial model
        model = self.quadratic.model() if self.quadratic else build_model(cfg.task, self.data)
        self.net = FlatModel(model, self.device)
        self.seed = cfg.seed

    @property
    def layout(self):
        return self.net.layout

    def sampler(self, rank: int, world: int) -> BatchSampler | NoiseSampler:
        if self.quadratic:
            return NoiseSampler(self.net.numel, self.quadratic.sigma, self.cfg.batch_size, rank_seed(self.seed, rank))
        bs = min(self.cfg.batch_size, len(self.data.x_train))
        return BatchSampler(len(self.data.x_train), bs, self.cfg.sampling, rank, world, self.seed)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._data_loss(self.net.model(x), y)

    def _data_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.data.num_classes is None:
            return 0.5 * F.mse_loss(out, y)
        return F.cross_entropy(out, y)

    def regularizer(self) -> torch.Tensor:
        lam, p = self.cfg.reg_lambda, self.net.params
        if self.cfg.regularizer == "l2":
            return 0.5 * lam * p.dot(p)
        if self.cfg.regularizer == "nonconvex":
            sq = p * p
            return lam * (sq / (1 + sq)).sum()
        return p.new_zeros(())

    def gradient(self, batch: torch.Tensor | NoiseBatch) -> float:
        """Minibatch gradient of the objective at the current parameters, into `self.net.grad`.

        Returns the minibatch's data loss (quadratic: f(x) without the regularizer, noise-free)."""
        if isinstance(batch, NoiseBatch):
            return self._quadratic_gradient(batch)
        self.net.zero_grad()
        batch = batch.to(self.device)
        loss = self.loss(self.data.x_train[batch], self.data.y_train[batch])
        loss.backward()
        self._add_regularizer_grad()
        return float(loss.detach())

    def _quadratic_gradient(self, batch: NoiseBatch) -> float:
        value = self.quadratic.gradient_into(self.net.params, self.net.grad, batch)
        self._add_regularizer_grad()
        return value

    def _add_regularizer_grad(self) -> None:
        lam, p, g = self.cfg.reg_lambda, self.net.params, self.net.grad
        if self.cfg.regularizer == "none" or lam == 0:
            return
        if self.cfg.regularizer == "l2":
            g.add_(p, alpha=lam)
        else:  # d/dx [x^2 / (1 + x^2)] = 2x / (1 + x^2)^2
            g.add_(lam * 2 * p / (1 + p * p) ** 2)

    @torch.no_grad()
    def evaluate(self, params: torch.Tensor, max_samples: int, grad_norm: bool = False) -> dict:
        """train_loss (objective incl. regularizer), test_loss and test_acc at `params`; with grad_norm
        also grad_norm_sq, ||grad f||^2 of that objective (the quadratic reports it always: it is cheap).

        The quadratic has no held-out data: its test_loss is f(x) too, and test_acc is None."""
        self.net.params.copy_(params.to(self.device))
        if self.quadratic:
            f = self.quadratic.value(self.net.params) + float(self.regularizer())
            return {"train_loss": f, "test_loss": f, "test_acc": None, "grad_norm_sq": self.grad_norm_sq(0)}
        self.net.model.eval()
        train_loss, _ = self._score(self.data.x_train[:max_samples], self.data.y_train[:max_samples])
        test_loss, test_acc = self._score(self.data.x_test[:max_samples], self.data.y_test[:max_samples])
        out = {"train_loss": train_loss + float(self.regularizer()), "test_loss": test_loss, "test_acc": test_acc}
        if grad_norm:
            out["grad_norm_sq"] = self.grad_norm_sq(max_samples)
        self.net.model.train()
        return out

    def grad_norm_sq(self, max_samples: int, chunk: int = 4096) -> float:
        """||grad f(x)||^2 at the current parameters, f = the training objective over the first max_samples
        samples (regularizer included): one full-batch backward pass, in chunks, into net.grad."""
        if self.quadratic:
            self.quadratic.gradient_into(self.net.params, self.net.grad, NoiseBatch(None, 1))
        else:
            self.net.zero_grad()
            x, y = self.data.x_train[:max_samples], self.data.y_train[:max_samples]
            with torch.enable_grad():
                for i in range(0, len(x), chunk):  # chunk means weighted by their share: the full mean
                    (self.loss(x[i : i + chunk], y[i : i + chunk]) * (len(x[i : i + chunk]) / len(x))).backward()
        self._add_regularizer_grad()
        return float(self.net.grad.double().square().sum())

    def _score(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> tuple[float, float | None]:
        total, correct = 0.0, 0
        for i in range(0, len(x), chunk):
            xb, yb = x[i : i + chunk], y[i : i + chunk]
            out = self.net.model(xb)
            total += float(self._data_loss(out, yb)) * len(xb)
            if self.data.num_classes is not None:
                correct += int((out.argmax(dim=1) == yb).sum())
        n = max(1, len(x))
        return total / n, (correct / n if self.data.num_classes is not None else None)
