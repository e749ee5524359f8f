"""The issue's expectations, each judged from the measured runs, and the observations that explain them."""

from __future__ import annotations

import numpy as np

from experiments.async_vs_sync.analysis import TARGET, RunFigures
from experiments.common.stats import mean_std

FINAL_GAP = 0.005  # "both end within half a point of each other"
CPU_BUSY = 1.5  # cores (of 2) above which a run counts as CPU-bound


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
    missing = [f"{r.mode} seed {r.seed}" for r in asyn + sync if r.t_target is None]
    if not ta or not ts:
        return (
            f"- **Async reaches {TARGET:.0%} in clearly less wall time** ({what}): not measurable "
            f"(no run of {'async' if not ta else 'sync'} reached {TARGET:.0%})."
        )
    clearly = max(ta) < min(ts) and not missing
    ratio = np.mean(ts) / np.mean(ta)
    verdict = "holds" if clearly else ("does not hold" if np.mean(ta) >= np.mean(ts) else "holds only on average")
    note = f"; never reached: {', '.join(missing)}" if missing else ""
    return (
        f"- **Async reaches {TARGET:.0%} in clearly less wall time** ({what}): async {_fmt(ta)}, sync "
        f"{_fmt(ts)}; sync / async = {ratio:.1f}x; slowest async run {max(ta):.2f} s, fastest sync run "
        f"{min(ts):.2f} s{note} -> {verdict} (criterion: every async run reached it before every sync run)."
    )


def final_close(asyn: list[RunFigures], sync: list[RunFigures], what: str) -> str:
    fa = [r.final_acc for r in asyn if r.final_acc is not None]
    fs = [r.final_acc for r in sync if r.final_acc is not None]
    if not fa or not fs:
        return f"- **Final accuracies within half a point** ({what}): not measurable."
    gap = float(np.mean(fa) - np.mean(fs))
    verdict = "holds" if abs(gap) <= FINAL_GAP else "does not hold"
    return (
        f"- **Final accuracies within half a point** ({what}, after the same number of gradients): async "
        f"{_fmt(fa, 4, '')}, sync {_fmt(fs, 4, '')}; async - sync = {100 * gap:+.2f} points -> {verdict} "
        f"(one test sample is 0.28 points{_gap_se(fa, fs)}).{_late(asyn, sync)}"
    )


def _gap_se(fa: list[float], fs: list[float]) -> str:
    """The seed-to-seed standard error of the difference of the two means (Welch)."""
    if len(fa) < 2 or len(fs) < 2:
        return ""
    se = np.sqrt(np.var(fa, ddof=1) / len(fa) + np.var(fs, ddof=1) / len(fs))
    return f"; the difference's standard error over seeds is {100 * se:.2f} points"


def _late(asyn: list[RunFigures], sync: list[RunFigures]) -> str:
    """The test accuracy over the last fifth of each run: the final value is one evaluation among many."""
    la = [r.late_acc for r in asyn if r.late_acc]
    ls = [r.late_acc for r in sync if r.late_acc]
    if not la or not ls:
        return ""
    ma, ms = np.mean([m for m, _ in la]), np.mean([m for m, _ in ls])
    sd = np.mean([s for _, s in la + ls])
    return (
        f" Averaged over every evaluation in the last fifth of each run instead: async {ma:.4f}, sync "
        f"{ms:.4f}, async - sync = {100 * (ma - ms):+.2f} points; within a run, those evaluations scatter "
        f"with a std of {100 * sd:.2f} points (mean over runs), so one final evaluation is a noisy figure."
    )


