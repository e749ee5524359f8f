"""Staleness policy: what the server does with a push of staleness tau. Pure rules, no I/O.

Learning-rate rules (docs/algorithms.md, Learning-rate rules), from each push's tau or the running mean of recent taus:
    constant   lr0
    inverse    lr0 / max(1, tau)                          (Zhang et al. 2016)
    stability  lr0 * sin(pi / (2 (2 tau + 1)))            (At Stability's Edge: the delayed-SGD stability
                                                           bound; lr0 at tau = 0, ~0.785 lr0 / tau for large tau)
Bound: pushes with tau > max_staleness are dropped (the worker continues from fresh parameters), or
down-weighted: lr *= max_staleness / tau.

What down-weighting means depends on the optimizer: the rules scale the step size of the one iteration
the push makes, not the push's share of the optimizer's state. For SGD without momentum that is the same
as scaling the gradient. For SGD with momentum and for Adam/AMSGrad the push still enters the momentum
buffer (and m, v, v_hat) at full weight and moves later steps too. A weight of 0 (max_staleness: 0) is a
drop: the push changes nothing at all. The running mean (lr_from: mean) holds the staleness of applied
pushes only, so dropped pushes do not inflate it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from protocol.config.schema import StalenessConfig
from ps.schedule import lr_factor


@dataclass(frozen=True)
class Decision:
    accept: bool
    lr: float
    reason: str = "ok"


def lr_scale(rule: str, tau: float) -> float:
    if rule == "constant":
        return 1.0
    if rule == "inverse":
        return 1.0 / max(1.0, tau)
    if rule == "stability":
        return math.sin(math.pi / (2 * (2 * max(0.0, tau) + 1)))
    raise ValueError(f"unknown lr rule {rule!r}")


def stable_lr_threshold(tau: float, curvature: float = 1.0) -> float:
    """The largest stable lr of SGD with constant delay tau on curvature lambda: 2 sin(pi/(2(2tau+1)))/lambda."""
    return 2 * math.sin(math.pi / (2 * (2 * tau + 1))) / curvature


class StalenessPolicy:
    def __init__(
        self, base_lr: float, cfg: StalenessConfig | None = None, schedule: str = "constant", horizon: int = 1
    ):
        self.base_lr = base_lr
        self.schedule, self.horizon = schedule, horizon
        self.cfg = cfg or StalenessConfig()
        self._recent: deque[int] = deque(maxlen=self.cfg.mean_window)
        self.dropped = 0

    def state(self) -> dict:
        return {"recent": list(self._recent), "dropped": self.dropped}

    def load_state(self, facts: dict) -> None:
        self._recent.clear()
        self._recent.extend(int(t) for t in facts["recent"])
        self.dropped = int(facts["dropped"])

    def decide(self, tau: int, version: int = 0) -> Decision:
        """Accept or drop a push of staleness tau arriving at `version`, and the lr of its step."""
        cfg = self.cfg
        scale = 1.0
        bound = cfg.max_staleness
        if bound is not None and tau > bound:
            scale = bound / tau if cfg.over_bound == "downweight" else 0.0
            if scale == 0.0:  # drop, or a weight of 0: the push changes nothing
                self.dropped += 1
                return Decision(False, 0.0, "stale")
        self._recent.append(tau)  # applied pushes only
        basis = sum(self._recent) / len(self._recent) if cfg.lr_from == "mean" else tau
        lr0 = self.base_lr * lr_factor(self.schedule, version, self.horizon)
        return Decision(True, lr0 * scale * lr_scale(cfg.lr_rule, basis))
