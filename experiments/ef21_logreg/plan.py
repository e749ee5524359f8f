"""The R4 (ii) plan: rounds per batch size, the step-size grid of each (batch, method), the seeds; and one
sweep of it run through the launcher (a repeat reads its step size from the finished tuning sweep)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from experiments.common.sweeps import Sweep, record_sweep, recorded_sweep, run_sweep
from experiments.ef21_logreg.results import Result, pick

CONFIG = "experiments/ef21_logreg/config.yaml"
METHODS = ("ef21", "ef21-sgdm", "ef21-sgd2m", "ef14")


@dataclass(frozen=True)
class Plan:
    rounds: dict[int, int]  # batch size -> rounds (server steps) per run
    grids: dict[tuple[int, str], list[float]]  # (batch, method) -> step sizes tried on the tuning seed
    tune_seed: int
    repeat_seeds: list[int]  # the best step size of each (batch, method) in `repeated` runs again on these
    repeated: tuple[str, ...] = ("ef21", "ef21-sgdm", "ef21-sgd2m")  # EF14-SGD is a reference: one seed
    extra: tuple[str, ...] = ()  # launcher overrides added to every run

    def repeats(self) -> list[tuple[int, str]]:
        return [(b, m) for b, m in self.grids if m in self.repeated] if self.repeat_seeds else []

    def sweeps(self) -> list[str]:
        return [tune_name(b, m) for b, m in self.grids] + [repeat_name(b, m) for b, m in self.repeats()]

    def timeout_s(self, batch: int, points: int) -> float:
        return 120 + points * (60 + self.rounds[batch] / 20)  # about 30 s of process start-up, 75 rounds/s


def tune_name(batch: int, method: str) -> str:
    return f"b{batch}-{method}"


def repeat_name(batch: int, method: str) -> str:
    return f"b{batch}-{method}-repeat"


def _pow2(*exponents: int) -> list[float]:
    return [2.0**e for e in exponents]


# Sized for a shared 2-core machine (each run costs ~30 s of process start-up plus ~75 rounds/s): 3 step sizes
# 4x apart for the three EF21 methods at batch 1 (the claim), 2 (8x apart) for the rest, chosen around
# the poster's values and a scratch numpy simulation of the same algorithms (not committed). EF21-SGD at
# batch 1 got a fourth, 2^1, after its best was the grid edge 2^-1 (the baseline must not be under-tuned).
FULL = Plan(
    rounds={1: 800, 128: 400},
    grids={
        (1, "ef21"): _pow2(-5, -3, -1, 1),
        (1, "ef21-sgdm"): _pow2(-9, -7, -5),
        (1, "ef21-sgd2m"): _pow2(-9, -7, -5),
        (1, "ef14"): _pow2(-9, -6),
        (128, "ef21"): _pow2(-7, -4),
        (128, "ef21-sgdm"): _pow2(-7, -4),
        (128, "ef21-sgd2m"): _pow2(-7, -4),
        (128, "ef14"): _pow2(-7, -4),
    },
    tune_seed=0,
    repeat_seeds=[1, 2],
)
QUICK = Plan(  # the poster's step sizes, one seed, 150 rounds: exercises every step of the script; the 10 workers
    rounds={1: 150, 128: 150},  # share one process (threads), so a run does not spend ~30 s starting 10 of them
    grids={
        (1, "ef21"): [2**-6],
        (1, "ef21-sgdm"): [2**-7],
        (1, "ef21-sgd2m"): [2**-5],
        (1, "ef14"): [2**-4],
        (128, "ef21"): [2**-6],
        (128, "ef21-sgdm"): [2**-3],
        (128, "ef21-sgd2m"): [2**-4],
        (128, "ef14"): [2**-2],
    },
    tune_seed=0,
    repeat_seeds=[],
    extra=("worker.per_process=10",),
)


def overrides(plan: Plan, batch: int, method: str, lrs: list[float], seeds: list[int]) -> list[str]:
    return [
        f"task.batch_size={batch}",
        f"compression.method={method}",
        f"run.max_updates={plan.rounds[batch]}",
        f"sweep.optimizer.lr={lrs}",
        f"sweep.seed={seeds}",
        *plan.extra,
    ]


def run_one(plan: Plan, name: str, base: Path) -> Sweep:
    """Run the sweep called `name` into base/name (a repeat reads its step size from the tuning sweep)."""
    batch_text, _, method = name.removesuffix("-repeat").partition("-")
    batch = int(batch_text[1:])
    if name.endswith("-repeat"):
        best = pick(Result.of(recorded_sweep(base, tune_name(batch, method)), batch, method))
        if best is None:
            raise RuntimeError(f"{tune_name(batch, method)}: no step size finished, nothing to repeat")
        lrs, seeds = [best], plan.repeat_seeds
    else:
        lrs, seeds = plan.grids[(batch, method)], [plan.tune_seed]
    sweep = run_sweep(
        CONFIG, overrides(plan, batch, method, lrs, seeds), base / name, plan.timeout_s(batch, len(lrs) * len(seeds))
    )
    record_sweep(sweep, base)
    return sweep
