"""The R4 (ii) report's tables: the tuning grid, the best step size per method over seeds, and the final
levels next to the poster's."""

from __future__ import annotations

import numpy as np

from experiments.common.report import table
from experiments.common.stats import mean_std
from experiments.ef21_logreg.bits import NAMES, final
from experiments.ef21_logreg.poster import POSTER_LEVELS, POSTER_LR
from experiments.ef21_logreg.results import Result, Run, final_of, pick


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


def levels_table(best_by_batch, budgets) -> str:
    """The final level of each best step size next to the level the poster's MNIST curves end at."""
    rows = []
    for batch, best in best_by_batch.items():
        for method, (_, runs) in best.items():
            m = mean_std([final(r.curve, budgets[batch]) for r in runs])[0]
            lo, hi = POSTER_LEVELS[batch][method]
            poster = f"{lo:.0e}" if lo == hi else f"{lo:.0e} to {hi:.0e}"
            rows.append([batch, NAMES[method], "-" if m is None else f"{m:.3g}", poster])
    return table(["B", "method", "final here", "poster (MNIST, read off the figure)"], rows)
