"""Observations of the artificial-delay report beyond the stated expectations, each computed from the runs."""

from __future__ import annotations

from experiments.common.stats import mean_std


def observations(groups, paper, checkpoints: list[int]) -> list[str]:
    out = _dips(groups, checkpoints) + _paper_early(groups, paper, checkpoints[0]) + _evaluation_timing(groups, paper)
    return ["- " + o for o in out]


def _dips(groups, checkpoints: list[int]) -> list[str]:
    """Delays whose mean accuracy falls between two early checkpoints: large delays make early training erratic."""
    dips = []
    for g in groups:
        accs = [mean_std(g.acc_at(c))[0] for c in checkpoints]
        for (c0, a0), (c1, a1) in zip(zip(checkpoints, accs), zip(checkpoints[1:], accs[1:])):
            if a0 is not None and a1 is not None and a1 < a0:
                dips.append(f"for D = {g.delay} from {a0:.3f} @{c0} to {a1:.3f} @{c1}")
    if not dips:
        return ["The mean test accuracy of every D rises from one early checkpoint to the next."]
    return [
        f"Early accuracy is not monotone in time for the largest delays: the mean falls {'; '.join(dips)} "
        f"(the curves show the dips; the seeds' spread there is large, see the std in the table)."
    ]


def _paper_early(groups, paper, at: int) -> list[str]:
    """The paper form has no bias correction, so its first steps are larger (3.16x at betas (0.9, 0.999))."""
    torch_acc = {g.delay: mean_std(g.acc_at(at))[0] for g in groups}
    rows = [(g.delay, mean_std(g.acc_at(at))[0], torch_acc.get(g.delay)) for g in paper]
    rows = [(d, p, t) for d, p, t in rows if p is not None and t is not None]
    if not rows:
        return []
    return [
        f"At {at} updates the paper form is ahead of the torch form at D = "
        f"{', '.join(str(d) for d, p, t in rows if p > t) or 'none'} "
        f"({', '.join(f'D={d}: {p:.3f} vs {t:.3f}' for d, p, t in rows)}): without bias correction its first "
        f"steps are larger."
    ]


def _evaluation_timing(groups, paper) -> list[str]:
    firsts = [min((m["updates"] for m in p.metrics), default=None) for g in (*groups, *paper) for p in g.ok]
    firsts = [f for f in firsts if f is not None]
    if not firsts:
        return []
    return [
        f"The evaluator scores parameter snapshots on a clock, and it starts with the workers: the first "
        f"evaluation of a run came at update {min(firsts)} to {max(firsts)}, so an early checkpoint can lack a "
        f"seed (marked (k/n) in the tables)."
    ]
