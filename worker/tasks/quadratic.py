"""The noisy quadratic of the EF21-SGDM paper's divergence experiment (R3 in docs/algorithms.md).

f(x) = 1/2 ||x - x*||^2 over one parameter tensor x of dimension synthetic.dim; there is no data. A
worker's stochastic gradient is x - x* + s xi, xi ~ N(0, I) drawn from the rank's own sampling
stream, with s = synthetic.noise / sqrt(task.batch_size) (the mean of batch_size unit-noise draws,
drawn as one vector: the same law at 1/batch_size of the cost); batch_size 0 gives the exact gradient.

x* = optimum_scale * N(0, I) from data_seed (0 puts it at the origin) and x^0 = x* + init_scale *
N(0, I) / sqrt(dim) from the experiment seed, so ||x^0 - x*|| is about init_scale in any dimension;
init_scale 0 starts at the optimum, where the objective can only grow to the method's noise floor.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from protocol.config.schema import SyntheticConfig


class Quadratic(nn.Module):
    """The "model": the parameter vector x itself (layout: one tensor named x)."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        self.x = nn.Parameter(x0.clone())


@dataclass
class NoiseBatch:
    """What a quadratic sampler yields: the noise of one stochastic gradient (None: exact gradient)."""

    noise: torch.Tensor | None
    samples: int

    def __len__(self) -> int:  # the worker reports len(batch) as the push's sample count
        return self.samples


class NoiseSampler:
    """A rank's gradient-noise stream: s * xi per call, into one reused buffer (it is consumed at once)."""

    def __init__(self, dim: int, sigma: float, batch_size: int, seed: int):
        self.batch_size = batch_size
        self.scale = sigma / batch_size**0.5 if batch_size else 0.0
        self.gen = torch.Generator().manual_seed(seed)
        self._xi = torch.empty(dim) if self.scale > 0 else None

    def next(self) -> NoiseBatch:
        if self._xi is None:
            return NoiseBatch(None, max(1, self.batch_size))
        torch.randn(self._xi.shape, generator=self.gen, out=self._xi)
        return NoiseBatch(self._xi.mul_(self.scale), self.batch_size)


class QuadraticProblem:
    """The task's parts: the model x, the stochastic objective, and each rank's noise stream.

    A batch is one noise vector, shape (1, dim) (zero for the exact gradient): forward gives (x, noise)
    and loss gives f(x) as its value with x - x* + noise as its gradient, so the worker pushes exactly the
    stochastic gradient above and reports the noise-free f(x)."""

    def __init__(self, s: SyntheticConfig, device: torch.device):
        self.dim = s.dim
        self.sigma = s.noise
        gen = torch.Generator().manual_seed(s.data_seed)
        self.x_star = (s.optimum_scale * torch.randn(s.dim, generator=gen)).to(device)
        self.init_scale = s.init_scale

    def model(self) -> Quadratic:
        """x^0 from torch's global generator, which the caller seeded with the experiment seed."""
        x0 = self.x_star.cpu() + self.init_scale * torch.randn(self.x_star.numel()) / self.x_star.numel() ** 0.5
        return Quadratic(x0)

    @staticmethod
    def forward(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        return model.get_parameter("x"), batch[0]

    def loss(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        diff = x - self.x_star.to(x.device)
        shift = (noise.sum(dim=0) * x).sum()
        return 0.5 * diff.dot(diff) + shift - shift.detach()  # the value is f(x); the gradient has the noise

    def batches(self, rank: int, world: int, seed: int, batch_size: int) -> Iterator[tuple[torch.Tensor]]:
        """The rank's endless noise stream (its own generator); batch_size 0 gives exact gradients."""
        from worker.tasks.loader import rank_seed

        sampler = NoiseSampler(self.dim, self.sigma, batch_size, rank_seed(seed, rank))
        zero = torch.zeros(1, self.dim)
        while True:
            noise = sampler.next().noise
            yield (zero if noise is None else noise.unsqueeze(0),)

    def value(self, x: torch.Tensor) -> float:
        return 0.5 * float((x - self.x_star).double().square().sum())

    def gradient_into(self, x: torch.Tensor, out: torch.Tensor, batch: NoiseBatch) -> float:
        """out = x - x* + noise; returns f(x), read off the exact gradient before the noise is added."""
        torch.sub(x, self.x_star, out=out)
        value = 0.5 * float(torch.dot(out, out))
        if batch.noise is not None:
            out.add_(batch.noise.to(out.device))
        return value
