"""Tables, expectation checks and the figure of part (b): digits MLP, SGD, constant delay, lr rules."""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np

from experiments.common import Point, curve_on_grid, mean_std, pm, table
from experiments.edge_mlp import PICK_TOL, MlpRuns
from launch.config import load_experiment
from ps.policy import stable_lr_threshold
from worker.tasks.data import load_dataset

CHANCE = 0.9  # a final training loss above 0.9 ln(classes) has learnt next to nothing (uniform guess: ln(classes))


@dataclass
class RunStats:
    point: Point
    tau: int
    rule: str
    lr: float  # the lr applied once every push is tau stale (median over those pushes)
    sharpness: float | None
    chance_loss: float

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

    @property
    def peak_late(self) -> float | None:
        late = [m["train_loss"] for m in self.point.metrics if m.get("updates", 0) >= self._updates / 2]
        return max(late) if late else None

    @property
    def _updates(self) -> int:
        return max((m.get("updates", 0) for m in self.point.metrics), default=0)

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
    return RunStats(point, tau, rule, lr, runs.sharpness.get(point.folder), math.log(_classes(cfg)))


def _classes(cfg) -> int:
    return load_dataset(cfg.task).num_classes or 1


def grid_table(runs: MlpRuns) -> str:
    rows = []
    for p in runs.grid.points:
        s = stats(p, runs)
        rows.append([f"{p.values['optimizer.lr']:g}", _f(s.acc), _f(s.loss), _f(s.peak_late), _f(s.sharpness, 3),
                     _f(s.lr_sharpness, 3), "yes" if s.failed else "no", "" if p.ok else p.error.splitlines()[0]])
    return table(["lr (tau = 0)", "final test acc", "final train loss", "peak train loss, 2nd half",
                  "sharpness lambda", "lr x lambda (edge: 2)", "did not train", "error"], rows)


def _f(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def groups(runs: MlpRuns) -> list[tuple[str, list[RunStats]]]:
    out = [("tau 0 (all rules give lr0)", [stats(p, runs) for p in runs.base.points])]
    by: dict[tuple[int, str], list[RunStats]] = {}
    for p in runs.delayed.points:
        s = stats(p, runs)
        by.setdefault((s.tau, s.rule), []).append(s)
    return out + [(f"tau {tau}, {rule}", ss) for (tau, rule), ss in by.items()]


def main_table(gs: list[tuple[str, list[RunStats]]]) -> str:
    rows = []
    for label, ss in gs:
        tau = ss[0].tau
        below = [s.lr_sharpness < stable_lr_threshold(tau) for s in ss if s.lr_sharpness is not None]
        rows.append([label, f"{statistics.median(s.lr for s in ss):.4g}", pm([s.acc for s in ss]),
                     pm([s.loss for s in ss]), pm([s.peak_late for s in ss], 3),
                     f"{sum(s.failed for s in ss)}/{len(ss)}",
                     pm([s.sharpness for s in ss], 2), pm([s.lr_sharpness for s in ss], 3),
                     f"{stable_lr_threshold(tau):.4g}", f"{sum(below)}/{len(below)}"])
    return table(["setting", "lr applied", "final test acc", "final train loss", "peak train loss, 2nd half",
                  "did not train", "sharpness lambda", "lr x lambda", "threshold 2 sin(pi/(2(2tau+1)))",
                  "lr x lambda below it"], rows)


def verdicts(gs: list[tuple[str, list[RunStats]]], n_test: int) -> list[str]:
    base = gs[0][1]
    b_mean, b_std, _ = mean_std([s.acc for s in base])
    out = []
    taus = sorted({s.tau for _, ss in gs[1:] for s in ss})
    for label, ss in gs[1:]:
        m, sd, _ = mean_std([s.acc for s in ss])
        pooled = math.sqrt(((b_std or 0) ** 2 + (sd or 0) ** 2) / 2)
        tol = max(2 * pooled, 1 / n_test)  # "within noise": two pooled std, at least one test sample
        gap = None if m is None or b_mean is None else m - b_mean
        failed = sum(s.failed for s in ss)
        txt = f"{label}: {failed}/{len(ss)} runs did not train; mean final accuracy " + (
            "-" if gap is None else f"{m:.4f}, {gap * 100:+.2f} points vs tau 0 (noise band +-{tol * 100:.2f})")
        if ss[0].rule == "constant" and ss[0].tau == taus[-1]:
            worse = failed > 0 or gap is None or gap < -tol
            txt += f" -> unscaled lr unstable or worse: {'holds' if worse else 'does not hold'}"
        elif ss[0].rule != "constant":
            ok = failed == 0 and gap is not None and abs(gap) <= tol
            txt += f" -> recovers the tau 0 accuracy within noise: {'holds' if ok else 'does not hold'}"
        out.append("- " + txt + ".")
    return out


def figure(gs: list[tuple[str, list[RunStats]]], updates: int):
    taus = sorted({s.tau for _, ss in gs[1:] for s in ss})
    fig, axes = plt.subplots(2, len(taus), figsize=(5.5 * len(taus), 6), squeeze=False)
    grid = np.linspace(0, updates, 201)
    for col, tau in enumerate(taus):
        for label, ss in gs:
            if ss[0].tau not in (0, tau):
                continue
            style = {"color": "k", "lw": 1.5} if ss[0].tau == 0 else {"lw": 1}
            for row, key in enumerate(("train_loss", "test_acc")):
                curves = np.array([curve_on_grid(s.point.metrics, key, grid) for s in ss if s.point.ok])
                if len(curves):
                    with warnings.catch_warnings():  # grid points before a run's first evaluation are NaN
                        warnings.simplefilter("ignore", RuntimeWarning)
                        axes[row][col].plot(grid, np.nanmedian(curves, axis=0), label=label, **style)
        axes[0][col].set(title=f"tau = {tau}: training loss (median over seeds)", yscale="log")
        axes[1][col].set(title=f"tau = {tau}: test accuracy", xlabel="updates", ylim=(0, 1))
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(9)
    axes[1][0].legend(fontsize=8)
    return fig


def report(runs: MlpRuns, updates: int) -> tuple[list[str], dict]:
    gs = groups(runs)
    first = next(p for p in runs.base.points)
    cfg = load_experiment(first.folder / "config.yaml")
    n_test = len(load_dataset(cfg.task).x_test)
    t = cfg.task
    setup = (f"{cfg.workers} worker, {t.model} {list(t.hidden)} on {t.dataset}, batch {t.batch_size}, SGD without "
             f"momentum, `staleness.delay: constant` (tau = delay_versions - 1), {updates} updates per run, seeds "
             f"{sorted({p.values['seed'] for p in runs.base.points})}. lr0 = **{runs.lr0:g}**, picked by the tau = 0 "
             f"grid below (the largest lr within {PICK_TOL * 100:g} point of the grid's best accuracy). 'Did not "
             f"train': the run failed or its final training loss is at least {CHANCE:g} ln(classes) (a uniform guess "
             f"scores ln(classes)). Sharpness lambda: top eigenvalue of the full-batch training-loss Hessian at the "
             f"final parameters (power iteration on Hessian-vector products); delayed SGD's minimum is linearly "
             f"stable when lr x lambda < 2 sin(pi/(2(2tau+1))).")
    parts = ["### Setup", setup, "### lr grid at tau = 0 (seed 0)", grid_table(runs),
             "### Delay and lr rules (mean ± sample std over seeds)", main_table(gs),
             "### Expectations against the measurements", "\n".join(verdicts(gs, n_test))]
    return parts, {"mlp": figure(gs, updates)}
