"""The issue's expectations, each checked against the measured runs: one line of the report each, saying what
was measured, the criterion, and whether it holds (or what is missing to tell)."""

from __future__ import annotations

from experiments.common.templates import Prose
from experiments.fashion_mnist.analysis import BYTES_FACTOR, ONE_POINT, STRAGGLER_TARGET, TARGET, RunFigures

prose = Prose(__package__)


def _holds(ok: bool) -> str:
    return prose("holds" if ok else "does_not_hold")


def _acc(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _time(t: float | None, r: RunFigures) -> str:
    if t is not None:
        return f"{t:.0f} s"
    return prose("not_reached", wall_s=f"{r.wall_s:.0f}", best=_acc(r.best_acc))


def target(dense: RunFigures | None, config: str) -> str:
    if dense is None:
        return prose("missing", what=prose("what_target", config=config, target=f"{TARGET:g}"))
    return prose(
        "v_target",
        config=config,
        params=f"{dense.params:,}",
        target=f"{TARGET:g}",
        final=_acc(dense.final_acc),
        best=_acc(dense.best_acc),
        t=_time(dense.t_target, dense),
        epochs=f"{dense.epochs:.1f}",
        wall_s=f"{dense.wall_s:.0f}",
        verdict=_holds(dense.final_acc is not None and dense.final_acc >= TARGET),
    )


def ef21_accuracy(dense: RunFigures | None, ef21: RunFigures | None) -> str:
    if dense is None or ef21 is None or dense.final_acc is None or ef21.final_acc is None:
        return prose("missing", what=prose("what_ef21", points=f"{100 * ONE_POINT:g}"))
    gap = ef21.final_acc - dense.final_acc
    return prose(
        "v_ef21_acc",
        run=ef21.run.key,
        optimizer=f"{ef21.run.config.optimizer.name} lr {ef21.run.config.optimizer.lr:g}",
        ef21=_acc(ef21.final_acc),
        dense=_acc(dense.final_acc),
        gap=f"{100 * gap:+.2f}",
        points=f"{100 * ONE_POINT:g}",
        verdict=_holds(gap >= -ONE_POINT),
    )


def ef21_bytes(dense: RunFigures | None, ef21: RunFigures | None) -> str:
    if dense is None or ef21 is None or not ef21.uplink_bytes:
        return prose("missing", what=prose("what_bytes", factor=BYTES_FACTOR))
    total = dense.uplink_bytes / ef21.uplink_bytes
    per = dense.uplink_per_gradient / ef21.uplink_per_gradient if ef21.uplink_per_gradient else float("nan")
    return prose(
        "v_bytes",
        dense=f"{dense.uplink_bytes:,}",
        ef21=f"{ef21.uplink_bytes:,}",
        ratio=f"{total:.1f}",
        dense_per=f"{dense.uplink_per_gradient:,.0f}",
        ef21_per=f"{ef21.uplink_per_gradient:,.0f}",
        per_ratio=f"{per:.1f}",
        factor=BYTES_FACTOR,
        verdict=_holds(total >= BYTES_FACTOR and per >= BYTES_FACTOR),
    )


def straggler(fast: RunFigures | None, sync: RunFigures | None) -> str:
    if fast is None or sync is None:
        return prose("missing", what=prose("what_straggler", target=f"{STRAGGLER_TARGET:g}"))
    a, s = fast.t_straggler_target, sync.t_straggler_target
    if a is not None and s is not None:
        outcome = prose("ratio", ratio=f"{s / a:.1f}")
    elif a is not None:
        outcome = prose("only_async")
    else:
        outcome = prose("async_not")
    return prose(
        "v_straggler",
        target=f"{STRAGGLER_TARGET:g}",
        async_t=_time(a, fast),
        sync_t=_time(s, sync),
        outcome=outcome,
    )
