"""Numbers from run records: metrics interpolated at an update count or on a grid, rolling means, and
'mean ± std' over seeds as the reports print them."""

from __future__ import annotations

import numpy as np


def value_at(metrics: list[dict], key: str, at: float) -> float | None:
    """metrics[key] linearly interpolated at update count `at`; None before the first evaluation."""
    pts = [(m["updates"], m[key]) for m in metrics if m.get(key) is not None and m.get("updates") is not None]
    if not pts or at < pts[0][0] or at > pts[-1][0]:
        return None
    xs, ys = zip(*pts)
    return float(np.interp(at, xs, ys))


def curve_on_grid(metrics: list[dict], key: str, grid: np.ndarray) -> np.ndarray:
    """metrics[key] interpolated onto `grid` (NaN outside the evaluated range)."""
    return np.array([np.nan if (v := value_at(metrics, key, g)) is None else v for g in grid])


def rolling(xs: list[float], k: int) -> np.ndarray:
    """Mean of the last k values at each position (the per-push losses are noisy minibatch losses)."""
    a = np.asarray(xs, dtype=float)
    c = np.cumsum(np.insert(a, 0, 0.0))
    idx = np.arange(1, len(a) + 1)
    lo = np.maximum(0, idx - k)
    return (c[idx] - c[lo]) / (idx - lo)


def mean_std(values: list[float | None]) -> tuple[float | None, float | None, int]:
    xs = [v for v in values if v is not None and np.isfinite(v)]
    if not xs:
        return None, None, 0
    return float(np.mean(xs)), (float(np.std(xs, ddof=1)) if len(xs) > 1 else None), len(xs)


def pm(values: list[float | None], digits: int = 4, scale: float = 1.0) -> str:
    """'mean ± std' over seeds (std omitted for one value); '(k/n)' if some runs lack the figure."""
    m, s, n = mean_std(values)
    if m is None:
        return "-"
    text = f"{m * scale:.{digits}f}" + ("" if s is None else f" ± {s * scale:.{digits}f}")
    return text if n == len(values) else f"{text} ({n}/{len(values)})"
