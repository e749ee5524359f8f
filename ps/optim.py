"""Server optimizers on one flat float32 parameter vector. Pure math: no sockets, clocks or logging.

Each `step(direction, lr, worker)` is one iteration on the current parameters (APAM applies every
arriving, possibly stale, direction as one AMSGrad iteration). Steps run as fused kernels or a few
in-place passes over the flat buffers; nothing loops over parameters in Python.

Forms of AMSGrad (docs/algorithms.md, AMSGrad forms):
- torch: exactly torch.optim.Adam(amsgrad=True) (bias correction, eps added after sqrt(v_hat)/sqrt(bc2)),
  run through torch's fused kernel on the flat vector.
- paper: APAM Algorithm 1: no bias correction, no eps, v_hat = max(v_hat, v) on the raw v. A coordinate
  whose v_hat is still 0 has m = 0 too (both only move when its gradient is non-zero), so its step is
  0/0; the denominator is clamped to the smallest normal float to make that step exactly 0.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Protocol

import torch

from protocol.config.schema import OptimizerConfig

TINY = torch.finfo(torch.float32).tiny
CHUNK = 1 << 18  # coordinates per chunk of a chunked step: its 5 float32 streams (1 MiB each) stay in cache


class Optimizer(Protocol):
    """What the server (ps/model.py) and the sync baseline (sync/loop.py) step: one iteration per direction on
    the flat parameter vector it was made for. ServerOptimizer below is the base class of the built-in ones
    (make_optimizer); anything of this shape serves."""

    steps: int  # iterations taken (part of the checkpointed state)

    def step(self, direction: torch.Tensor, lr: float, worker: int = 0) -> None:
        """Apply one iteration with `direction` (read only) at learning rate `lr`; `worker` sent it."""
        ...

    def state(self) -> dict[str, torch.Tensor]:
        """The state tensors by name, live (a checkpoint copies them)."""
        ...

    def load_state(self, tensors: dict[str, torch.Tensor], steps: int) -> None:
        """Restore what state() returned."""
        ...


class ServerOptimizer(ABC):
    def __init__(self, params: torch.Tensor, cfg: OptimizerConfig):
        self.params = params
        self.cfg = cfg
        self.steps = 0

    @abstractmethod
    def step(self, direction: torch.Tensor, lr: float, worker: int = 0) -> None:
        """Apply one iteration with `direction` (read only) at learning rate `lr`."""

    def step_chunks(self, direction: torch.Tensor, lr: float, worker: int = 0, chunk: int = CHUNK) -> Iterator[int]:
        """step(), yielding how many parameters from the front hold their new values as they do (here: all of
        them, once; TorchAdam steps chunk by chunk). Run it to the end: the step is not taken until then."""
        self.step(direction, lr, worker)
        yield self.params.numel()

    def state(self) -> dict[str, torch.Tensor]:
        """The optimizer's state tensors by name (checkpoints copy them; nothing else is state but `steps`)."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor], steps: int) -> None:
        """Restore what state() returned (a checkpoint): copied into this optimizer's own tensors."""
        self.steps = steps
        for name, t in self.state().items():
            t.copy_(tensors[name])


class TorchAdam(ServerOptimizer):
    """torch.optim.Adam (amsgrad or not) on the flat vector, through torch's fused kernel.

    The kernel is called directly (what torch.optim.Adam(fused=True).step() does after its
    bookkeeping), which saves ~25 us of Python per push; tests pin it to torch.optim.Adam.
    """

    def __init__(self, params: torch.Tensor, cfg: OptimizerConfig, amsgrad: bool):
        super().__init__(params, cfg)
        self.amsgrad = amsgrad
        self.m = torch.zeros_like(params)
        self.v = torch.zeros_like(params)
        self.v_hat = torch.zeros_like(params) if amsgrad else None
        self._step = torch.zeros((), dtype=torch.float32, device=params.device)

    def step(self, direction: torch.Tensor, lr: float, worker: int = 0) -> None:
        self._step += 1
        self._kernel(0, self.params.numel(), direction, lr)
        self.steps += 1

    def step_chunks(self, direction: torch.Tensor, lr: float, worker: int = 0, chunk: int = CHUNK) -> Iterator[int]:
        """step(), one contiguous chunk of coordinates after another, yielding after each how many parameters
        from the front hold their new values (the server publishes each chunk while it is still in cache).
        Bitwise equal to step() at one thread: the kernel is coordinate-wise, every chunk sees the same step
        count, and chunks are whole multiples of 64 coordinates (the kernel's vector loop hands a remainder to a
        scalar loop that rounds differently). Raises ValueError for another chunk size."""
        if chunk <= 0 or chunk % 64:
            raise ValueError(f"a chunk is a positive multiple of 64 coordinates, got {chunk}")
        self._step += 1
        self.steps += 1
        n = self.params.numel()
        for lo in range(0, n, chunk):
            self._kernel(lo, min(n, lo + chunk), direction, lr)
            yield min(n, lo + chunk)

    def _kernel(self, lo: int, hi: int, direction: torch.Tensor, lr: float) -> None:
        """torch's fused Adam on coordinates [lo, hi) (what torch.optim.Adam(fused=True) calls)."""
        b1, b2 = self.cfg.betas
        torch._fused_adam_(
            [self.params[lo:hi]],
            [direction[lo:hi]],
            [self.m[lo:hi]],
            [self.v[lo:hi]],
            [self.v_hat[lo:hi]] if self.v_hat is not None else [],  # there is one when amsgrad
            [self._step],
            lr=lr,
            beta1=b1,
            beta2=b2,
            weight_decay=self.cfg.weight_decay,
            eps=self.cfg.eps,
            amsgrad=self.amsgrad,
            maximize=False,
        )

    def state(self) -> dict[str, torch.Tensor]:
        out = {"m": self.m, "v": self.v, "step": self._step}
        if self.v_hat is not None:
            out["v_hat"] = self.v_hat
        return out


