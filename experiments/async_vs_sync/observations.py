"""What the straggler runs say about why the modes differ, each sentence computed from the runs (the
wording: report.md.tmpl)."""

from __future__ import annotations

import numpy as np

from experiments.async_vs_sync.analysis import TARGET, RunFigures, straggler_rank
from experiments.common.report import cores
from experiments.common.templates import Prose

prose = Prose(__package__)
CPU_BUSY = 1.5  # cores (of the 2 of the development machine) above which a run counts as CPU-bound


def observations(straggler: list[RunFigures], scaling: list[RunFigures]) -> list[str]:
    asyn = [r for r in straggler if r.mode == "async"]
    sync = [r for r in straggler if r.mode == "sync"]
    out = _gradients(asyn, sync) + _sync_step(sync) + _straggler_share(asyn, sync)
    return out + _cpu(straggler + scaling)


def _gradients(asyn: list[RunFigures], sync: list[RunFigures]) -> list[str]:
    """Gradients each mode needed to the target at the same lr."""
    ga = [r.grads_at_target for r in asyn if r.grads_at_target]
    gs = [r.grads_at_target for r in sync if r.grads_at_target]
    if not (ga and gs):
        return []
    return [
        prose(
            "gradients_to_target",
            target=f"{TARGET:.0%}",
            asyn=f"{np.mean(ga):.0f}",
            batch=asyn[0].batch_size,
            staleness=f"{np.mean([r.staleness_mean for r in asyn]):.1f}",
            sync=f"{np.mean(gs):.0f}",
            sync_steps=f"{np.mean(gs) / sync[0].workers:.0f}",
            sync_batch=sync[0].workers * sync[0].batch_size,
            per_gradient=prose("sync_worth_less" if np.mean(gs) > np.mean(ga) else "sync_worth_more"),
        )
    ]


def _sync_step(sync: list[RunFigures]) -> list[str]:
    if not sync:
        return []
    step = np.mean([r.wall_s / r.steps for r in sync if r.steps])
    ideal = np.mean([r.workers / r.ideal_gradients_per_s for r in sync])
    coll = np.mean([r.collective_ms for r in sync if r.collective_ms is not None])
    return [
        prose(
            "sync_step",
            step=f"{1000 * step:.1f}",
            ideal=f"{1000 * ideal:.1f}",
            straggler=straggler_rank(sync[0].point.values),
            collective=f"{coll:.1f}",
        )
    ]


def _straggler_share(asyn: list[RunFigures], sync: list[RunFigures]) -> list[str]:
    """How much the slowed rank contributed in async mode, against its share of the ideal rates."""
    if not (asyn and sync) or asyn[0].slow_share is None:
        return []
    rates = 1 / np.array([f for f in asyn[0].point.values["slowdown"]], dtype=float)
    return [
        prose(
            "straggler_share",
            share=f"{np.mean([r.slow_share for r in asyn]):.1%}",
            ideal_share=f"{rates[rates < 1].sum() / rates.sum():.1%}",
            async_efficiency=f"{np.mean([r.efficiency for r in asyn]):.0%}",
            sync_efficiency=f"{np.mean([r.efficiency for r in sync]):.0%}",
        )
    ]


def _cpu(runs: list[RunFigures]) -> list[str]:
    cpu = [(r.mode, r.cpu_cores) for r in runs if r.cpu_cores is not None]
    if not cpu:
        return []
    peak = max(cpu, key=lambda x: x[1])
    idle = peak[1] < CPU_BUSY
    verdict = prose("cpu_idle", cores=cores()) if idle else prose("cpu_busy", cores=cores(), busy=f"{CPU_BUSY:g}")
    mean = np.mean([c for _, c in cpu])
    return [prose("cpu", mean=f"{mean:.2f}", peak=f"{peak[1]:.2f}", mode=peak[0], verdict=verdict)]
