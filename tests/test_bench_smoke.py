"""The benchmarks run at a tiny size and leave every figure they promise. A benchmark is not a timed test: no
timing is asserted, only that each figure is there and is what it claims to be (bytes of the state written,
the counters of a run with and without checkpoints, a restart that happened)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = 65536


def _bench(module: str, args: list[str]) -> subprocess.CompletedProcess:
    """python -m `module` with `args`, which must exit 0."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_checkpoint_benchmark_writes_its_table_with_every_figure(tmp_path):
    out = tmp_path / "out"
    args = ["--params", str(TINY), "--seconds", "2", "--warmup-s", "1", "--repeats", "1", "--copies", "3"]
    args += ["--every-s", "0.5", "--out", str(out)]
    proc = _bench("bench.checkpoint", args)
    data = json.loads((out / "checkpoint.json").read_text())
    assert data["command"] == "python -m bench.checkpoint " + " ".join(args)
    (row,) = data["rows"]
    alone, server, (rec,) = row["alone"], row["server"], row["recovery"]
    state = 4 * TINY * 4  # params, m, v, v_hat in float32
    for nbytes in (alone["bytes"], server["bytes_per_checkpoint"], rec["checkpoint_bytes"]):
        assert state < nbytes < state + 64 * 1024, nbytes  # plus the safetensors header and the manifest
    assert alone["loop_first_ms"] > 0 and alone["loop_ms"] > 0 and alone["write_s"] > 0
    assert len(alone["loop_ms_all"]) == len(alone["write_s_all"]) == 3
    assert server["checkpoints_off"] == 0 and server["checkpoints_written"] >= 2
    assert server["updates_per_s_on"] > 0 and server["updates_per_s_off"] > 0
    assert server["ratio"] == pytest.approx(server["updates_per_s_on"] / server["updates_per_s_off"])
    assert server["stall_first_ms"] is not None and server["stall_later_ms"] is not None
    assert server["copy_ms_max"] > 0
    assert rec["launcher_rc"] == 0 and rec["status"] == "ok" and rec["server_restarts"] == 1
    parts = rec["kill_to_restart_s"], rec["restart_to_resumed_s"], rec["resumed_to_update_s"]
    assert all(p > 0 for p in parts) and sum(parts) == pytest.approx(rec["kill_to_update_s"])
    assert rec["kill_to_restart_s"] >= 0.9  # the launcher's backoff before the first restart is 1 s
    md = (out / "checkpoint.md").read_text()
    assert data["command"] in md and f"| {TINY} | {server['bytes_per_checkpoint']} |" in md
    assert f"| {TINY} | {rec['kill_to_update_s']:.2f} |" in md
    assert f"wrote {out}/checkpoint.md" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_shm_pull_benchmark_writes_its_tables_with_every_figure(tmp_path):
    out = tmp_path / "out"
    args = ["--pull-params", str(TINY), "--pull-trials", "5", "--params", str(TINY), "--workers", "1"]
    args += ["--seconds", "2", "--warmup-s", "0.5", "--repeats", "1", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.shm_pull", *args], cwd=ROOT, capture_output=True, text=True, timeout=400
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "shm_pull.json").read_text())
    assert data["command"] == "python -m bench.shm_pull " + " ".join(args)
    pull = data["pull"]
    assert pull["numel"] == TINY and pull["every_read_uniform"] is True and len(pull["read_ms_all"]) == 5
    assert all(pull[k] > 0 for k in ("read_ms_median", "publish_ms_median", "private_copy_ms_median", "zmq_one_way_ms"))
    (row,) = data["rows"]
    rates = row["updates_per_s"]
    assert set(rates) == {"zmq", "shm", "shm_push", "shm_grad", "rpc", "rpc_tcp"} and all(v > 0 for v in rates.values())
    down, up = row["downlink_bytes_per_update"], row["socket_bytes_per_push"]
    assert down["zmq"] > 4 * TINY > 100 * down["shm"]  # over shm a reply is a header, not the parameters
    assert up["shm"] > 4 * TINY > 100 * max(up["shm_push"], up["shm_grad"])  # through the push slot: a header
    assert row["ratios"]["shm_push_over_rpc_tcp"] == rates["shm_push"] / rates["rpc_tcp"]
    assert row["ratios"]["shm_grad_over_rpc_tcp"] == rates["shm_grad"] / rates["rpc_tcp"]
    md = (out / "shm_pull.md").read_text()
    assert data["command"] in md and f"| {TINY} | 1 | {row['updates_per_s']['zmq']:.1f} |" in md


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_shard_benchmark_writes_every_case_with_the_model_beside_it(tmp_path):
    out = tmp_path / "out"
    args = ["--params", str(TINY), "--workers", "1", "--shards", "1", "2", "--rpc-transports", "tcp"]
    args += ["--seconds", "2", "--warmup-s", "0.5", "--repeats", "1", "--out", str(out)]
    _bench("bench.shard_push", args)
    data = json.loads((out / "shard_push.json").read_text())
    assert data["command"] == "python -m bench.shard_push " + " ".join(args)
    (row,) = data["rows"]
    assert set(row["taups"]) == {"1", "2"} and set(row["rpc"]) == {"tcp"} and row["rpc"]["tcp"] > 0
    for s, case in row["taups"].items():
        assert case["updates_per_s"] > 0 and len(case["shard_apply_ms"]) == int(s)
        predicted, binding = row["model"][s]
        assert predicted > 0 and binding in ("shard loop", "shard link", "workers", "cores")
    md = (out / "shard_push.md").read_text()
    assert data["command"] in md and f"| {TINY} | 1 | 2 | {row['taups']['2']['updates_per_s']:.1f} |" in md
    assert "Shards needed on hosts of their own" in md


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_startup_benchmark_writes_its_timeline_and_breakdown(tmp_path):
    out = tmp_path / "out"
    args = ["--repeats", "1", "--set", "workers=2", "run.max_updates=200", "run.plots=false", "--out", str(out)]
    proc = _bench("bench.startup", args)
    data = json.loads((out / "startup.json").read_text())
    assert data["command"] == "python -m bench.startup " + " ".join(args)
    (run,) = data["runs"]
    e, p = run["events_s"], run["phases_s"]
    order = ["validated", "handed_off", "server_bound", "training", "first_update", "training_end", "exit"]
    assert [e[k] for k in order] == sorted(e[k] for k in order) and e["validated"] > 0
    assert sum(v for k, v in p.items() if k != "first_update") == pytest.approx(e["exit"])
    assert p["training_end"] == pytest.approx(e["training_end"] - e["training"])
    imports = data["imports_s"]  # every process of the run, and the fork server the roles were forked from
    assert set(imports) == {"launcher", "zygote", "server", "evaluator", "worker0", "worker1"}
    assert all(0 < imports[p]["torch"] < imports[p]["total"] for p in ("launcher", "zygote"))
    roles = ("server", "evaluator", "worker0", "worker1")  # forked: torch was imported once, by the fork server
    assert all(imports[p]["torch"] < 0.1 * imports["zygote"]["torch"] for p in roles)
    steps = data["steps_alone_s"]
    assert steps["interpreter"] > 0 and steps["import torch"] > 0 and "preflight" in steps
    md = (out / "startup.md").read_text()
    assert data["command"] in md and f"| median | {e['exit']:.2f} | {e['first_update']:.2f} |" in md
    assert f"wrote {out}/startup.md" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_downlink_benchmark_compares_bytes_and_accuracy_with_dense_replies(tmp_path):
    out = tmp_path / "out"
    args = ["--params", str(TINY), "--ratios", "0.05", "--replies", "3", "--out", str(out)]
    args += ["--set", "run.max_updates=200", "run.plots=false"]
    _bench("bench.downlink", args)
    data = json.loads((out / "downlink.json").read_text())
    assert data["command"] == "python -m bench.downlink " + " ".join(args)
    dense, topk = data["runs"]
    assert (dense["downlink"], topk["downlink"]) == ("dense", "topk 0.05")
    assert dense["gap_max"] is None and 0 < topk["gap_max"] < 1
    assert topk["downlink_bytes_per_update"] * 5 < dense["downlink_bytes_per_update"]
    assert all(0 <= r["test_acc"] <= 1 and r["runs"][0]["updates"] == 200 for r in (dense, topk))
    (reply,) = data["replies"]
    assert reply["dense_bytes"] == 4 * TINY and reply["topk_bytes"] == 8 * int(0.05 * TINY)
    assert "| topk 0.05 |" in (out / "downlink.md").read_text()
