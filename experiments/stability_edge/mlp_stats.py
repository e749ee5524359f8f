"""Per-run figures of part (b): final accuracy and loss, the loss spike, the applied lr and the sharpness."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from functools import cached_property

from experiments.common.stats import rolling
from experiments.common.sweeps import Point
from experiments.stability_edge.mlp import MlpRuns
from protocol.config.loader import load_experiment
from worker.tasks.data import load_dataset

CHANCE = 0.9  # a final training loss above 0.9 ln(classes) has learnt next to nothing (uniform guess: ln(classes))
SPIKE_WINDOW = 50  # pushed minibatch losses are averaged over this many pushes before taking the peak


@dataclass
class RunStats:
    point: Point
    tau: int
    rule: str
    lr: float  # the lr applied once every push is tau stale (median over those pushes)
    sharpness: float | None  # at the final parameters
    chance_loss: float  # ln(classes): the loss of a uniform guess

    @property
    def acc(self) -> float | None:
        return self.point.summary.get("final_test_acc") if self.point.ok and self.point.summary else None

    @property
    def loss(self) -> float | None:
        return self.point.summary.get("final_train_loss") if self.point.ok and self.point.summary else None

    @property
    def failed(self) -> bool:
        """Did not train: the run failed, or its final training loss is at chance level or not finite."""
        return self.loss is None or not math.isfinite(self.loss) or self.loss >= CHANCE * self.chance_loss

    @cached_property
    def spike(self) -> tuple[float | None, int | None]:
        """(peak, push index) of the workers' minibatch loss, averaged over SPIKE_WINDOW pushes (updates.csv)."""
        u = self.point.updates
        losses = [x for x, a in zip(u.get("loss", []), u.get("applied", [])) if a == 1 and math.isfinite(x)]
        if not losses:
            return None, None
        smooth = rolling(losses, SPIKE_WINDOW)
        i = int(smooth.argmax())
        return float(smooth[i]), i

    @property
    def lr_sharpness(self) -> float | None:
        return None if self.sharpness is None else self.lr * self.sharpness


def stats(point: Point, runs: MlpRuns) -> RunStats:
    tau = int(point.values.get("staleness.delay_versions", 1)) - 1
    rule = point.values.get("staleness.lr_rule", "constant")
    u = point.updates
    rows = zip(u.get("lr", []), u.get("applied", []), u.get("staleness", []))
    steady = [lr for lr, applied, tau_k in rows if applied == 1 and tau_k == tau]
    lr = statistics.median(steady) if steady else float(point.values.get("optimizer.lr", runs.lr0))
    cfg = load_experiment(point.folder / "config.yaml")
    classes = load_dataset(cfg.task).num_classes or 1
    return RunStats(point, tau, rule, lr, runs.sharpness.get(point.folder), math.log(classes))


def groups(runs: MlpRuns) -> list[tuple[str, list[RunStats]]]:
    """The tau = 0 baseline first, then one group of seeds per (tau, rule) in run order."""
    out = [("tau 0 (all rules give lr0)", [stats(p, runs) for p in runs.base.points])]
    by: dict[tuple[int, str], list[RunStats]] = {}
    for p in runs.delayed.points:
        s = stats(p, runs)
        by.setdefault((s.tau, s.rule), []).append(s)
    return out + [(f"tau {tau}, {rule}", ss) for (tau, rule), ss in by.items()]
