"""Tables, expectation checks, computed observations and the figure of part (b): digits MLP, SGD, constant
delay, lr rules."""

from __future__ import annotations

import math
import statistics
import warnings

import matplotlib.pyplot as plt
import numpy as np

from experiments.common.report import table
from experiments.common.stats import curve_on_grid, mean_std, pm, rolling
from experiments.stability_edge.mlp import PICK_TOL, MlpRuns
from experiments.stability_edge.mlp_stats import CHANCE, SPIKE_WINDOW, RunStats, groups, stats
from protocol.config.loader import load_experiment
from ps.policy import stable_lr_threshold
from worker.tasks.data import load_dataset

Groups = list[tuple[str, list[RunStats]]]


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
    lam = list(runs.init_sharpness.values())
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
    seeds = ", ".join(f"seed {k}: {v:.3f}" for k, v in sorted(runs.init_sharpness.items()))
    return f"Sharpness at the initial parameters: {seeds} (mean {np.mean(lam):.3f}).\n\n" + table(
        ["setting", "lr applied", "lr x lambda at init", "threshold", "below it"], rows
    )


def verdicts(gs: Groups, n_test: int) -> list[str]:
    base = gs[0][1]
    b_mean, b_std, _ = mean_std([s.acc for s in base])
    out = []
    for label, ss in gs[1:]:
        m, sd, _ = mean_std([s.acc for s in ss])
        pooled = math.sqrt(((b_std or 0) ** 2 + (sd or 0) ** 2) / 2)
        tol = max(2 * pooled, 1 / n_test)  # "within noise": two pooled std, at least one test sample
        gap = None if m is None or b_mean is None else m - b_mean
        failed = sum(s.failed for s in ss)
        txt = f"{label}: {failed}/{len(ss)} runs did not train; mean final accuracy " + (
            "-" if gap is None else f"{m:.4f}, {gap * 100:+.2f} points vs tau 0 (noise band +-{tol * 100:.2f})"
        )
        if ss[0].rule == "constant":
            worse = failed > 0 or gap is None or gap < -tol
            txt += f" -> unscaled lr unstable or worse: {'holds' if worse else 'does not hold'}"
        else:
            ok = failed == 0 and gap is not None and abs(gap) <= tol
            txt += f" -> recovers the tau 0 accuracy within noise: {'holds' if ok else 'does not hold'}"
        out.append("- " + txt + ".")
    return out


def observations(runs: MlpRuns, gs: Groups) -> list[str]:
    """What the numbers above say about why, each sentence computed from them."""
    lam0 = list(runs.init_sharpness.values())
    lo, hi = runs.lr0 * min(lam0), runs.lr0 * max(lam0)
    taus = sorted({s.tau for _, ss in gs[1:] for s in ss})
    above = [t for t in taus if lo > stable_lr_threshold(t)]
    out = [
        f"At initialization lr0 x lambda = {lo:.3f} to {hi:.3f} over the seeds: below 2 (tau 0) and above the "
        f"threshold at tau = {', '.join(map(str, above)) or 'none'} "
        f"({', '.join(f'{stable_lr_threshold(t):.4g}' for t in above)}), so the constant rule is linearly "
        f"unstable there from the first update. The stability rule keeps lr x lambda / threshold at "
        f"lr0 x lambda / 2 for every tau, the margin tau 0 has."
    ]
    out += [_constant_rule(label, ss) for label, ss in gs[1:] if ss[0].rule == "constant"]
    out += _final_minima(gs) + _grid_edge(runs, max(lam0))
    return ["- " + o for o in out]


def _constant_rule(label: str, ss: list[RunStats]) -> str:
    peaks = [s.spike[0] for s in ss if s.spike[0] is not None]
    at = [s.spike[1] for s in ss if s.spike[1] is not None]
    ratios = [s.lr_sharpness / stable_lr_threshold(s.tau) for s in ss if s.lr_sharpness is not None]
    settled = all(r < 1 for r in ratios)
    late = [m["train_loss"] for s in ss for m in s.point.metrics if m.get("updates", 0) >= _last(s) / 2]
    return (
        f"{label}: the pushed minibatch loss peaks at {min(peaks):.3g} to {max(peaks):.3g} (mean of {SPIKE_WINDOW} "
        f"pushes; ln(classes) = {ss[0].chance_loss:.3f}) around push {min(at)}-{max(at)}, then the model stays at "
        f"chance: the full training loss over the second half of the runs ranges {min(late):.4f}-{max(late):.4f}; "
        f"at the end lr x lambda is {min(ratios):.2f}-{max(ratios):.2f} of the threshold, "
        + ("below it." if settled else "above it: the uniform-guess state is itself not stable at this delay.")
    )


def _last(s: RunStats) -> int:
    return max((m.get("updates", 0) for m in s.point.metrics), default=0)


