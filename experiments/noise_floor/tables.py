"""The noise-floor report's tables: plateaus per method and n for one setting, the asynchronous runs next
to their synchronous twins, and every run's details and cross-checks."""

from __future__ import annotations

from experiments.common.report import table
from experiments.noise_floor.data import Curve, by_label, setting_of, sgd_floor, slope


def plateau_table(curves: list[Curve]) -> str:
    """One setting: the plateau (+- its standard error) per method and n, the exponent of plateau ~ n^b."""
    c0 = curves[0]
    ns = sorted({c.n for c in curves if c.sync})
    rows = [
        [label, *(_with_error(series[n]) if n in series else "-" for n in ns), _fmt_slope(slope(series))]
        for label, series in by_label([c for c in curves if c.sync]).items()
    ]
    rows.append(
        ["plain SGD, theory (no compression)", *(f"{sgd_floor(c0.dim, c0.lr, c0.sigma, n):.3g}" for n in ns), "-1.00"]
    )
    return table(["method", *(f"n = {n}" for n in ns), "exponent b"], rows)


def _with_error(c: Curve) -> str:
    _, se = c.spread()
    return f"{c.plateau():.3g} +- {se:.2g}"


def _fmt_slope(b: float | None) -> str:
    return "-" if b is None else f"{b:+.2f}"


def _twin(c: Curve, curves: list[Curve]) -> Curve | None:
    """The synchronous run of the same setting, n and method as an asynchronous one."""
    same = (s for s in curves if s.sync and (s.n, s.method, s.eta) == (c.n, c.method, c.eta))
    return next((s for s in same if setting_of(s.part) == setting_of(c.part)), None)


def async_table(curves: list[Curve]) -> str:
    rows = []
    for c in sorted((c for c in curves if not c.sync), key=lambda c: c.key):
        twin = _twin(c, curves)
        rows.append(
            [
                c.label,
                c.n,
                f"{c.lr:g}",
                int(c.summary.get("updates", 0)),
                f"{c.summary.get('staleness_mean', 0):.2f}",
                f"{c.plateau():.3g}",
                f"{twin.plateau():.3g}" if twin else "-",
            ]
        )
    head = ["method", "n", "gamma", "server steps", "mean staleness", "plateau", "synchronous plateau (gamma x n)"]
    return table(head, rows)


DETAILS = ["part", "method", "n", "updates", "pushes applied", "per update", "refused", "plateau", "std f"]
DETAILS += ["Q4 / Q3", "evaluator", "ef drift", "B/push"]


def details_table(curves: list[Curve]) -> str:
    rows = []
    for c in sorted(curves, key=lambda c: (c.part, c.key)):
        s = c.summary
        ev, k = c.eval_plateau()
        pushes = s.get("pushes_applied", 0)
        rows.append(
            [
                c.part,
                c.label,
                c.n,
                int(s.get("updates", 0)),
                pushes,
                f"{pushes / max(1, s.get('updates', 1)):.2f}",
                s.get("pushes_rejected", 0),
                f"{c.plateau():.3g}",
                f"{c.spread()[0]:.3g}",
                f"{c.quarters():.2f}",
                f"{ev:.3g} ({k})",
                f"{s.get('ef_drift_max') or 0:.1e}",
                f"{s.get('uplink_bytes', 0) / max(1, s.get('pushes_received', 1)):.0f}",
            ]
        )
    return table(DETAILS, rows)
