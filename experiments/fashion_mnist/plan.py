"""The study's plan: which launcher runs, in which batches, with which overrides.

Batches, each a few launcher runs of at most ~15 minutes (so a shared machine can take them one at a time):
    dense      APAM, 4 workers, the <100k-parameter CNN, dense pushes: configs/fashion_mnist.yaml as it is
    ef21       the same with EF21-SGDM Top-K 1% pushes: configs/fashion_mnist_ef21_sgdm.yaml as it is
    straggler  configs/fashion_mnist.yaml with rank 3 4x slower: async (APAM), then sync (all-reduce AMSGrad),
               each bounded by wall time (sync longer: its steps wait for the straggler)
    wide       the 1-5M-parameter CNN of configs/fashion_mnist_wide.yaml, dense, then with the EF21 config's
               compression and optimizer sections, each for the same short wall time
The quick plan runs the same runs for a few dozen updates each (a smoke test: its numbers say nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from experiments.common.runs import RunSpec
from experiments.common.sweeps import REPO
from protocol.config.loader import load_experiment, read_yaml

CONFIG = "configs/fashion_mnist.yaml"
EF21 = "configs/fashion_mnist_ef21_sgdm.yaml"
WIDE = "configs/fashion_mnist_wide.yaml"
SLOWDOWN = "worker.slowdown=[1,1,1,4]"  # rank 3, not rank 0 (which in sync mode also writes the records)
# the EF21 papers' server: plain SGD on g (the workers' v_i are the momentum), as configs/digits_ef21_sgdm.yaml
EF21_SGD = ("optimizer.name=sgd", "optimizer.lr=0.2")
EF21_SECTIONS = ("optimizer", "compression")  # what the wide model's EF21 run takes from the EF21 config
RUN_GRACE_S = 180  # per run, on top of its run.max_seconds: start-up, the final evaluation, plots


@dataclass(frozen=True)
class Plan:
    quick: bool
    straggler_seconds: dict[str, float]  # wall time of the straggler run of each mode (async, sync)
    wide_seconds: float  # wall time of each wide-model run
    extra: tuple[str, ...] = ()  # overrides for every run (the quick plan's tiny runs)
    sync_extra: tuple[str, ...] = ()  # ... and for the sync run (a sync step is 4 gradients)

    def batches(self) -> list[str]:
        return ["dense", "ef21", "straggler", "wide"]


FULL = Plan(False, straggler_seconds={"async": 360, "sync": 600}, wide_seconds=240)
QUICK = Plan(
    True,
    straggler_seconds={"async": 20, "sync": 20},
    wide_seconds=20,
    extra=("run.max_updates=40", "run.eval_every_s=2", "run.eval_max_samples=300", "run.max_seconds=20"),
    sync_extra=("run.max_updates=10",),
)


def batch_specs(plan: Plan, batch: str) -> list[RunSpec]:
    """The runs of one batch, in run order."""
    if batch == "dense":
        return [_spec(batch, "01-apam-dense", CONFIG, plan.extra)]
    if batch == "ef21":  # the config's AMSGrad server, then the EF21 papers' plain SGD step on g
        return [
            _spec(batch, "01-apam-ef21-sgdm", EF21, plan.extra),
            _spec(batch, "02-sgd-ef21-sgdm", EF21, (*EF21_SGD, *plan.extra)),
        ]
    if batch == "straggler":

        def timed(mode: str) -> tuple[str, ...]:
            return (SLOWDOWN, *timed_run(plan.straggler_seconds[mode]))

        return [
            _spec(batch, "01-async", CONFIG, (*timed("async"), "mode=async", *plan.extra)),
            _spec(batch, "02-sync", CONFIG, (*timed("sync"), "mode=sync", *plan.extra, *plan.sync_extra)),
        ]
    if batch == "wide":
        timed = timed_run(plan.wide_seconds)
        return [
            _spec(batch, "01-dense", WIDE, (*timed, *plan.extra)),
            _spec(batch, "02-ef21-sgdm", WIDE, (*ef21_overrides(), *timed, *plan.extra)),
        ]
    raise ValueError(f"unknown batch {batch!r} (this plan has: {', '.join(plan.batches())})")


def timed_run(seconds: float) -> tuple[str, ...]:
    """Overrides for a run bounded by wall time: no update bound, so a constant lr (a cosine needs its end)."""
    return ("run.max_updates=1000000", f"run.max_seconds={seconds:g}", "optimizer.schedule=constant")


def _spec(batch: str, name: str, config: str, overrides: tuple[str, ...]) -> RunSpec:
    max_seconds = load_experiment(REPO / config, list(overrides)).run.max_seconds
    return RunSpec(batch, name, config, overrides, max_seconds + RUN_GRACE_S)


def ef21_overrides(config: str | Path = EF21) -> tuple[str, ...]:
    """The EF21 config's optimizer and compression sections as key=value overrides (YAML flow values)."""
    data = read_yaml(REPO / config)
    return tuple(
        f"{section}.{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
        for section in EF21_SECTIONS
        for key, value in (data.get(section) or {}).items()
    )
