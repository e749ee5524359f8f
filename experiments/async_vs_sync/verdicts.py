"""The issue's expectations, each judged from the measured runs (the wording: report.md.tmpl)."""

from __future__ import annotations

import numpy as np

from experiments.async_vs_sync.analysis import TARGET, RunFigures
from experiments.common.stats import mean_std
from experiments.common.sweeps import data_sizes
from experiments.common.templates import Prose

prose = Prose(__package__)
FINAL_GAP = 0.005  # "both end within half a point of each other"


def _ts(runs: list[RunFigures]) -> list[float]:
    return [r.t_target for r in runs if r.t_target is not None]


def _fmt(values: list[float], digits: int = 1, unit: str = " s") -> str:
    m, s, n = mean_std(values)
    if m is None:
        return "-"
    return f"{m:.{digits}f}{unit}" + ("" if s is None else f" ± {s:.{digits}f}") + f" (n={n})"


def faster(asyn: list[RunFigures], sync: list[RunFigures], what: str) -> str:
    """'Async reaches the target in clearly less wall time': every async run before every sync run."""
    ta, ts = _ts(asyn), _ts(sync)
    target = f"{TARGET:.0%}"
    if not ta or not ts:
        return prose("faster_unmeasurable", target=target, what=what, mode="async" if not ta else "sync")
    missing = [f"{r.mode} seed {r.seed}" for r in asyn + sync if r.t_target is None]
    clearly = max(ta) < min(ts) and not missing
    on_average = np.mean(ta) < np.mean(ts)
    verdict = "holds" if clearly else (prose("holds_on_average") if on_average else "does not hold")
    return prose(
        "faster",
        target=target,
        what=what,
        asyn=_fmt(ta),
        sync=_fmt(ts),
        ratio=f"{np.mean(ts) / np.mean(ta):.1f}",
        slowest=f"{max(ta):.2f}",
        fastest=f"{min(ts):.2f}",
        never=prose("never_reached", runs=", ".join(missing)) if missing else "",
        verdict=verdict,
    )


def final_close(asyn: list[RunFigures], sync: list[RunFigures], what: str) -> str:
    fa = [r.final_acc for r in asyn if r.final_acc is not None]
    fs = [r.final_acc for r in sync if r.final_acc is not None]
    if not fa or not fs:
        return prose("final_unmeasurable", what=what)
    gap = float(np.mean(fa) - np.mean(fs))
    late = _late(asyn, sync)
    return prose(
        "final_close",
        what=what,
        asyn=_fmt(fa, 4, ""),
        sync=_fmt(fs, 4, ""),
        gap=f"{100 * gap:+.2f}",
        verdict="holds" if abs(gap) <= FINAL_GAP else "does not hold",
        test_step=f"{100 / data_sizes((asyn + sync)[0].point.folder)[1]:.2f}",
        gap_se=_gap_se(fa, fs),
        late=" " + late if late else "",
    )


def _gap_se(fa: list[float], fs: list[float]) -> str:
    """The seed-to-seed standard error of the difference of the two means (Welch)."""
    if len(fa) < 2 or len(fs) < 2:
        return ""
    se = np.sqrt(np.var(fa, ddof=1) / len(fa) + np.var(fs, ddof=1) / len(fs))
    return prose("gap_se", se=f"{100 * se:.2f}")


def _late(asyn: list[RunFigures], sync: list[RunFigures]) -> str:
    """The test accuracy over the last fifth of each run: the final value is one evaluation among many."""
    la = [r.late_acc for r in asyn if r.late_acc]
    ls = [r.late_acc for r in sync if r.late_acc]
    if not la or not ls:
        return ""
    ma, ms = np.mean([m for m, _ in la]), np.mean([m for m, _ in ls])
    return prose(
        "late_accuracy",
        asyn=f"{ma:.4f}",
        sync=f"{ms:.4f}",
        gap=f"{100 * (ma - ms):+.2f}",
        scatter=f"{100 * np.mean([s for _, s in la + ls]):.2f}",
    )


def scaling_lines(runs: list[RunFigures], workers: tuple[int, ...]) -> list[str]:
    """Throughput and time-to-target against the ideal, per mode, at the largest N."""
    if not runs:
        return []
    top, lowest, lines = max(workers), min(workers), []
    for mode in ("async", "sync"):
        one = [r for r in runs if r.mode == mode and r.workers == lowest]
        many = [r for r in runs if r.mode == mode and r.workers == top]
        if not one or not many:
            continue
        t1, tn = _ts(one), _ts(many)
        speed = prose("not_measurable")
        if t1 and tn:
            speed = prose("speedup", factor=f"{np.mean(t1) / np.mean(tn):.1f}", lowest=lowest)
        lines.append(
            prose(
                "scaling_line",
                mode=mode,
                top=top,
                rate=f"{np.mean([r.gradients_per_s for r in many]):.0f}",
                efficiency=f"{np.mean([r.efficiency for r in many]):.0%}",
                ideal=f"{np.mean([r.ideal_gradients_per_s for r in many]):.0f}",
                target=f"{TARGET:.0%}",
                speed=speed,
                ideal_speed=top // lowest,
            )
        )
    return lines
