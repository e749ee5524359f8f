"""The prose of the noise-floor report: the setup (read from the runs), and what the numbers say, each
paragraph computed from the measured plateaus so that it cannot contradict them."""

from __future__ import annotations

import numpy as np

from experiments.common.sweeps import Sweep
from experiments.noise_floor.data import NOT_SHRINKING, RATIO, Curve, by_label, sgd_floor, slope

METHODS = {
    "ef21": "`ef21` (with stochastic gradients this is EF21-SGD)",
    "ef21-sgdm": "`ef21-sgdm` (EF21-SGDM, momentum weight eta on the new gradient)",
    "ef14": "`ef14` (EF14-SGD, the reference)",
}


def setup(curves: list[Curve], plan_parts: list[str], sweeps: dict[str, Sweep]) -> list[str]:
    missing = [p for p in plan_parts if p not in sweeps]
    failed = [
        f"{name}/{p.folder.name}: {p.error or 'failed'}" for name, s in sweeps.items() for p in s.points if not p.ok
    ]
    rounds = {
        n: sorted({int(c.last_round) + 1 for c in curves if c.sync and c.n == n}) for n in sorted({c.n for c in curves})
    }
    big = max(rounds) if rounds else 0
    short = [n for n, r in rounds.items() if r and max(r) < 10**4]
    rates = [c.summary.get("updates_per_s", 0.0) for c in curves if c.sync and c.n == big]
    per_proc = {
        c.summary.get("workers"): len([k for k in c.summary.get("processes", {}) if k.startswith("worker")])
        for c in curves
    }
    k = sorted({c.per_process for c in curves})
    methods = {c.method for c in curves}
    drift = [abs(c.quarters() - 1) for c in curves]
    worst = max(curves, key=lambda c: abs(c.quarters() - 1))
    text = [
        "## Setup",
        "f(x) = 1/2 ||x||^2 (`task.synthetic.kind: quadratic`, x* = 0), started at the optimum x^0 = 0, so f can "
        "only rise from 0 to the level the method's noise holds it at. Every worker's stochastic gradient is "
        "x + sigma xi with xi ~ N(0, I) from its own rank-seeded stream, sigma = 1; the uplink is Top-1 "
        "(`compressor: topk, k: 1`, exact, float32 values). Methods (`compression.method`): "
        + ", ".join(METHODS[m] for m in METHODS if m in methods)
        + "; EF21-family workers start with a dense "
        "push g_i = v_i = their first stochastic gradient. The server is SGD with step gamma on g = mean_i g_i"
        + (" (EF14: on the mean of the compressed pushes)." if "ef14" in methods else "."),
        "Everything runs through the launcher: one server process, one evaluator, and the workers; with n > 1 "
        "`staleness.apply_every: n` and `staleness.barrier: true` make the papers' synchronous rounds (the "
        "server holds every reply until all n pushes of a round are in, steps once, and every worker computes "
        f"the next gradient at the same x). The workers are hosted `worker.per_process: {'/'.join(map(str, k))}` "
        "ranks per process, "
        "each rank a full worker on its own thread with its own socket and seeds; worker processes per n: "
        + ", ".join(f"n = {n}: {k}" for n, k in sorted(per_proc.items()) if n)
        + ".",
        "Settings: **d100** is d = 100, gamma = 0.01, the repository's R3 config (`configs/quadratic_noise_floor"
        ".yaml`, chosen before this experiment: according to that config's comment R3's gamma = 0.1 "
        "(docs/algorithms.md) "
        "diverges at d = 100 with Top-1, which this experiment did not re-check; 0.01 is 2x EF21's theoretical step "
        "1/(L + L sqrt(beta/theta)) at alpha = 1/d). **d10** is d = 10 with "
        "R3's gamma = 0.1 (docs/algorithms.md), at the smallest d R3 allows, where that step is stable.",
        "Rounds: "
        + "; ".join(f"n = {n}: {'/'.join(map(str, r))}" for n, r in rounds.items() if r)
        + (
            f". R3's budget is 10^4 iterations; the runs with n = {', '.join(map(str, short))} are shorter "
            f"to keep the whole plan within ~15 minutes of a shared 2-core machine: a round is n pushes through one "
            f"server ({np.mean(rates):.1f} rounds/s measured at n = {big})."
            if short and rates
            else "."
        )
        + " The plateau averages the second half of a run. Whether that half is flat: the mean f over its last "
        f"quarter differs from the mean over its third quarter by {100 * np.median(drift):.0f}% in the median "
        f"run and at most {100 * max(drift):.0f}% ({worst.part}, {worst.label}); the per-run ratios are in the "
        "last table.",
    ]
    if missing:
        text.append("Parts of the plan not run into this folder (their rows are missing): " + ", ".join(missing) + ".")
    if failed:
        text.append("Runs that failed: " + "; ".join(failed) + ".")
    return text


def discussion(curves: list[Curve]) -> list[str]:
    out = ["## What the numbers say"]
    settings = list(dict.fromkeys(c.part.split("-")[0] for c in curves))
    explained = False
    for s in settings:
        sync = by_label([c for c in curves if c.sync and c.part.startswith(s + "-")])
        lines, why = _ef21_sgd(s, sync.get("EF21-SGD", {}), explained)
        explained = explained or why
        out += lines + _momentum(s, sync)
    halves = [round(c.last_round / 2) for c in curves]
    out.append(
        f"Numbers are single runs (seed 0); the plateau of one run averages {min(halves)} to {max(halves)} "
        "rounds of a process that is stationary there, except where the tables flag a half that is not flat; "
        "the +- and the figures show how much f fluctuates around it."
    )
    return out


