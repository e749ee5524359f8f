"""Observations of the artificial-delay report beyond the stated expectations, each computed from the runs
(their wording: report.md.tmpl)."""

from __future__ import annotations

from experiments.common.stats import mean_std
from experiments.common.templates import Prose

prose = Prose(__package__)


def observations(groups, paper, checkpoints: list[int]) -> list[str]:
    return _dips(groups, checkpoints) + _paper_early(groups, paper, checkpoints[0]) + _evaluation_timing(groups, paper)


def _dips(groups, checkpoints: list[int]) -> list[str]:
    """Delays whose mean accuracy falls between two early checkpoints: large delays make early training erratic."""
    dips = []
    for g in groups:
        accs = [mean_std(g.acc_at(c))[0] for c in checkpoints]
        for (c0, a0), (c1, a1) in zip(zip(checkpoints, accs), zip(checkpoints[1:], accs[1:])):
            if a0 is not None and a1 is not None and a1 < a0:
                dips.append(
                    prose("dip", delay=g.delay, before=f"{a0:.3f}", at_before=c0, after=f"{a1:.3f}", at_after=c1)
                )
    return [prose("dips", dips="; ".join(dips)) if dips else prose("no_dips")]


def _paper_early(groups, paper, at: int) -> list[str]:
    """The paper form has no bias correction, so its first steps are larger (3.16x at betas (0.9, 0.999))."""
    torch_acc = {g.delay: mean_std(g.acc_at(at))[0] for g in groups}
    rows = [(g.delay, mean_std(g.acc_at(at))[0], torch_acc.get(g.delay)) for g in paper]
    rows = [(d, p, t) for d, p, t in rows if p is not None and t is not None]
    if not rows:
        return []
    ahead = ", ".join(str(d) for d, p, t in rows if p > t) or "none"
    pairs = ", ".join(f"D={d}: {p:.3f} vs {t:.3f}" for d, p, t in rows)
    return [prose("paper_early", at=at, ahead=ahead, pairs=pairs)]


def _evaluation_timing(groups, paper) -> list[str]:
    firsts = [min((m["updates"] for m in p.metrics), default=None) for g in (*groups, *paper) for p in g.ok]
    firsts = [f for f in firsts if f is not None]
    if not firsts:
        return []
    return [prose("evaluation_timing", first=min(firsts), last=max(firsts))]
