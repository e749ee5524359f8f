"""The async-vs-sync experiment's bookkeeping, on hand-made run folders (no processes): run order and
batches, what a run's figures mean (time to the target, ideal rates, the straggler's share), the lr choice."""

import json

import pytest
import yaml

from experiments.async_vs_sync.analysis import figures, ideal_rate, late_accuracy, mid_run_cpu
from experiments.async_vs_sync.plan import FULL, QUICK, batch_specs, best_lrs
from experiments.async_vs_sync.runs import read_batch
from experiments.common.runs import recorded


def make_run(
    folder,
    mode="async",
    workers=4,
    seed=0,
    lr=1e-3,
    slowdown=(1, 1, 1, 4),
    compute_s=0.02,
    accs=((0.0, 0.5), (0.1, 0.94), (0.2, 0.951), (0.3, 0.96)),
    pushes=100,
    per_rank_compute=0.0003,
):
    folder.mkdir(parents=True)
    cfg = {
        "mode": mode,
        "workers": workers,
        "seed": seed,
        "optimizer": {"lr": lr},
        "task": {"batch_size": 32},
        "worker": {"compute_s": compute_s, "slowdown": list(slowdown)},
        "run": {"max_updates": 1000, "max_seconds": 300.0, "eval_every_s": 0.05},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    steps = pushes // workers if mode == "sync" else pushes
    (folder / "summary.json").write_text(
        json.dumps(
            {
                "wall_s": 10.0,
                "updates": steps,
                "pushes_applied": pushes,
                "final_test_acc": accs[-1][1],
                "staleness_mean": 3.0 if mode == "async" else 0.0,
                "staleness_max": 12 if mode == "async" else 0,
            }
        )
    )
    (folder / "metrics.jsonl").write_text(
        "".join(json.dumps({"wall_s": t, "updates": 10 * i, "test_acc": a}) + "\n" for i, (t, a) in enumerate(accs))
    )
    for rank in range(workers):
        (folder / f"worker-{rank}.json").write_text(
            json.dumps({"pushes": 10, "compute_s": 10 * per_rank_compute, "wait_s": 0.01 * (rank + 1)})
        )
    rows = ["version,worker,base_version,staleness,lr,bytes,applied,loss,seq,reason,wall_s"]
    rows += [f"{i},{i % workers},{i},0,0.001,10,1,1.0,{i},ok,0.1" for i in range(pushes)]
    (folder / "updates.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_straggler_batch_interleaves_modes_within_each_seed_with_the_same_gradients(tmp_path):
    specs = batch_specs(FULL, "straggler", tmp_path)
    assert [(s.name.split("-")[1], s.overrides[1]) for s in specs] == [
        ("async", "seed=0"),
        ("sync", "seed=0"),
        ("async", "seed=1"),
        ("sync", "seed=1"),
        ("async", "seed=2"),
        ("sync", "seed=2"),
    ]
    assert "run.max_updates=3000" in specs[0].overrides and "run.max_updates=750" in specs[1].overrides
    assert [s.name for s in specs] == sorted(s.name for s in specs)  # folders sort in run order


def test_scaling_batches_cover_every_worker_count_and_mode(tmp_path):
    specs = batch_specs(FULL, "scaling-1", tmp_path)
    assert [(o[0], o[1]) for o in (s.overrides for s in specs)] == [
        (f"mode={m}", f"workers={n}") for n in (1, 2, 4, 8) for m in ("async", "sync")
    ]
    assert all("seed=1" in s.overrides and s.config == "experiments/async_vs_sync/scaling.yaml" for s in specs)
    with pytest.raises(ValueError, match="unknown batch"):
        batch_specs(FULL, "scaling", tmp_path)


def test_time_to_target_is_the_first_evaluation_at_or_above_it_with_the_one_before(tmp_path):
    make_run(tmp_path / "b" / "01-async")
    r = figures(read_batch(tmp_path, "b")[0])
    assert r.t_target == 0.2 and r.t_before == 0.1
    assert r.grads_at_target == 20  # async: one gradient per update
    assert r.eval_gap_s == pytest.approx(0.1)
    make_run(tmp_path / "c" / "01-sync", mode="sync")
    s = figures(read_batch(tmp_path, "c")[0])
    assert s.grads_at_target == 80  # sync: update 20 is 20 steps of 4 gradients
    assert s.gradients_per_s == 10.0 and s.steps_per_s == 2.5


def test_ideal_rates_sum_the_ranks_in_async_and_wait_for_the_slowest_in_sync(tmp_path):
    v = {"workers": 4, "slowdown": [1, 1, 1, 4], "compute_s": 0.02, "mode": "async"}
    make_run(tmp_path / "r", per_rank_compute=0.0)
    assert ideal_rate(tmp_path / "r", v) == pytest.approx(3 / 0.02 + 1 / 0.08)
    assert ideal_rate(tmp_path / "r", {**v, "mode": "sync"}) == pytest.approx(4 / 0.08)


def test_straggler_share_counts_the_applied_pushes_of_slowed_ranks(tmp_path):
    make_run(tmp_path / "b" / "01-async", pushes=100)
    assert figures(read_batch(tmp_path, "b")[0]).slow_share == pytest.approx(0.25)  # rank 3 of 4, round robin


def test_mid_run_cpu_counts_back_from_the_last_sample(tmp_path):
    rows = ["wall_s,process,pid,cpu_percent,rss_mb"]
    rows += [f"{t},server,1,{100 if t < 4 else 30},1" for t in range(0, 15)]  # start-up burst, then 0.3 cores
    rows += [f"{t},worker0,2,20,1" for t in range(0, 15)]
    (tmp_path / "processes.csv").write_text("\n".join(rows) + "\n")
    assert mid_run_cpu(tmp_path, 10.0) == pytest.approx(0.5)  # window [6.5, 11.5]: 30 + 20 percent


def test_late_accuracy_averages_the_evaluations_of_the_last_fifth_of_the_run():
    metrics = [{"wall_s": t, "test_acc": a} for t, a in [(0, 0.5), (5, 0.9), (8, 0.96), (9, 0.98), (10, 0.97)]]
    mean, std = late_accuracy(metrics)  # t >= 8: 0.96, 0.98, 0.97
    assert mean == pytest.approx(0.97) and std == pytest.approx(0.01)
    assert late_accuracy(metrics[:1]) is None


def test_best_lr_is_the_fastest_to_the_target_among_lrs_every_grid_seed_reached(tmp_path):
    fast, slow = ((0.0, 0.5), (0.1, 0.96)), ((0.0, 0.5), (0.5, 0.96))
    never = ((0.0, 0.5), (0.5, 0.9))
    for i, (mode, lr, seed, accs) in enumerate(
        [("async", 1e-3, 100, slow), ("async", 3e-3, 100, fast), ("sync", 1e-3, 100, slow), ("sync", 3e-3, 100, never)],
        1,
    ):
        make_run(tmp_path / f"lr_grid-{seed}" / f"{i:02d}-{mode}", mode=mode, lr=lr, seed=seed, accs=accs)
    assert best_lrs(QUICK, tmp_path) == {"async": 3e-3, "sync": 1e-3}
    tuned = batch_specs(QUICK, "tuned", tmp_path)  # only async moves off the config's lr
    assert [s.overrides[:2] for s in tuned] == [("mode=async", "seed=0")]
    assert "optimizer.lr=0.003" in tuned[0].overrides


def test_recorded_reads_back_one_value_per_run(tmp_path):
    (tmp_path / "commands.txt").write_text("a/01\tpython -m launch x\nb/02\tpython -m launch y\na/01\tagain\n")
    assert recorded(tmp_path, "commands.txt") == {"a/01": "again", "b/02": "python -m launch y"}
    assert recorded(tmp_path, "missing.txt") == {}


def test_scaling_notes_count_sync_steps_as_gradients_over_n(tmp_path):
    from experiments.async_vs_sync.scaling_notes import scaling_notes

    runs = []
    for i, (mode, n) in enumerate([("async", 1), ("sync", 1), ("async", 2), ("sync", 2)], 1):
        make_run(tmp_path / "s" / f"{i:02d}-{mode}-{n}", mode=mode, workers=n, slowdown=(), pushes=40)
    runs = [figures(p) for p in read_batch(tmp_path, "s")]
    notes = scaling_notes(runs, (1, 2))
    assert "gradients to 95% went from 20 at N = 1 to 20 at N = 2" in notes[0]  # the target is hit at update 20
    assert "Steps to 95% fell only from 20 at N = 1 to 20 at N = 2" in notes[1]  # N = 2: 40 gradients, 20 steps


def test_plots_draw_when_no_run_reached_the_target(tmp_path):
    """A short run may never reach 95%: the time axes then stay linear with a note, instead of failing to draw."""
    from experiments.async_vs_sync.analysis import RunFigures
    from experiments.async_vs_sync.plots import lr_grid, scaling, target_times
    from experiments.common.report import save_png

    def run(mode, n, lr):
        return RunFigures(
            point=None,
            mode=mode,
            workers=n,
            seed=0,
            lr=lr,
            batch_size=32,
            wall_s=1.0,
            steps=10,
            gradients=10 * n,
            ideal_gradients_per_s=12.0 * n,
            t_target=None,
            t_before=None,
            grads_at_target=None,
            final_acc=0.5,
            eval_gap_s=0.1,
            cpu_cores=0.3,
            staleness_mean=0.0,
            staleness_max=0,
            collective_ms=None,
            slow_share=None,
            late_acc=None,
        )

    runs = [run(m, n, 1e-3) for m in ("async", "sync") for n in (1, 2)]
    for name, fig in (
        ("scaling", scaling(runs, (1, 2))),
        ("lr", lr_grid(runs, (1e-3,))),
        ("times", target_times({"same lr": runs})),
    ):
        axes = [ax for ax in fig.axes if "time to the target" in ax.get_title()]
        assert axes and all(ax.get_yscale() == "linear" and ax.texts for ax in axes), name
        save_png(fig, tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