def _ef21_sgd(setting: str, sgd: dict[int, Curve], explained: bool) -> tuple[list[str], bool]:
    """The verdict on EF21-SGD against n, and (once, unless `explained`) why it may shrink after all; the
    flag says whether these lines gave that explanation."""
    ns = sorted(sgd)
    if len(ns) < 2:
        return [], False
    first, last, b = sgd[ns[0]].plateau(), sgd[ns[-1]].plateau(), slope(sgd)
    if last >= first / NOT_SHRINKING:
        return [
            f"**{setting}, EF21-SGD:** its plateau does not shrink from n = {ns[0]} to n = {ns[-1]} "
            f"({first:.3g} to {last:.3g}, exponent {b:+.2f}), as the poster shows."
        ], False
    verdict = (
        f"**{setting}, EF21-SGD's plateau shrinks with n here** ({first:.3g} at n = {ns[0]}, {last:.3g} "
        f"at n = {ns[-1]}, exponent {b:+.2f}; -1 would be 1/n): the expectation did not come out."
    )
    if explained:
        return [verdict + " The reading of why is the one given above."], False
    return [
        verdict + " A reading of why (an argument, not a measurement; we did not test it further): with Top-1 "
        "each worker's estimator g_i lags its own noisy gradient by "
        "one coordinate per round, so its error e_i = g_i - grad f(x) is large at every n (which is why EF21-SGD "
        "sits far above the momentum methods at every n), but the server steps on the mean of the n workers' g_i. "
        "With independent Gaussian noise, which is symmetric, the workers' errors have no common direction, so "
        "their mean shrinks with n much as plain SGD's noise does. A floor that does not shrink with n needs an "
        "error component shared by all workers, i.e. compressed stochastic gradients that are biased on average, "
        "as in the constructed example behind the paper's lower bound for EF21-SGD-ideal (docs/algorithms.md, "
        "EF21-SGD); that "
        "bound, (1/60) min{sigma^2, ||grad f(x^0)||^2}, is moreover 0 when started at the optimum as here. The "
        "noise law, d, gamma and initial point of the poster's n-figure are not known (docs/algorithms.md, R3, "
        "marks them "
        "[U]), and its plateaus (1.6e-3 to 3e-3) are far below the ones measured here, so the setting differs; "
        "with the Gaussian noise R3 prescribes, the claim fails."
    ], True


def _momentum(setting: str, sync: dict[str, dict[int, Curve]]) -> list[str]:
    sgd = sync.get("EF21-SGD", {})
    lines = []
    for label, series in sync.items():
        if label == "EF21-SGD":
            continue
        ns = sorted(series)
        c0 = series[ns[0]]
        vs_floor = ", ".join(f"{series[n].plateau() / sgd_floor(c0.dim, c0.lr, c0.sigma, n):.2f}" for n in ns)
        scaled = ", ".join(f"{n * series[n].plateau():.3g}" for n in ns)
        ratio = [sgd[n].plateau() / series[n].plateau() for n in ns if n in sgd]
        gap = (
            (
                f"; EF21-SGD / it = {min(ratio):.1f}x to {max(ratio):.1f}x"
                f" ({'at least' if min(ratio) >= RATIO else 'not always'} {RATIO:g}x)"
            )
            if ratio
            else ""
        )
        lines.append(
            f"- {setting}, {label}: n x plateau = {scaled} (constant if it falls as 1/n); plateau / plain "
            f"SGD's floor = {vs_floor} (n = {', '.join(map(str, ns))}){gap}."
        )
    if not lines:
        return []
    return [
        f"**{setting}, the momentum methods{' and EF14-SGD' if 'EF14-SGD' in sync else ''}** against plain "
        "SGD's floor "
        "gamma d sigma^2 / (2 n (2 - gamma)) on the same problem without compression. The EF21-SGDM bound "
        "(docs/algorithms.md, EF21-SGDM) for "
        "EF21-SGDM has the terms eta^3 sigma^2/alpha^2 + eta^2 sigma^2/alpha + eta sigma^2/n (with unknown "
        "constants): the last shrinks with n, the others with eta.",
        "\n".join(lines),
        *_ceiling(setting, sync),
    ]


def _ceiling(setting: str, sync: dict[str, dict[int, Curve]]) -> list[str]:
    """Why EF21-SGDM can miss "10x below EF21-SGD": the gap cannot exceed EF21-SGD's own distance to plain
    SGD's floor, which no method that steps on unbiased noisy gradients with this gamma goes below much."""
    sgd = sync.get("EF21-SGD", {})
    short = [
        (label, n)
        for label, series in sync.items()
        if label != "EF21-SGD"
        for n in series
        if n in sgd and sgd[n].plateau() / series[n].plateau() < RATIO
    ]
    if not short:
        return []
    c0 = next(iter(sgd.values()))
    room = ", ".join(f"n = {n}: {sgd[n].plateau() / sgd_floor(c0.dim, c0.lr, c0.sigma, n):.1f}x" for n in sorted(sgd))
    return [
        f"**{setting}: why EF21-SGDM is not {RATIO:g}x below EF21-SGD here.** The momentum runs sit close to "
        "plain SGD's floor (the ratios above), the level that the gradient noise alone holds x at with this "
        "gamma, and momentum with the same step does not go much below it. So the gap is capped by how far "
        f"EF21-SGD itself is above that floor: {room}. With d = {c0.dim} Top-1 keeps 1/{c0.dim} of each "
        f"message, and EF21-SGD ends only these factors above the floor, not the {RATIO:g}x or more that the "
        f"expectation needs. It did not come out in this setting for: "
        + ", ".join(f"{label} at n = {n}" for label, n in short)
        + "."
    ]