class PaperAMSGrad(ServerOptimizer):
    """APAM Algorithm 1: m, v EMAs, v_hat = max(v_hat, v), x -= lr * m / sqrt(v_hat).

    In exact arithmetic |m / sqrt(v_hat)| <= B = (1 - b1) / sqrt((1 - b2)(1 - b1^2 / b2)) (Cauchy-Schwarz on
    the two EMAs, for b1^2 < b2). In float32, (1 - b2) g^2 underflows to 0 for |g| below about 1e-21 while
    m does not, and the step would blow up to lr * m / 1.2e-38; the ratio is therefore clamped to B, which
    never binds when nothing underflowed.
    """

    def __init__(self, params: torch.Tensor, cfg: OptimizerConfig):
        super().__init__(params, cfg)
        self.m = torch.zeros_like(params)
        self.v = torch.zeros_like(params)
        self.v_hat = torch.zeros_like(params)
        self._scratch = torch.empty_like(params)
        self.bound = ratio_bound(*cfg.betas)

    def step(self, direction: torch.Tensor, lr: float, worker: int = 0) -> None:
        b1, b2 = self.cfg.betas
        g = _with_weight_decay(direction, self.params, self.cfg.weight_decay, self._scratch)
        self.m.mul_(b1).add_(g, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        torch.maximum(self.v_hat, self.v, out=self.v_hat)
        ratio = torch.sqrt(self.v_hat, out=self._scratch).clamp_min_(TINY)
        torch.div(self.m, ratio, out=ratio).clamp_(-self.bound, self.bound)
        self.params.add_(ratio, alpha=-lr)
        self.steps += 1

    def state(self) -> dict[str, torch.Tensor]:
        return {"m": self.m, "v": self.v, "v_hat": self.v_hat}


class SGD(ServerOptimizer):
    """SGD with optional momentum (torch.optim.SGD semantics for one buffer).

    momentum_mode server: one buffer, updated by every push. shifted: one buffer per worker, updated
    only by that worker's pushes -- with delay tau and round-robin workers this is Stability's Edge's
    shifted momentum, which tolerates larger steps than a server buffer (docs/algorithms.md, Momentum under delay).
    """

    def __init__(self, params: torch.Tensor, cfg: OptimizerConfig):
        super().__init__(params, cfg)
        self.buffers: dict[int, torch.Tensor] = {}
        self._scratch = torch.empty_like(params) if cfg.weight_decay else None

    def step(self, direction: torch.Tensor, lr: float, worker: int = 0) -> None:
        g = _with_weight_decay(direction, self.params, self.cfg.weight_decay, self._scratch)
        if self.cfg.momentum == 0:
            self.params.add_(g, alpha=-lr)
        else:
            key = worker if self.cfg.momentum_mode == "shifted" else 0
            buf = self.buffers.get(key)
            if buf is None:  # torch: the first step uses the undampened gradient
                self.buffers[key] = buf = g.clone()
            else:
                buf.mul_(self.cfg.momentum).add_(g, alpha=1 - self.cfg.dampening)
            self.params.add_(buf, alpha=-lr)
        self.steps += 1

    def state(self) -> dict[str, torch.Tensor]:
        return {f"momentum_{k}": v for k, v in self.buffers.items()}

    def load_state(self, tensors: dict[str, torch.Tensor], steps: int) -> None:
        self.steps = steps
        self.buffers = {int(name.removeprefix("momentum_")): t.clone() for name, t in tensors.items()}


def ratio_bound(b1: float, b2: float) -> float:
    """The largest |m / sqrt(v_hat)| exact arithmetic allows (inf when b1^2 >= b2: no bound)."""
    if b2 <= 0 or b1 * b1 >= b2:
        return math.inf
    return (1 - b1) / math.sqrt((1 - b2) * (1 - b1 * b1 / b2))


def _with_weight_decay(
    direction: torch.Tensor, params: torch.Tensor, wd: float, scratch: torch.Tensor | None
) -> torch.Tensor:
    if wd == 0:
        return direction
    assert scratch is not None
    return torch.add(direction, params, alpha=wd, out=scratch)


def make_optimizer(params: torch.Tensor, cfg: OptimizerConfig) -> ServerOptimizer:
    if cfg.name == "amsgrad":
        return PaperAMSGrad(params, cfg) if cfg.form == "paper" else TorchAdam(params, cfg, amsgrad=True)
    if cfg.name == "adam":
        return TorchAdam(params, cfg, amsgrad=False)
    if cfg.name == "sgd":
        return SGD(params, cfg)
    raise ValueError(f"unknown optimizer {cfg.name!r}")
