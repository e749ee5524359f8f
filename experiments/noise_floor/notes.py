"""The noise-floor report's setup (read from the runs) and what the numbers say, each paragraph computed
from the measured plateaus so that it cannot contradict them (the wording: report.md.tmpl)."""

from __future__ import annotations

import numpy as np

from experiments.common.report import cores
from experiments.common.sweeps import Sweep
from experiments.common.templates import Prose
from experiments.noise_floor.data import NOT_SHRINKING, RATIO, Curve, by_label, sgd_floor, slope
from experiments.noise_floor.plan import SETTINGS

prose = Prose(__package__)
# compression.method -> the fragment describing it, in the order the setup lists them
METHODS = {"ef21": "method_ef21", "ef21-sgdm": "method_ef21_sgdm", "ef14": "method_ef14"}


def setup(curves: list[Curve], plan_parts: list[str], sweeps: dict[str, Sweep]) -> str:
    missing = [p for p in plan_parts if p not in sweeps]
    failed = [
        f"{name}/{p.folder.name}: {p.error or 'failed'}" for name, s in sweeps.items() for p in s.points if not p.ok
    ]
    per_proc = {
        c.summary.get("workers"): len([k for k in c.summary.get("processes", {}) if k.startswith("worker")])
        for c in curves
    }
    methods = {c.method for c in curves}
    drift = [abs(c.quarters() - 1) for c in curves]
    worst = max(curves, key=lambda c: abs(c.quarters() - 1))
    rounds = {
        n: sorted({int(c.last_round) + 1 for c in curves if c.sync and c.n == n}) for n in sorted({c.n for c in curves})
    }
    comp = curves[0].compression
    return prose(
        "setup",
        sigma=f"{curves[0].sigma:g}",
        k=comp.k,
        compressor=comp.compressor,
        selection=comp.selection,
        values=comp.values,
        **_settings(),
        methods=", ".join(prose(fragment) for m, fragment in METHODS.items() if m in methods),
        server_step=prose("server_step_ef14" if "ef14" in methods else "server_step"),
        per_process="/".join(map(str, sorted({c.per_process for c in curves}))),
        processes=", ".join(f"n = {n}: {k}" for n, k in sorted(per_proc.items()) if n),
        rounds="; ".join(f"n = {n}: {'/'.join(map(str, r))}" for n, r in rounds.items() if r),
        short_runs=_short_runs(curves, rounds),
        median_drift=f"{100 * np.median(drift):.0f}",
        max_drift=f"{100 * max(drift):.0f}",
        worst_part=worst.part,
        worst_label=worst.label,
        missing=prose("missing_parts", parts=", ".join(missing)) if missing else "",
        failed=prose("failed_runs", runs="; ".join(failed)) if failed else "",
    )


def _settings() -> dict[str, object]:
    """The plan's two settings as the setup names them: the repository's R3 config, and R3's own step."""
    large, small = SETTINGS
    return {"large": large.name, "large_dim": large.dim, "large_lr": f"{large.lr:g}"} | {
        "small": small.name,
        "small_dim": small.dim,
        "small_lr": f"{small.lr:g}",
    }


def _short_runs(curves: list[Curve], rounds: dict[int, list[int]]) -> str:
    """Why the runs with many workers have fewer rounds than R3's 10^4 (empty if none has)."""
    big = max(rounds) if rounds else 0
    short = [n for n, r in rounds.items() if r and max(r) < 10**4]
    rates = [c.summary.get("updates_per_s", 0.0) for c in curves if c.sync and c.n == big]
    if not (short and rates):
        return ""
    rate = f"{np.mean(rates):.1f}"
    return " " + prose("short_runs", short=", ".join(map(str, short)), cores=cores(), rate=rate, largest=big)


def discussion(curves: list[Curve]) -> str:
    parts, explained = [], False
    for s in dict.fromkeys(c.part.split("-")[0] for c in curves):
        sync = by_label([c for c in curves if c.sync and c.part.startswith(s + "-")])
        lines, why = _ef21_sgd(s, sync.get("EF21-SGD", {}), explained)
        explained = explained or why
        parts += lines + _momentum(s, sync)
    halves = [round(c.last_round / 2) for c in curves]
    seeds = ", ".join(map(str, sorted({c.seed for c in curves})))
    return prose("discussion", settings="\n\n".join(parts), seeds=seeds, fewest=min(halves), most=max(halves))


def _ef21_sgd(setting: str, sgd: dict[int, Curve], explained: bool) -> tuple[list[str], bool]:
    """The verdict on EF21-SGD against n, and (once, unless `explained`) why it may shrink after all; the
    flag says whether these lines gave that explanation."""
    ns = sorted(sgd)
    if len(ns) < 2:
        return [], False
    first, last, b = sgd[ns[0]].plateau(), sgd[ns[-1]].plateau(), slope(sgd)
    numbers = {"setting": setting, "first_n": ns[0], "last_n": ns[-1], "exponent": f"{b:+.2f}"}
    numbers |= {"first": f"{first:.3g}", "last": f"{last:.3g}"}
    if last >= first / NOT_SHRINKING:
        return [prose("ef21_flat", **numbers)], False
    why = prose("why_given_above" if explained else "why_ef21_shrinks")
    return [prose("ef21_shrinks", why=why, **numbers)], not explained


def _momentum(setting: str, sync: dict[str, dict[int, Curve]]) -> list[str]:
    sgd = sync.get("EF21-SGD", {})
    lines = [_momentum_line(setting, label, series, sgd) for label, series in sync.items() if label != "EF21-SGD"]
    if not lines:
        return []
    methods = prose("momentum_methods_ef14" if "EF14-SGD" in sync else "momentum_methods")
    return [
        prose("momentum", setting=setting, methods=methods, lines="\n".join(lines), ceiling=_ceiling(setting, sync))
    ]


def _momentum_line(setting: str, label: str, series: dict[int, Curve], sgd: dict[int, Curve]) -> str:
    ns = sorted(series)
    c0 = series[ns[0]]
    ratio = [sgd[n].plateau() / series[n].plateau() for n in ns if n in sgd]
    gap = ""
    if ratio:
        always = "at least" if min(ratio) >= RATIO else "not always"
        gap = prose(
            "momentum_gap", low=f"{min(ratio):.1f}", high=f"{max(ratio):.1f}", always=always, ratio=f"{RATIO:g}"
        )
    return prose(
        "momentum_line",
        setting=setting,
        label=label,
        scaled=", ".join(f"{n * series[n].plateau():.3g}" for n in ns),
        vs_floor=", ".join(f"{series[n].plateau() / sgd_floor(c0.dim, c0.lr, c0.sigma, n):.2f}" for n in ns),
        ns=", ".join(map(str, ns)),
        gap=gap,
    )


def _ceiling(setting: str, sync: dict[str, dict[int, Curve]]) -> str:
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
        return ""
    c0 = next(iter(sgd.values()))
    room = ", ".join(f"n = {n}: {sgd[n].plateau() / sgd_floor(c0.dim, c0.lr, c0.sigma, n):.1f}x" for n in sorted(sgd))
    return prose(
        "ceiling",
        setting=setting,
        ratio=f"{RATIO:g}",
        room=room,
        dim=c0.dim,
        short=", ".join(f"{label} at n = {n}" for label, n in short),
    )
