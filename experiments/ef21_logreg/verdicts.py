"""The R4 (ii) expectation, judged per batch size and momentum method: below EF21-SGD at the same bits/n,
and by about the poster's ratio (the wording: report.md.tmpl)."""

from __future__ import annotations

from experiments.common.stats import mean_std
from experiments.common.templates import Prose
from experiments.ef21_logreg.bits import NAMES
from experiments.ef21_logreg.poster import POSTER
from experiments.ef21_logreg.results import Run, final_of

prose = Prose(__package__)
MOMENTUM = ("ef21-sgdm", "ef21-sgd2m")
Best = dict[str, tuple[float | None, list[Run]]]  # method -> (picked step size, its runs over seeds)


def verdicts(best_by_batch: dict[int, Best], budgets: dict[int, float]) -> list[str]:
    lines = []
    for batch, best in best_by_batch.items():
        if "ef21" not in best:
            continue
        base = final_of(best["ef21"][1], budgets[batch])
        if mean_std(base)[0] is None:
            continue
        lines += [_verdict(batch, m, best[m][1], base, budgets[batch]) for m in MOMENTUM if m in best]
    return lines


def _verdict(batch: int, method: str, runs: list[Run], base: list[float | None], budget: float) -> str:
    ref = mean_std(base)[0]
    values = final_of(runs, budget)
    m = mean_std(values)[0]
    if m is None:
        return prose("no_run", batch=batch, method=NAMES[method])
    lo, hi = POSTER[batch]
    below = m < ref
    separated = max(v for v in values if v is not None) < min(v for v in base if v is not None)
    verdict = "holds" if below and separated else prose("seeds_overlap") if below else "does not hold"
    where = "inside" if lo <= ref / m <= hi else "above" if ref / m > hi else "below"
    return prose(
        "verdict",
        batch=batch,
        method=NAMES[method],
        budget=f"{budget:.3g}",
        value=f"{m:.3g}",
        reference=f"{ref:.3g}",
        ratio=f"{ref / m:.2f}",
        low=lo,
        high=hi,
        verdict=verdict,
        range=prose("poster_range", where=where) if below else "",
    )
