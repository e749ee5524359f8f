"""The R4 (ii) report: the tuning table, the best step size per method repeated over seeds, the verdicts
against the poster's ratios, and the figures (||grad f||^2 against bits/n, final value against the step size)."""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np

from experiments.common.report import table
from experiments.common.stats import mean_std
from experiments.common.sweeps import Point, Sweep
from experiments.ef21_logreg.bits import NAMES, TAIL, Curve, curve, final, on_grid
from experiments.ef21_logreg.text import reading_text, setup_text

COLORS = {"ef21": "tab:red", "ef21-sgdm": "tab:blue", "ef21-sgd2m": "tab:green", "ef14": "tab:gray"}
MOMENTUM = ("ef21-sgdm", "ef21-sgd2m")
POSTER = {1: (20, 30), 128: (3, 10)}  # the ratio EF21-SGD / momentum method the poster's curves show (R4 in
# docs/algorithms.md)
POSTER_LR = {
    (1, "ef21"): 2**-6,
    (1, "ef21-sgd2m"): 2**-5,
    (1, "ef21-sgdm"): 2**-7,
    (1, "ef14"): 2**-4,
    (128, "ef21"): 2**-6,
    (128, "ef21-sgd2m"): 2**-4,
    (128, "ef21-sgdm"): 2**-3,
    (128, "ef14"): 2**-2,
}


@dataclass
class Run:
    point: Point
    curve: Curve

    @property
    def lr(self) -> float:
        return float(self.point.values["optimizer.lr"])

    @property
    def seed(self) -> int:
        return int(self.point.values["seed"])


@dataclass
class Result:
    """One (batch, method) sweep: its runs, and the bits/n budget they are compared at."""

    batch: int
    method: str
    runs: list[Run]
    budget: float = 0.0  # set by the caller: the common bits/n budget of the comparison

    @classmethod
    def of(cls, sweep: Sweep, batch: int, method: str) -> Result:
        runs = [Run(p, curve(p)) for p in sweep.points if p.ok and p.metrics]
        res = cls(batch, method, runs)
        # the longest run sets the budget: a run that stopped early (diverged) then scores None, not a shorter budget
        res.budget = max((r.curve.bits[-1] for r in runs if r.curve.bits.size), default=0.0)
        return res

    def finals(self, lr: float | None = None) -> list[float | None]:
        return [final(r.curve, self.budget) for r in self.runs if lr is None or r.lr == lr]


def pick(res: Result) -> float | None:
    """The step size with the lowest final ||grad f||^2 (mean over its runs); None if none finished."""
    scored = [(mean_std(res.finals(lr))[0], lr) for lr in sorted({r.lr for r in res.runs})]
    scored = [(v, lr) for v, lr in scored if v is not None]
    return min(scored)[1] if scored else None


def _lr_text(lr: float) -> str:
    return f"2^{int(np.log2(lr))} = {lr:g}" if lr > 0 and float(np.log2(lr)).is_integer() else f"{lr:g}"


def tuning_table(tuned: dict[tuple[int, str], Result]) -> str:
    lrs = sorted({r.lr for res in tuned.values() for r in res.runs})
    rows = []
    for (batch, method), res in tuned.items():
        best = pick(res)
        cells = []
        for lr in lrs:
            if not any(r.lr == lr for r in res.runs):
                cells.append("")
                continue
            m = mean_std(res.finals(lr))[0]
            text = "stopped early" if m is None else f"{m:.3g}"
            cells.append(f"**{text}**" if lr == best else text)
        edge = (
            ""
            if best is None
            or best not in (min(r.lr for r in res.runs), max(r.lr for r in res.runs))
            or len({r.lr for r in res.runs}) == 1
            else " (grid edge)"
        )
        rows.append(
            [
                batch,
                NAMES[method],
                *cells,
                "-" if best is None else _lr_text(best) + edge,
                _lr_text(POSTER_LR[(batch, method)]),
            ]
        )
    return table(["B", "method", *(_lr_text(lr) for lr in lrs), "best gamma", "poster's gamma"], rows)


def best_runs(res: Result, repeat: Result | None) -> tuple[float | None, list[Run]]:
    """The picked step size and all its runs (the tuning seed plus the repeats)."""
    lr = pick(res)
    runs = [r for r in res.runs if r.lr == lr] + (repeat.runs if repeat else [])
    return lr, runs


def final_of(runs: list[Run], budget: float) -> list[float | None]:
    return [final(r.curve, budget) for r in runs]


def results_table(batch: int, best: dict[str, tuple[float | None, list[Run]]], budget: float) -> str:
    ref = mean_std(final_of(best["ef21"][1], budget))[0] if "ef21" in best else None
    rows = []
    for method, (lr, runs) in best.items():
        values = final_of(runs, budget)
        m = mean_std(values)[0]
        ratio = "-" if m is None or ref is None else f"{ref / m:.2f}x"
        rows.append(
            [
                NAMES[method],
                "-" if lr is None else _lr_text(lr),
                ", ".join(str(r.seed) for r in runs),
                _sci(values),
                _sci([min(r.curve.grad_norm_sq) for r in runs]),
                ratio,
            ]
        )
    return table(
        [
            "method",
            "gamma",
            "seeds",
            "final ||grad f||^2 (mean ± std over seeds)",
            "lowest evaluation seen",
            "EF21-SGD final / this",
        ],
        rows,
    )


