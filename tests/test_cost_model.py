"""The shard cost model (bench/cost_model.py, docs/performance.md, Choosing the number of shards): each bound
is the arithmetic its docstring states, and the shard count it recommends follows from them."""

from __future__ import annotations

import pytest

from bench import cost_model, shard_plan
from bench.cost_model import Costs, bounds, predict, shards_needed

P = 1_000_000


def test_each_bound_is_the_stated_arithmetic():
    c = Costs(apply_s=1e-9, link_Bps=1e9, cpu_per_byte_s=1e-9, compute_s=0.01, cores=2, copy_s=1e-10)
    b = bounds(P, 4, 2, c)
    assert b["shard loop"] == pytest.approx(2 / (P * 1e-9 + 2 * 4 * P * 1e-10))
    assert b["shard link"] == pytest.approx(2 * 1e9 / (4 * P))
    assert b["workers"] == pytest.approx(4 / (0.01 + 2 * 4 * P / 1e9 + P * 1e-9 / 2))
    assert b["cores"] == pytest.approx(2 / (0.01 + P * 1e-9 + 2 * 4 * P * (1e-9 + 1e-10)))


def test_shared_cores_do_not_grow_with_shards_and_hosts_of_their_own_have_no_cores_bound():
    shared = Costs(apply_s=1e-9, link_Bps=1e9, cpu_per_byte_s=1e-9, cores=2)
    assert bounds(P, 2, 1, shared)["cores"] == bounds(P, 2, 8, shared)["cores"]
    assert "cores" not in bounds(P, 2, 1, cost_model.network_costs(10, 25, 0.1))


def test_the_binding_resource_is_the_smallest_bound():
    c = cost_model.network_costs(mem_gbs=10, link_gbit=25, compute_s=0.1)
    x, name = predict(100_000_000, 64, 1, c)
    assert name == "shard loop" and x == pytest.approx(1 / (100_000_000 * (36 + 8 * 2) / 10e9))
    x, name = predict(100_000_000, 64, 1024, c)
    assert name == "workers" and x == min(bounds(100_000_000, 64, 1024, c).values())


def test_shards_needed_is_the_fewest_within_reach_of_the_best():
    c = cost_model.network_costs(mem_gbs=10, link_gbit=25, compute_s=0.1)
    s = shards_needed(100_000_000, 64, c)
    best = predict(100_000_000, 64, 1024, c)[0]
    assert predict(100_000_000, 64, s, c)[0] >= 0.95 * best > predict(100_000_000, 64, s - 1, c)[0]
    assert shards_needed(1000, 1, c) == 1  # a tiny model: one worker's own loop binds from the start


def test_loopback_costs_take_the_link_from_the_round_trip():
    c = cost_model.loopback_costs(
        step_s=0.004, step_params=P, round_trip_s=0.01, round_trip_bytes=4 * P, copy_gbs=20.0, cores=2
    )
    assert c.apply_s == pytest.approx(4e-9) and c.link_Bps == pytest.approx(8 * P / 0.01)
    assert c.copy_s == pytest.approx(2 / 20e9)
    assert c.cpu_per_byte_s == pytest.approx(1 / c.link_Bps) and c.cores == 2


def test_the_plan_command_prints_the_shards_the_model_needs(capsys):
    argv = ["--params", "100e6", "--workers", "64", "--link-gbit", "25", "--mem-gbs", "20", "--compute-ms", "100"]
    assert shard_plan.main(argv) == 0
    need = shards_needed(100_000_000, 64, cost_model.network_costs(20, 25, 0.1), 256)
    assert f"shards needed: {need} (" in capsys.readouterr().out


@pytest.mark.parametrize(
    "bad",
    [["--params", "0"], ["--workers", "-1"], ["--compute-ms", "-5"], ["--params", "nan"], ["--params", "inf"],
     ["--link-gbit", "nan"], ["--mem-gbs", "inf"], ["--compute-ms", "nan"], ["--params", "1e300"]],
)  # fmt: skip
def test_the_plan_command_refuses_a_bad_figure_naming_it(bad, capsys):
    argv = ["--params", "1e6", "--workers", "2", "--link-gbit", "25", "--mem-gbs", "20", *bad]
    with pytest.raises(SystemExit) as done:
        shard_plan.main(argv)
    assert done.value.code == 2 and bad[0] in capsys.readouterr().err


@pytest.mark.parametrize("params, most", [("1e9", 64), ("200", 3), ("64", 1), ("1.5", 1)])
def test_the_plan_never_needs_more_shards_than_a_run_may_have(params, most, capsys):
    """server.shards is at most 64, and every shard owns at least 64 parameters (a whole aligned block)."""
    argv = ["--params", params, "--workers", "256", "--link-gbit", "0.01", "--mem-gbs", "0.01", "--max-shards", "4096"]
    assert shard_plan.main(argv) == 0
    out = capsys.readouterr().out
    need = int(out.split("shards needed: ")[1].split()[0])
    listed = [int(line.split()[2].rstrip(":")) for line in out.splitlines() if line.startswith("S =")]
    assert 1 <= need <= most and max(listed) <= most, out
