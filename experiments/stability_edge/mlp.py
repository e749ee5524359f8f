"""Part (b) of the stability report: SGD on the digits MLP under a constant simulated delay, lr rules compared.

1. lr grid at tau = 0 (one seed): lr0 = the largest grid lr whose final accuracy is within PICK_TOL of the best,
   i.e. as close to the edge of stability at tau = 0 as the grid gets without losing accuracy;
2. tau = 0 with lr0 (the baseline), every seed;
3. tau in plan.taus x lr_rule in (constant, stability, inverse) with lr0, every seed;
then the sharpness (top Hessian eigenvalue) at every run's final parameters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from experiments.common.sweeps import Point, Sweep, record_sweep, recorded_sweep, run_sweep
from experiments.stability_edge.sharpness import init_sharpness, run_sharpness

CONFIG = "experiments/stability_edge/config.yaml"
PICK_TOL = 0.01  # lr0: within one accuracy point of the grid's best
SHARPNESS = "sharpness.json"  # beside the sweeps: {run folder or "init seed=N": top Hessian eigenvalue}


@dataclass(frozen=True)
class MlpPlan:
    lr_grid: list[float]
    grid_updates: int
    taus: list[int]
    rules: list[str]
    seeds: list[int]
    updates: int

    def timeout_s(self, runs: int, updates: int) -> float:
        return 60 + runs * (45 + updates / 100)


FULL = MlpPlan([0.25, 0.5, 1.0, 2.0, 4.0], 4000, [4, 16], ["constant", "stability", "inverse"], [0, 1, 2], 10000)
QUICK = MlpPlan([0.5], 200, [4], ["constant", "stability"], [0], 300)


@dataclass
class MlpRuns:
    grid: Sweep
    lr0: float
    base: Sweep
    delayed: Sweep
    sharpness: dict[Path, float | None]  # at each run's final parameters
    init_sharpness: dict[int, float]  # at the initial parameters, per seed


def pick_lr0(points: list[Point]) -> float:
    scored = [
        (p.values["optimizer.lr"], p.summary["final_test_acc"])
        for p in points
        if p.ok and p.summary and p.summary.get("final_test_acc") is not None
    ]
    if not scored:
        raise RuntimeError("no run of the lr grid finished; cannot pick lr0")
    best = max(acc for _, acc in scored)
    return max(lr for lr, acc in scored if acc >= best - PICK_TOL)


def run(plan: MlpPlan, base_dir: Path) -> MlpRuns:
    grid = run_sweep(
        CONFIG,
        [
            f"sweep.optimizer.lr={plan.lr_grid}",
            "sweep.staleness.delay_versions=[1]",
            "sweep.staleness.lr_rule=[constant]",
            "sweep.seed=[0]",
            f"run.max_updates={plan.grid_updates}",
        ],
        base_dir / "lr_grid",
        plan.timeout_s(len(plan.lr_grid), plan.grid_updates),
    )
    lr0 = pick_lr0(grid.points)
    print(f"lr0 = {lr0:g} (largest grid lr within {PICK_TOL:g} of the best tau = 0 accuracy)", flush=True)
    common = [f"sweep.seed={plan.seeds}", f"optimizer.lr={lr0:g}", f"run.max_updates={plan.updates}"]
    base = run_sweep(
        CONFIG,
        ["sweep.staleness.delay_versions=[1]", "sweep.staleness.lr_rule=[constant]", *common],
        base_dir / "tau0",
        plan.timeout_s(len(plan.seeds), plan.updates),
    )
    delayed = run_sweep(
        CONFIG,
        [
            f"sweep.staleness.delay_versions={[t + 1 for t in plan.taus]}",
            f"sweep.staleness.lr_rule=[{', '.join(plan.rules)}]",
            *common,
        ],
        base_dir / "delayed",
        plan.timeout_s(len(plan.taus) * len(plan.rules) * len(plan.seeds), plan.updates),
    )
    for sweep in (grid, base, delayed):
        record_sweep(sweep, base_dir)
    return measured(base_dir, grid, base, delayed)


def measured(base_dir: Path, grid: Sweep, base: Sweep, delayed: Sweep) -> MlpRuns:
    """The runs with every final model's sharpness (computed once, kept in sharpness.json beside them)."""
    path = base_dir / SHARPNESS
    known = json.loads(path.read_text()) if path.exists() else {}
    for p in (*grid.points, *base.points, *delayed.points):
        key = str(p.folder.relative_to(base_dir))
        if key not in known:
            known[key] = run_sharpness(p.folder) if p.ok else None
    for p in base.points:  # the tau = 0 runs start from the same model as every other run of their seed
        key = f"init seed={p.values['seed']}"
        if key not in known:
            known[key] = init_sharpness(p.folder)
    path.write_text(json.dumps(known, indent=1))
    sharp = {base_dir / k: v for k, v in known.items() if not k.startswith("init ")}
    init = {int(k.split("=")[1]): v for k, v in known.items() if k.startswith("init ")}
    return MlpRuns(grid, pick_lr0(grid.points), base, delayed, sharp, init)


def recorded(base_dir: Path) -> MlpRuns:
    return measured(base_dir, *(recorded_sweep(base_dir, name) for name in ("lr_grid", "tau0", "delayed")))