def _sci(values: list[float | None]) -> str:
    m, s, n = mean_std(values)
    if m is None:
        return "-"
    return f"{m:.3g}" + ("" if s is None else f" ± {s:.2g}") + ("" if n == len(values) else f" ({n}/{len(values)})")


def verdicts(
    best_by_batch: dict[int, dict[str, tuple[float | None, list[Run]]]], budgets: dict[int, float]
) -> list[str]:
    lines = []
    for batch, best in best_by_batch.items():
        if "ef21" not in best:
            continue
        base = final_of(best["ef21"][1], budgets[batch])
        ref = mean_std(base)[0]
        lo, hi = POSTER[batch]
        for method in MOMENTUM:
            if method not in best or ref is None:
                continue
            values = final_of(best[method][1], budgets[batch])
            m = mean_std(values)[0]
            if m is None:
                lines.append(f"- B = {batch}, {NAMES[method]} vs EF21-SGD: no finished run to compare.")
                continue
            below = m < ref
            separated = max(v for v in values if v is not None) < min(v for v in base if v is not None)
            lines.append(
                f"- **B = {batch}: {NAMES[method]} below EF21-SGD at {budgets[batch]:.3g} bits/n**: "
                f"{m:.3g} against {ref:.3g}, ratio {ref / m:.2f}x (poster: about {lo}-{hi}x) -> "
                + (
                    "holds"
                    if below and separated
                    else "holds on the means, but the seeds overlap"
                    if below
                    else "does not hold"
                )
                + (
                    ""
                    if not below
                    else "; the ratio is "
                    + ("inside" if lo <= ref / m <= hi else "above" if ref / m > hi else "below")
                    + " the poster's range"
                )
                + "."
            )
    return lines


def figure_curves(best_by_batch, budgets: dict[int, float]):
    fig, axes = plt.subplots(1, len(best_by_batch), figsize=(5.2 * len(best_by_batch), 3.8), squeeze=False)
    for ax, (batch, best) in zip(axes[0], best_by_batch.items()):
        grid = np.linspace(0, budgets[batch], 400)
        for method, (lr, runs) in best.items():
            if not runs:
                continue
            ys = np.array([on_grid(r.curve, grid) for r in runs])
            with np.errstate(all="ignore"):
                mean = np.nanmean(ys, axis=0) if len(runs) > 1 else ys[0]
            ax.plot(
                grid,
                mean,
                color=COLORS[method],
                lw=1.1,
                ls="--" if method == "ef14" else "-",
                label=f"{NAMES[method]} gamma {lr:g}",
            )
        ax.set_yscale("log")
        ax.set_xlabel("bits / n (uplink, per worker)")
        ax.set_ylabel("||grad f(x)||^2")
        ax.set_title(f"batch {batch} (mean over {max(len(r) for _, r in best.values())} seeds)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return fig


def figure_tuning(tuned: dict[tuple[int, str], Result]):
    batches = sorted({b for b, _ in tuned})
    fig, axes = plt.subplots(1, len(batches), figsize=(5.2 * len(batches), 3.4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        for (b, method), res in tuned.items():
            if b != batch:
                continue
            lrs = sorted({r.lr for r in res.runs})
            ys = [mean_std(res.finals(lr))[0] for lr in lrs]
            ax.plot(lrs, [np.nan if y is None else y for y in ys], "o-", color=COLORS[method], label=NAMES[method])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("step size gamma")
        ax.set_ylabel(f"final ||grad f||^2 (last {TAIL:.0%} of bits)")
        ax.set_title(f"tuning, batch {batch}, seed 0")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return fig


def report_body(
    plan, tune: dict[tuple[int, str], Sweep], repeat: dict[tuple[int, str], Sweep]
) -> tuple[list[str], dict]:
    """tune and repeat: the sweeps by (batch, method)."""
    tuned = {key: Result.of(s, *key) for key, s in tune.items()}
    repeats = {key: Result.of(s, *key) for key, s in repeat.items()}
    batches = sorted({b for b, _ in tuned})
    best_by_batch, budgets = {}, {}
    for batch in batches:
        best = {m: best_runs(res, repeats.get((b, m))) for (b, m), res in tuned.items() if b == batch}
        best_by_batch[batch] = best
        ends = [r.curve.bits[-1] for _, runs in best.values() for r in runs if r.curve.bits.size]
        budgets[batch] = max(ends) if ends else 0.0  # as in Result.of
    body = [
        *setup_text(plan, tuned),
        "## Tuning (seed 0)",
        tuning_table(tuned),
        "![final gradient norm against the step size](img/ef21_logreg_tuning.png)",
        "## Best step size per method, repeated over seeds",
    ]
    for batch in batches:
        body += [f"### Batch {batch}", results_table(batch, best_by_batch[batch], budgets[batch])]
    body += [
        "![gradient norm against bits per worker](img/ef21_logreg_curves.png)",
        "## Expectations against the measurements",
        "\n".join(verdicts(best_by_batch, budgets)),
        *reading_text(best_by_batch, budgets),
    ]
    return body, {"curves": figure_curves(best_by_batch, budgets), "tuning": figure_tuning(tuned)}
