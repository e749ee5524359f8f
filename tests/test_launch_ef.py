"""The EF21-family acceptance run: real processes through `python -m launch` (the slow tier)."""

import json

import pytest

from tests.test_launch import launch

CONFIG = "configs/digits_ef21_sgdm.yaml"
DENSE = ["compression.method=none", "compression.compressor=identity"]  # the same run, uncompressed


def _run(tmp_path, name, overrides):
    run = tmp_path / name
    out = launch([CONFIG, "run.plots=false", *overrides], run, timeout=240)
    assert out.returncode == 0, out.stderr + out.stdout
    return json.loads((run / "summary.json").read_text()), json.loads((run / "server_summary.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(540)
def test_ef21_sgdm_top1pct_on_digits_matches_uncompressed_accuracy_with_20x_fewer_uplink_bytes(tmp_path):
    ef, ef_server = _run(tmp_path, "ef21_sgdm", [])
    dense, _ = _run(tmp_path, "dense", DENSE)
    assert ef["workers"] == dense["workers"] == 4
    assert ef["updates"] == dense["updates"] == 6000  # same task, same number of updates
    assert dense["final_test_acc"] >= 0.95, dense  # the baseline trained: the comparison means something
    assert ef["final_test_acc"] >= dense["final_test_acc"] - 0.015, (ef["final_test_acc"], dense["final_test_acc"])
    assert dense["uplink_bytes"] >= 20 * ef["uplink_bytes"], (dense["uplink_bytes"], ef["uplink_bytes"])
    assert ef_server["method"] == "ef21-sgdm" and ef_server["ef_drift_max"] < 1e-5, ef_server
    assert ef["pushes_rejected"] == ef["rejected_by_reason"].get("stopped", 0)  # nothing refused
