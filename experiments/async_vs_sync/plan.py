"""The async-vs-sync experiment's plan: which runs, in which order, in which batches; the lr grid's choice.

Batches (each under 10 minutes on the development machine, so a shared machine can take them one at a time):
    straggler       seeds 0, 1, 2, each: async then sync, at the config's lr (1e-3)
    lr_grid-<seed>  lr 1e-3, 3e-3, 1e-2, each: async then sync, on a grid seed (100, 101)
    tuned           seeds 0, 1, 2 at each mode's best grid lr (only the modes whose best lr is not 1e-3)
    scaling-<seed>  N = 1, 2, 4, 8, each: async then sync (experiments/async_vs_sync/scaling.yaml)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from experiments.async_vs_sync.analysis import figures
from experiments.async_vs_sync.runs import read_batch
from experiments.common.runs import RunSpec

CONFIG = "experiments/async_vs_sync/config.yaml"
SCALING = "experiments/async_vs_sync/scaling.yaml"
MODES = ("async", "sync")
RUN_GRACE_S = 120  # per run, on top of run.max_seconds: start-up, the final evaluation, plots


@dataclass(frozen=True)
class Plan:
    seeds: tuple[int, ...]  # the straggler comparison's seeds
    gradients: int  # per straggler run: async pushes; sync steps x workers
    lrs: tuple[float, ...]  # the lr grid, each mode
    grid_seeds: tuple[int, ...]  # the grid's seeds: not `seeds`, so the choice is not fitted to the comparison
    scaling_workers: tuple[int, ...]
    scaling_seeds: tuple[int, ...]
    scaling_seconds: float
    straggler_extra: tuple[str, ...] = ()  # overrides for every straggler / grid / tuned run
    scaling_extra: tuple[str, ...] = ()
    workers: int = 4  # experiments/async_vs_sync/config.yaml's
    lr: float = 1e-3  # experiments/async_vs_sync/config.yaml's

    def batches(self) -> list[str]:
        return (
            ["straggler"]
            + [f"lr_grid-{s}" for s in self.grid_seeds]
            + ["tuned"]
            + [f"scaling-{s}" for s in self.scaling_seeds]
        )


FULL = Plan((0, 1, 2), 3000, (1e-3, 3e-3, 1e-2), (100, 101), (1, 2, 4, 8), (0, 1), 40.0)
QUICK = Plan(
    (0,),
    400,
    (1e-3, 3e-3),
    (100,),
    (1, 2),
    (0,),
    6.0,
    straggler_extra=("worker.compute_s=0.005",),
    scaling_extra=("worker.compute_s=0.01",),
)


def straggler_run(plan: Plan, batch: str, index: int, mode: str, seed: int, lr: float | None) -> RunSpec:
    steps = plan.gradients if mode == "async" else plan.gradients // plan.workers
    lr_part = [] if lr is None else [f"optimizer.lr={lr:g}"]
    overrides = (f"mode={mode}", f"seed={seed}", f"run.max_updates={steps}", *lr_part, *plan.straggler_extra)
    name = f"{index:02d}-{mode}-lr={lr if lr is not None else plan.lr:g}-seed={seed}"
    return RunSpec(batch, name, CONFIG, overrides, 300 + RUN_GRACE_S)


def batch_specs(plan: Plan, batch: str, base: Path) -> list[RunSpec]:
    """The runs of one batch, in run order (modes interleaved within each seed)."""
    if batch == "straggler":
        pairs = [(s, m) for s in plan.seeds for m in MODES]
        return [straggler_run(plan, batch, i, m, s, None) for i, (s, m) in enumerate(pairs, 1)]
    if batch.startswith("lr_grid-"):
        seed = int(batch.removeprefix("lr_grid-"))
        pairs = [(lr, m) for lr in plan.lrs for m in MODES]
        return [straggler_run(plan, batch, i, m, seed, lr) for i, (lr, m) in enumerate(pairs, 1)]
    if batch == "tuned":
        best = best_lrs(plan, base)
        pairs = [(s, m) for s in plan.seeds for m in MODES if best.get(m) not in (None, plan.lr)]
        return [straggler_run(plan, batch, i, m, s, best[m]) for i, (s, m) in enumerate(pairs, 1)]
    if batch.startswith("scaling-"):
        seed = int(batch.removeprefix("scaling-"))
        pairs = [(n, m) for n in plan.scaling_workers for m in MODES]
        return [
            RunSpec(
                batch,
                f"{i:02d}-{m}-workers={n}-seed={seed}",
                SCALING,
                (
                    f"mode={m}",
                    f"workers={n}",
                    f"seed={seed}",
                    f"run.max_seconds={plan.scaling_seconds:g}",
                    *plan.scaling_extra,
                ),
                plan.scaling_seconds + RUN_GRACE_S,
            )
            for i, (n, m) in enumerate(pairs, 1)
        ]
    raise ValueError(f"unknown batch {batch!r} (this plan has: {', '.join(plan.batches())})")


def grid_runs(plan: Plan, base: Path) -> list:
    return [figures(p) for s in plan.grid_seeds for p in read_batch(base, f"lr_grid-{s}") if p.ok]


def best_lrs(plan: Plan, base: Path) -> dict[str, float]:
    """Per mode, the grid lr with the least mean time to the target over the grid seeds, among the lrs at
    which every grid seed reached it (none: the mode keeps the config's lr)."""
    runs = grid_runs(plan, base)
    best = {}
    for mode in MODES:
        times = {}
        for lr in plan.lrs:
            ts = [r.t_target for r in runs if r.mode == mode and r.lr == lr]
            if ts and all(t is not None for t in ts) and len(ts) == len(plan.grid_seeds):
                times[lr] = sum(ts) / len(ts)
        if times:
            best[mode] = min(times, key=times.get)
    return best