def scaling_lines(runs: list[RunFigures], workers: tuple[int, ...]) -> list[str]:
    """Throughput and time-to-target against the ideal, per mode, at the largest N."""
    if not runs:
        return []
    top, lines = max(workers), []
    for mode in ("async", "sync"):
        one = [r for r in runs if r.mode == mode and r.workers == min(workers)]
        many = [r for r in runs if r.mode == mode and r.workers == top]
        if not one or not many:
            continue
        eff = np.mean([r.efficiency for r in many])
        t1, tn = _ts(one), _ts(many)
        speed = f"{np.mean(t1) / np.mean(tn):.1f}x faster than with {min(workers)}" if t1 and tn else "not measurable"
        lines.append(
            f"- **Scaling, {mode}**: at N = {top}, {np.mean([r.gradients_per_s for r in many]):.0f} "
            f"gradients/s = {eff:.0%} of the ideal {np.mean([r.ideal_gradients_per_s for r in many]):.0f}/s; "
            f"time to {TARGET:.0%} {speed} (ideal {top // min(workers)}x, if N gradients at once were "
            f"worth N in a row)."
        )
    return lines


def observations(straggler: list[RunFigures], scaling: list[RunFigures]) -> list[str]:
    out = []
    asyn = [r for r in straggler if r.mode == "async"]
    sync = [r for r in straggler if r.mode == "sync"]
    ga, gs = (
        [r.grads_at_target for r in asyn if r.grads_at_target],
        [r.grads_at_target for r in sync if r.grads_at_target],
    )
    if ga and gs:
        out.append(
            f"- Gradients to {TARGET:.0%} (same lr): async {np.mean(ga):.0f} (steps of 32 samples, staleness "
            f"mean {np.mean([r.staleness_mean for r in asyn]):.1f}), sync {np.mean(gs):.0f} = "
            f"{np.mean(gs) / sync[0].workers:.0f} steps of {sync[0].workers * sync[0].batch_size} samples. "
            + (
                "Per gradient, sync's averaged steps were worth less than async's stale ones: at the same lr "
                "an AMSGrad step moves about as far whatever the batch, and async takes N times as many."
                if np.mean(gs) > np.mean(ga)
                else "Per gradient, sync's averaged steps were worth at least as much as async's stale ones."
            )
        )
    if sync:
        step = np.mean([r.wall_s / r.steps for r in sync if r.steps])
        ideal = np.mean([r.workers / r.ideal_gradients_per_s for r in sync])
        coll = np.mean([r.collective_ms for r in sync if r.collective_ms is not None])
        out.append(
            f"- A sync step took {1000 * step:.1f} ms against the straggler's {1000 * ideal:.1f} ms per "
            f"gradient: every round waits for rank 3, and the all-reduce itself (the fastest rank's time "
            f"in it, i.e. the straggler's) cost {coll:.1f} ms."
        )
    if asyn and asyn[0].slow_share is not None:
        share = np.mean([r.slow_share for r in asyn])
        rates = 1 / np.array([f for f in asyn[0].point.values["slowdown"]], dtype=float)
        out.append(
            f"- Async: the straggler contributed {share:.1%} of the applied gradients (its share of the "
            f"ideal rates is {rates[rates < 1].sum() / rates.sum():.1%}); the others did not wait for it. "
            f"Async ran at {np.mean([r.efficiency for r in asyn]):.0%} of its ideal rate, sync at "
            f"{np.mean([r.efficiency for r in sync]):.0%} of its own."
            if sync
            else ""
        )
    cpu = [(r.mode, r.cpu_cores) for r in straggler + scaling if r.cpu_cores is not None]
    if cpu:
        peak = max(cpu, key=lambda x: x[1])
        verdict = (
            "well below the 2 cores: the simulated compute, not the CPU, set the pace"
            if peak[1] < CPU_BUSY
            else f"at least one run came near the 2 cores ({CPU_BUSY:g} or more): there CPU contention slowed everyone"
        )
        mean = np.mean([c for _, c in cpu])
        out.append(
            f"- CPU: during training all the processes of a run together used {mean:.2f} cores on average, "
            f"the most {peak[1]:.2f} cores ({peak[0]}); {verdict} (psutil samples every 0.2 s over the "
            f"middle half of each run)."
        )
    return [o for o in out if o]
