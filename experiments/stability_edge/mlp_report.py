"""Part (b) of the stability report, digits MLP, SGD, constant delay, lr rules: its tables, expectations
checked and observations, each computed from the runs (their wording: report.md.tmpl)."""

from __future__ import annotations

import math
import statistics

import numpy as np

from experiments.common.report import table
from experiments.common.stats import mean_std, pm
from experiments.common.templates import Prose
from experiments.stability_edge.mlp import PICK_TOL, MlpRuns
from experiments.stability_edge.mlp_stats import CHANCE, SPIKE_WINDOW, RunStats, stats
from protocol.config.loader import load_experiment
from ps.policy import stable_lr_threshold
from worker.tasks.data import load_dataset

Groups = list[tuple[str, list[RunStats]]]
prose = Prose(__package__)


def _f(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def grid_table(runs: MlpRuns) -> str:
    rows = []
    for p in runs.grid.points:
        s = stats(p, runs)
        rows.append(
            [
                f"{p.values['optimizer.lr']:g}",
                _f(s.acc),
                _f(s.loss),
                _f(s.spike[0]),
                _f(s.sharpness, 3),
                _f(s.lr_sharpness, 3),
                "yes" if s.failed else "no",
                "" if p.ok else p.error.splitlines()[0],
            ]
        )
    return table(
        [
            "lr (tau = 0)",
            "final test acc",
            "final train loss",
            f"peak pushed loss (mean of {SPIKE_WINDOW})",
            "final sharpness lambda",
            "lr x lambda (edge: 2)",
            "did not train",
            "error",
        ],
        rows,
    )


def main_table(gs: Groups) -> str:
    rows = []
    for label, ss in gs:
        tau = ss[0].tau
        below = [s.lr_sharpness < stable_lr_threshold(tau) for s in ss if s.lr_sharpness is not None]
        at = [s.spike[1] for s in ss if s.spike[1] is not None]
        rows.append(
            [
                label,
                f"{statistics.median(s.lr for s in ss):.4g}",
                pm([s.acc for s in ss]),
                pm([s.loss for s in ss]),
                pm([s.spike[0] for s in ss], 3),
                f"{statistics.median(at):.0f}" if at else "-",
                f"{sum(s.failed for s in ss)}/{len(ss)}",
                pm([s.sharpness for s in ss], 2),
                pm([s.lr_sharpness for s in ss], 3),
                f"{stable_lr_threshold(tau):.4g}",
                f"{sum(below)}/{len(below)}",
            ]
        )
    return table(
        [
            "setting",
            "lr applied",
            "final test acc",
            "final train loss",
            f"peak pushed loss (mean of {SPIKE_WINDOW})",
            "at push (median)",
            "did not train",
            "final sharpness lambda",
            "lr x lambda",
            "threshold 2 sin(pi/(2(2tau+1)))",
            "lr x lambda below it",
        ],
        rows,
    )


def init_table(runs: MlpRuns, gs: Groups) -> str:
    """Linear stability at the start: every run of a seed starts from the same parameters."""
    rows = []
    for label, ss in gs:
        products = [
            s.lr * runs.init_sharpness[int(s.point.values["seed"])]
            for s in ss
            if int(s.point.values["seed"]) in runs.init_sharpness
        ]
        thr = stable_lr_threshold(ss[0].tau)
        rows.append(
            [
                label,
                f"{statistics.median(s.lr for s in ss):.4g}",
                pm(products, 3),
                f"{thr:.4g}",
                f"{sum(x < thr for x in products)}/{len(products)}",
            ]
        )
    return prose(
        "init_sharpness",
        seeds=", ".join(f"seed {k}: {v:.3f}" for k, v in sorted(runs.init_sharpness.items())),
        mean=f"{np.mean(list(runs.init_sharpness.values())):.3f}",
        table=table(["setting", "lr applied", "lr x lambda at init", "threshold", "below it"], rows),
    )


def verdicts(gs: Groups, n_test: int) -> list[str]:
    b_mean, b_std, _ = mean_std([s.acc for s in gs[0][1]])
    out = []
    for label, ss in gs[1:]:
        m, sd, _ = mean_std([s.acc for s in ss])
        pooled = math.sqrt(((b_std or 0) ** 2 + (sd or 0) ** 2) / 2)
        tol = max(2 * pooled, 1 / n_test)  # "within noise": two pooled std, at least one test sample
        gap = None if m is None or b_mean is None else m - b_mean
        failed = sum(s.failed for s in ss)
        if ss[0].rule == "constant":
            claim, holds = "claim_constant", failed > 0 or gap is None or gap < -tol
        else:
            claim, holds = "claim_scaled", failed == 0 and gap is not None and abs(gap) <= tol
        accuracy = (
            "-"
            if gap is None
            else prose("rule_accuracy", mean=f"{m:.4f}", gap=f"{gap * 100:+.2f}", band=f"{tol * 100:.2f}")
        )
        out.append(
            prose(
                "rule_verdict",
                label=label,
                failed=failed,
                runs=len(ss),
                accuracy=accuracy,
                claim=prose(claim),
                verdict="holds" if holds else "does not hold",
            )
        )
    return out


def observations(runs: MlpRuns, gs: Groups) -> list[str]:
    """What the numbers above say about why, each sentence computed from them."""
    lam0 = list(runs.init_sharpness.values())
    lo, hi = runs.lr0 * min(lam0), runs.lr0 * max(lam0)
    taus = sorted({s.tau for _, ss in gs[1:] for s in ss})
    above = [t for t in taus if lo > stable_lr_threshold(t)]
    out = [
        prose(
            "init_observation",
            low=f"{lo:.3f}",
            high=f"{hi:.3f}",
            taus=", ".join(map(str, above)) or "none",
            thresholds=", ".join(f"{stable_lr_threshold(t):.4g}" for t in above),
        )
    ]
    out += [_constant_rule(label, ss) for label, ss in gs[1:] if ss[0].rule == "constant"]
    return out + _final_minima(gs) + _grid_edge(runs, max(lam0))


def _constant_rule(label: str, ss: list[RunStats]) -> str:
    peaks = [s.spike[0] for s in ss if s.spike[0] is not None]
    at = [s.spike[1] for s in ss if s.spike[1] is not None]
    ratios = [s.lr_sharpness / stable_lr_threshold(s.tau) for s in ss if s.lr_sharpness is not None]
    late = [m["train_loss"] for s in ss for m in s.point.metrics if m.get("updates", 0) >= _last(s) / 2]
    return prose(
        "constant_rule",
        label=label,
        peak_low=f"{min(peaks):.3g}",
        peak_high=f"{max(peaks):.3g}",
        window=SPIKE_WINDOW,
        chance_loss=f"{ss[0].chance_loss:.3f}",
        at_first=min(at),
        at_last=max(at),
        late_low=f"{min(late):.4f}",
        late_high=f"{max(late):.4f}",
        ratio_low=f"{min(ratios):.2f}",
        ratio_high=f"{max(ratios):.2f}",
        settled=prose("settled_below" if all(r < 1 for r in ratios) else "settled_above"),
    )


def _last(s: RunStats) -> int:
    return max((m.get("updates", 0) for m in s.point.metrics), default=0)


def _final_minima(gs: Groups) -> list[str]:
    parts = []
    for label, ss in gs:
        ratios = [s.lr_sharpness / stable_lr_threshold(s.tau) for s in ss if not s.failed and s.lr_sharpness]
        if ratios:
            parts.append(f"{label}: {np.mean(ratios):.3f}")
    return [prose("final_minima", ratios="; ".join(parts))] if parts else []


def _grid_edge(runs: MlpRuns, lam0_max: float) -> list[str]:
    crossed = [s for s in (stats(p, runs) for p in runs.grid.points) if s.failed and s.lr * lam0_max < 2]
    if not crossed:
        return []
    lrs = ", ".join(f"{s.lr:g}" for s in crossed)
    return [prose("grid_edge", lrs=lrs, products=", ".join(f"{s.lr * lam0_max:.2f}" for s in crossed))]


def setup_text(runs: MlpRuns, updates: int) -> str:
    """The setup as the runs' own config.yaml and data set say it was."""
    cfg = load_experiment(runs.base.points[0].folder / "config.yaml")
    t = cfg.task
    return prose(
        "mlp_setup",
        workers=cfg.workers,
        model=t.model,
        hidden=list(t.hidden),
        dataset=t.dataset,
        batch=t.batch_size,
        updates=updates,
        seeds=sorted({p.values["seed"] for p in runs.base.points}),
        lr0=f"{runs.lr0:g}",
        pick_tol=f"{PICK_TOL * 100:g}",
        chance=f"{CHANCE:g}",
        epochs=f"{updates * t.batch_size / len(load_dataset(t).x_train):.0f}",
    )


def n_test_samples(runs: MlpRuns) -> int:
    """Test samples in the runs' data set (one of them is the smallest accuracy difference there is)."""
    return len(load_dataset(load_experiment(runs.base.points[0].folder / "config.yaml").task).x_test)
