"""The artificial-delay runs grouped by D: per-D tables over seeds, the staleness histograms' fit to
U{0..D-1}, and the expectations checked against the measured numbers (their wording: report.md.tmpl)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2

from experiments.common.report import table
from experiments.common.stats import mean_std, pm, value_at
from experiments.common.sweeps import Point
from experiments.common.templates import Prose
from protocol.config.loader import load_experiment
from worker.tasks.data import load_dataset

EARLY = (0.05, 0.1, 0.2, 0.4)  # early checkpoints, as fractions of the run's updates
TOLERANCE = 0.005  # "final accuracy within about half a point across D"
P_UNIFORM = 0.001  # a staleness histogram fails the uniformity check below this chi-square p-value

prose = Prose(__package__)


@dataclass
class DelayGroup:
    delay: int  # D: staleness ~ U{0..D-1}
    points: list[Point]

    @property
    def ok(self) -> list[Point]:
        return [p for p in self.points if p.ok]

    def finals(self, key: str = "final_test_acc") -> list[float | None]:
        return [p.summary.get(key) for p in self.ok]

    def acc_at(self, at: float) -> list[float | None]:
        return [value_at(p.metrics, "test_acc", at) for p in self.ok]

    def staleness_counts(self) -> np.ndarray:
        """Counts of tau = 0..max over the seeds, once the server holds D versions (warm-up left out)."""
        taus = []
        for p in self.ok:
            u = p.updates
            taus += [int(s) for s, a, v in zip(u["staleness"], u["applied"], u["version"]) if a == 1 and v > self.delay]
        return np.bincount(np.array(taus, dtype=int), minlength=self.delay) if taus else np.zeros(self.delay)


def by_delay(points: list[Point]) -> list[DelayGroup]:
    groups: dict[int, list[Point]] = {}
    for p in points:
        groups.setdefault(int(p.values["staleness.delay_versions"]), []).append(p)
    return [DelayGroup(d, ps) for d, ps in sorted(groups.items())]


def uniformity(g: DelayGroup) -> tuple[int, int, float, int, float | None]:
    """(pushes counted, largest tau seen, chi-square, degrees of freedom, p) against U{0..D-1}."""
    counts = g.staleness_counts()
    n = int(counts.sum())
    if g.delay == 1 or n == 0:
        return n, int(np.flatnonzero(counts).max(initial=0)), 0.0, 0, None
    expected = n / g.delay
    stat = float(((counts[: g.delay] - expected) ** 2 / expected).sum())
    p = 0.0 if counts[g.delay :].any() else float(chi2.sf(stat, g.delay - 1))  # a tau >= D is simply wrong
    return n, int(np.flatnonzero(counts).max()), stat, g.delay - 1, p


def checkpoints(updates: int) -> list[int]:
    return [int(f * updates) for f in EARLY]


def results_table(groups: list[DelayGroup], updates: int) -> str:
    cps = checkpoints(updates)
    head = [
        "D",
        "max delay",
        "seeds",
        *(f"test acc @{c}" for c in cps),
        f"final test acc (@{updates})",
        "final train loss",
        "mean tau",
    ]
    rows = []
    for g in groups:
        taus = [p.summary.get("staleness_mean") for p in g.ok]
        rows.append(
            [
                g.delay,
                g.delay - 1,
                f"{len(g.ok)}/{len(g.points)}",
                *(pm(g.acc_at(c)) for c in cps),
                pm(g.finals()),
                pm(g.finals("final_train_loss")),
                pm(taus, 1),
            ]
        )
    return table(head, rows)


def staleness_table(groups: list[DelayGroup]) -> str:
    rows = []
    for g in groups:
        n, top, stat, dof, p = uniformity(g)
        rows.append([g.delay, n, top, f"{stat:.1f}" if dof else "-", dof or "-", "-" if p is None else f"{p:.3g}"])
    return table(["D", "pushes counted", "largest tau", "chi-square vs U{0..D-1}", "dof", "p"], rows)


def _means(groups: list[DelayGroup], values) -> list[float | None]:
    return [mean_std(values(g))[0] for g in groups]


def verdicts(groups: list[DelayGroup], paper: list[DelayGroup], updates: int) -> list[str]:
    out = [_final_verdict(groups)] if all(f is not None for f in _means(groups, DelayGroup.finals)) else []
    out.append(_early_verdict(groups, updates))
    out += _uniform_verdict(groups) + _paper_verdict(groups, paper)
    return out


def _early_verdict(groups: list[DelayGroup], updates: int) -> str:
    mono, monotone = [], 0
    for c in checkpoints(updates):
        accs = _means(groups, lambda g, c=c: g.acc_at(c))
        if any(a is None for a in accs):
            mono.append(prose("early_not_evaluated", at=c))
            continue
        ok = all(a >= b for a, b in zip(accs, accs[1:]))
        monotone += ok
        listed = ", ".join(f"D={g.delay}: {a:.3f}" for g, a in zip(groups, accs))
        mono.append(prose("early_checkpoint", at=c, accuracies=listed, order="monotone" if ok else "not monotone"))
    return prose("early_verdict", monotone=monotone, checkpoints=len(mono), by_checkpoint="; ".join(mono))


def _uniform_verdict(groups: list[DelayGroup]) -> list[str]:
    delayed = [g for g in groups if g.delay > 1]
    tests = [uniformity(g) for g in delayed]
    worst = min((t[4] for t in tests if t[4] is not None), default=None)
    if worst is None:
        return []
    in_range = all(t[1] == g.delay - 1 for t, g in zip(tests, delayed))
    verdict = "holds" if worst >= P_UNIFORM and in_range else "does not hold"
    return [prose("uniform_verdict", worst_p=f"{worst:.3g}", in_range=in_range, verdict=verdict, threshold=P_UNIFORM)]


def _final_verdict(groups: list[DelayGroup]) -> str:
    finals = _means(groups, DelayGroup.finals)
    losses = _means(groups, lambda g: g.finals("final_train_loss"))
    spread = max(finals) - min(finals)
    step = sample_step(groups)
    verdict = "holds"
    if spread > TOLERANCE:
        over = spread - TOLERANCE
        verdict = prose(
            "final_not_strict",
            over=f"{over * 100:.2f}",
            less_or_more="less" if over < step else "more",
            test_step=f"{step * 100:.2f}",
        )
    return prose(
        "final_verdict",
        tolerance=f"{TOLERANCE * 100:.1f}",
        spread=f"{spread * 100:.2f}",
        lowest=f"{min(finals):.4f}",
        highest=f"{max(finals):.4f}",
        verdict=verdict,
        loss_first=f"{losses[0]:.4f}",
        d_first=groups[0].delay,
        loss_last=f"{losses[-1]:.4f}",
        d_last=groups[-1].delay,
        loss_ratio=f"{losses[-1] / losses[0]:.1f}",
        converging=prose("still_converging") if losses[-1] > 1.5 * losses[0] else ".",
    )


def sample_step(groups: list[DelayGroup]) -> float:
    """One test sample's worth of accuracy (accuracies are multiples of it), from the runs' data set."""
    first = next(p for g in groups for p in g.ok)
    return 1 / len(load_dataset(load_experiment(first.folder / "config.yaml").task).x_test)


def _paper_verdict(groups: list[DelayGroup], paper: list[DelayGroup]) -> list[str]:
    pf = {g.delay: mean_std(g.finals())[0] for g in paper}
    tf = {g.delay: mean_std(g.finals())[0] for g in groups}
    common = [d for d in tf if pf.get(d) is not None and tf[d] is not None]
    if not common:
        return []
    diffs = [pf[d] - tf[d] for d in common]
    spread = max(pf[d] for d in common) - min(pf[d] for d in common)
    close = [d for d, x in zip(common, diffs) if abs(x) <= TOLERANCE]
    everywhere = len(close) == len(common)
    verdict = "holds" if everywhere else prose("paper_holds_at", delays=", ".join(map(str, close)) or "none")
    return [
        prose(
            "paper_verdict",
            tolerance=f"{TOLERANCE * 100:.1f}",
            differences=", ".join(f"D={d}: {x * 100:+.2f}" for d, x in zip(common, diffs)),
            verdict=verdict,
            spread=f"{spread * 100:.2f}",
        )
    ]
