"""The artificial-delay report: per-D tables over seeds, the staleness histograms' fit to U{0..D-1}, the
expectations checked against the measured numbers, and the figures (experiments/artificial_delay/plots.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2

from experiments.artificial_delay.notes import observations
from experiments.artificial_delay.plots import figures
from experiments.common.report import table
from experiments.common.stats import mean_std, pm
from experiments.common.sweeps import Point
from protocol.config.loader import load_experiment
from worker.tasks.data import load_dataset

EARLY = (0.05, 0.1, 0.2, 0.4)  # early checkpoints, as fractions of the run's updates
TOLERANCE = 0.005  # "final accuracy within about half a point across D"
P_UNIFORM = 0.001  # a staleness histogram fails the uniformity check below this chi-square p-value


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
        from experiments.common.stats import value_at

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
    mono, monotone = [], 0
    for c in checkpoints(updates):
        accs = _means(groups, lambda g, c=c: g.acc_at(c))
        if any(a is None for a in accs):
            mono.append(f"@{c}: not evaluated for every D")
            continue
        ok = all(a >= b for a, b in zip(accs, accs[1:]))
        monotone += ok
        listed = ", ".join(f"D={g.delay}: {a:.3f}" for g, a in zip(groups, accs))
        mono.append(f"@{c} updates: {listed} ({'monotone' if ok else 'not monotone'})")
    out.append(
        f"**Early progress slower as D grows**: the mean test accuracy falls monotonically with D at {monotone} "
        f"of {len(mono)} early checkpoints. By increasing D: " + "; ".join(mono) + "."
    )
    tests = [uniformity(g) for g in groups if g.delay > 1]
    worst = min((t[4] for t in tests if t[4] is not None), default=None)
    if worst is not None:
        in_range = all(t[1] == g.delay - 1 for t, g in zip(tests, [g for g in groups if g.delay > 1]))
        out.append(
            f"**Staleness uniform on 0..D-1**: smallest chi-square p over the D > 1 = {worst:.3g}; "
            f"largest tau = D - 1 for every D: {in_range} -> "
            f"{'holds' if worst >= P_UNIFORM and in_range else 'does not hold'} (threshold p >= {P_UNIFORM})."
        )
    out += _paper_verdict(groups, paper)
    return ["- " + v for v in out]


def _final_verdict(groups: list[DelayGroup]) -> str:
    finals = _means(groups, DelayGroup.finals)
    losses = _means(groups, lambda g: g.finals("final_train_loss"))
    spread = max(finals) - min(finals)
    step = _test_step(groups)
    if spread <= TOLERANCE:
        verdict = "holds"
    else:
        verdict = (
            f"does not hold strictly: {(spread - TOLERANCE) * 100:.2f} points over, "
            f"{'less' if spread - TOLERANCE < step else 'more'} than one test sample ({step * 100:.2f} points)"
        )
    return (
        f"**Final accuracy independent of D** (spread of the per-D means within {TOLERANCE * 100:.1f} points): "
        f"spread = {spread * 100:.2f} points (from {min(finals):.4f} to {max(finals):.4f}) -> {verdict}. Final "
        f"training loss: {losses[0]:.4f} at D = {groups[0].delay}, {losses[-1]:.4f} at D = {groups[-1].delay} "
        f"({losses[-1] / losses[0]:.1f}x)"
        + (
            ": the largest delays have not finished converging after the same number of updates."
            if losses[-1] > 1.5 * losses[0]
            else "."
        )
    )


def _test_step(groups: list[DelayGroup]) -> float:
    """One test sample's worth of accuracy (accuracies are multiples of it)."""
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
    verdict = "holds" if len(close) == len(common) else f"holds at D = {', '.join(map(str, close)) or 'none'} only"
    listed = ", ".join(f"D={d}: {x * 100:+.2f}" for d, x in zip(common, diffs))
    return [
        f"**Paper form lands at a similar final accuracy** (within {TOLERANCE * 100:.1f} points of the torch "
        f"form): paper minus torch form, per D: {listed} points -> {verdict}; spread of the paper form's per-D "
        f"means = {spread * 100:.2f} points."
    ]


def setup_text(groups: list[DelayGroup], paper: list[DelayGroup], updates: int) -> str:
    first = next(p for g in groups for p in g.ok)
    cfg = load_experiment(first.folder / "config.yaml")
    data = load_dataset(cfg.task)
    o, t = cfg.optimizer, cfg.task
    seeds = max(len(g.points) for g in groups)
    paper_seeds = max((len(g.points) for g in paper), default=0)
    return (
        f"{cfg.workers} worker, {t.model} {list(t.hidden)} on {t.dataset} ({len(data.x_train)} train / "
        f"{len(data.x_test)} test samples, so one test sample is {100 / len(data.x_test):.2f} points of "
        f"accuracy), batch {t.batch_size}, {o.name} lr {o.lr:g}, betas {list(o.betas)}, eps {o.eps:g} "
        f"(torch form; the paper form has none); staleness.delay {cfg.staleness.delay} with D in "
        f"{[g.delay for g in groups]}; {updates} updates per run; seeds per D: {seeds} for the torch form, "
        f"{paper_seeds} for the paper form. `worker.compute_s = {cfg.worker.compute_s:g}` paces the worker "
        f"so the evaluator (which scores the newest parameter snapshot about every 0.1 s) sees the early "
        f"updates densely; it changes no arithmetic. Accuracy at an update count is interpolated linearly "
        f"between the two evaluations around it ('-' where the first evaluation came later). Against R2 in "
        f"docs/algorithms.md "
        f"(AllCNN on CIFAR-10, 400 epochs, one GPU): a small model and data set that run in minutes on two "
        f"cores; {updates} updates of {t.batch_size} samples are {updates * t.batch_size / len(data.x_train):.0f} "
        f"epochs of the training set."
    )


def report_body(groups: list[DelayGroup], paper: list[DelayGroup], updates: int) -> tuple[list[str], dict]:
    figs = figures(groups, paper, updates, checkpoints(updates)[1])
    parts = [
        "## Setup",
        setup_text(groups, paper, updates),
        "## Expectations against the measurements",
        "\n".join(verdicts(groups, paper, updates)),
        "## Other observations",
        "\n".join(observations(groups, paper, checkpoints(updates))),
        "## Torch form (mean ± sample std over seeds)",
        results_table(groups, updates),
    ]
    if paper:
        parts += ["## Paper form (APAM Algorithm 1: no bias correction, no eps)", results_table(paper, updates)]
    parts += [
        "## Measured staleness (torch form, seeds pooled, warm-up of D pushes left out)",
        staleness_table(groups),
        "## Plots",
        *(f"![{name}](img/artificial_delay_{name}.png)" for name in figs),
    ]
    return parts, figs
