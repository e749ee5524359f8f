"""optimizer.schedule: the cosine factor's values, the server's lr per push and the sync baseline's per step
follow it (ps/schedule.py; quick)."""

import csv
import math

import pytest

from protocol.config.schema import StalenessConfig
from ps.policy import StalenessPolicy
from ps.schedule import lr_factor


def test_cosine_runs_from_one_to_zero_over_the_horizon():
    assert lr_factor("cosine", 0, 100) == 1.0
    assert lr_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert lr_factor("cosine", 25, 100) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)
    assert lr_factor("cosine", 100, 100) == pytest.approx(0.0) and lr_factor("cosine", 500, 100) == pytest.approx(0.0)
    assert all(lr_factor("constant", v, 100) == 1.0 for v in (0, 50, 1000))
    with pytest.raises(ValueError, match="linear"):
        lr_factor("linear", 0, 10)


def test_the_policy_scales_the_staleness_rule_by_the_schedule():
    policy = StalenessPolicy(0.1, StalenessConfig(lr_rule="inverse"), "cosine", 100)
    assert policy.decide(tau=4, version=50).lr == pytest.approx(0.1 * 0.5 / 4)
    assert StalenessPolicy(0.1).decide(tau=4, version=50).lr == 0.1  # constant: lr0 exactly


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_a_run_steps_with_the_scheduled_lr(tmp_path, mode):
    from tests.test_launch import launch

    run = tmp_path / "run"
    args = ["configs/tiny.yaml", f"mode={mode}", "workers=2", "optimizer.schedule=cosine", "run.max_updates=60"]
    out = launch([*args, "optimizer.lr=0.01"], run)
    assert out.returncode == 0, out.stderr + out.stdout
    with open(run / "updates.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["applied"] == "1"]
    assert len(rows) >= 50
    for r in rows:  # the update that made version v stepped at version v - 1
        want = 0.01 * lr_factor("cosine", int(r["version"]) - 1, 60)
        assert float(r["lr"]) == pytest.approx(want, rel=1e-5, abs=1e-9), r
