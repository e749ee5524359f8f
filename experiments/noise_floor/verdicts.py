"""The noise-floor claims, each judged PASS or FAIL from the plateaus with the numbers that decide it
(their wording: report.md.tmpl)."""

from __future__ import annotations

from experiments.common.templates import Prose
from experiments.noise_floor.data import NOT_SHRINKING, RATIO, SHRINKING, Curve, by_label, slope

prose = Prose(__package__)


def verdicts(curves: list[Curve]) -> list[str]:
    """One line per claim (synchronous runs of one setting)."""
    table = by_label([c for c in curves if c.sync])
    sgd = table.get("EF21-SGD", {})
    sgdm = {k: v for k, v in table.items() if k.startswith("EF21-SGDM")}
    lines = [_below(label, series, sgd) for label, series in sgdm.items()]
    lines.append(_flat(sgd))
    return lines + [_shrinks(label, series) for label, series in sgdm.items()]


def _below(label: str, series: dict[int, Curve], sgd: dict[int, Curve]) -> str:
    ratios = {n: sgd[n].plateau() / series[n].plateau() for n in sorted(sgd) if n in series}
    ok = bool(ratios) and all(r >= RATIO for r in ratios.values())
    listed = ", ".join(f"n={n}: {r:.1f}x" for n, r in ratios.items()) or "not measured"
    return prose("claim_ratio", verdict=verdict(ok, bool(ratios)), label=label, ratio=f"{RATIO:g}", ratios=listed)


def _flat(sgd: dict[int, Curve]) -> str:
    ns = sorted(sgd)
    if len(ns) < 2:
        return prose("claim_flat_unmeasured")
    first, last = sgd[ns[0]].plateau(), sgd[ns[-1]].plateau()
    return prose(
        "claim_flat",
        verdict=verdict(last >= first / NOT_SHRINKING),
        last=ns[-1],
        factor=f"{NOT_SHRINKING:g}",
        first=ns[0],
        series=_series(sgd),
        shrink=f"{first / last:.1f}",
        exponent=f"{slope(sgd):+.2f}",
    )


def _shrinks(label: str, series: dict[int, Curve]) -> str:
    ks = sorted(series)
    if len(ks) < 2:
        return prose("claim_shrinks_unmeasured", label=label)
    steps = [series[a].plateau() / series[b].plateau() for a, b in zip(ks, ks[1:])]
    return prose(
        "claim_shrinks",
        verdict=verdict(all(s >= SHRINKING for s in steps)),
        label=label,
        factor=f"{SHRINKING:g}",
        series=_series(series),
        steps=", ".join(f"{s:.1f}x" for s in steps),
        exponent=f"{slope(series):+.2f}",
    )


def verdict(ok: bool, measured: bool = True) -> str:
    return "NOT MEASURED" if not measured else ("PASS" if ok else "FAIL")


def _series(series: dict[int, Curve]) -> str:
    return ", ".join(f"n={n}: {series[n].plateau():.3g}" for n in sorted(series))