def _final_minima(gs: Groups) -> list[str]:
    parts = []
    for label, ss in gs:
        ratios = [s.lr_sharpness / stable_lr_threshold(s.tau) for s in ss if not s.failed and s.lr_sharpness]
        if ratios:
            parts.append(f"{label}: {np.mean(ratios):.3f}")
    if not parts:
        return []
    return [
        f"At the final parameters of the runs that trained, lr x lambda / threshold (mean over seeds) is "
        f"{'; '.join(parts)}: no trained run ends at the edge, and the tau 0 runs end far below it (their "
        f"cross-entropy is near 0, where it is flat); the rules are told apart in the first hundred pushes."
    ]


def _grid_edge(runs: MlpRuns, lam0_max: float) -> list[str]:
    crossed = [s for s in (stats(p, runs) for p in runs.grid.points) if s.failed and s.lr * lam0_max < 2]
    if not crossed:
        return []
    return [
        f"At tau 0, lr = {', '.join(f'{s.lr:g}' for s in crossed)} did not train although lr x lambda at "
        f"initialization is below 2 ({', '.join(f'{s.lr * lam0_max:.2f}' for s in crossed)} with the largest "
        f"seed's lambda): the tau 0 edge is crossed after the start, as the sharpness grows early in training "
        f"(not measured along the trajectory here)."
    ]


def figure(gs: Groups, updates: int):
    taus = sorted({s.tau for _, ss in gs[1:] for s in ss})
    fig, axes = plt.subplots(2, len(taus), figsize=(5.5 * len(taus), 6), squeeze=False)
    grid = np.linspace(0, updates, 201)
    for col, tau in enumerate(taus):
        for label, ss in gs:
            if ss[0].tau not in (0, tau):
                continue
            style = {"color": "k", "lw": 1.5} if ss[0].tau == 0 else {"lw": 1}
            pushed = [
                rolling(
                    [x for x, a in zip(s.point.updates["loss"], s.point.updates["applied"]) if a == 1], SPIKE_WINDOW
                )
                for s in ss
                if s.point.ok and s.point.updates.get("loss")
            ]
            if pushed:
                n = min(len(x) for x in pushed)
                axes[0][col].plot(np.median([x[:n] for x in pushed], axis=0), label=label, **style)
            accs = np.array([curve_on_grid(s.point.metrics, "test_acc", grid) for s in ss if s.point.ok])
            if len(accs):
                with warnings.catch_warnings():  # grid points before a run's first evaluation are NaN
                    warnings.simplefilter("ignore", RuntimeWarning)
                    axes[1][col].plot(grid, np.nanmedian(accs, axis=0), label=label, **style)
        axes[0][col].set(
            title=f"tau = {tau}: pushed minibatch loss (mean of {SPIKE_WINDOW}, median over seeds)",
            yscale="log",
            xlabel="pushes",
        )
        axes[1][col].set(title=f"tau = {tau}: test accuracy (median over seeds)", xlabel="updates", ylim=(0, 1))
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(9)
    axes[1][0].legend(fontsize=8)
    return fig


def report(runs: MlpRuns, updates: int) -> tuple[list[str], dict]:
    gs = groups(runs)
    cfg = load_experiment(runs.base.points[0].folder / "config.yaml")
    data = load_dataset(cfg.task)
    n_test, n_train = len(data.x_test), len(data.x_train)
    t = cfg.task
    setup = (
        f"{cfg.workers} worker, {t.model} {list(t.hidden)} on {t.dataset}, batch {t.batch_size}, SGD without "
        f"momentum, `staleness.delay: constant` (tau = delay_versions - 1), {updates} updates per run, seeds "
        f"{sorted({p.values['seed'] for p in runs.base.points})}. lr0 = **{runs.lr0:g}**, picked by the tau = 0 "
        f"grid below (the largest lr within {PICK_TOL * 100:g} point of the grid's best accuracy). 'Did not "
        f"train': the run failed or its final training loss is at least {CHANCE:g} ln(classes) (a uniform guess "
        f"scores ln(classes)). 'Pushed loss': the worker's minibatch loss at the (stale) parameters it was sent, "
        f"from updates.csv, so spikes between evaluations show. Sharpness lambda: top eigenvalue of the "
        f"full-batch training-loss Hessian (power iteration on Hessian-vector products); delayed SGD's minimum is "
        f"linearly stable when lr x lambda < 2 sin(pi/(2(2tau+1))). Against R5 (b) in docs/algorithms.md (MNIST, the "
        f"reference's fully connected net at width 256, batch 128, lr0 0.1, about 10 epochs): MNIST is not on "
        f"this machine and nothing is downloaded, so the digits MLP; lr0 is tuned at tau = 0 instead, and "
        f"{updates} updates of {t.batch_size} samples are {updates * t.batch_size / n_train:.0f} epochs."
    )
    parts = [
        "### Setup",
        setup,
        "### lr grid at tau = 0 (seed 0)",
        grid_table(runs),
        "### Delay and lr rules (mean ± sample std over seeds)",
        main_table(gs),
        "### Stability at the start",
        init_table(runs, gs),
        "### Expectations against the measurements",
        "\n".join(verdicts(gs, n_test)),
        "### What the measurements say",
        "\n".join(observations(runs, gs)),
    ]
    return parts, {"mlp": figure(gs, updates)}
