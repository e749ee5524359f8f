"""Server shards: dense push + AMSGrad apply + reply with S = 1, 2 (4) shards, against torch.distributed.rpc, in
one run, with the cost model's prediction beside every measurement (bench/cost_model.py).

python -m bench.shard_push [--params 262144 4194304 16777216] [--workers 1 2 4] [--shards 1 2 4]
                           [--seconds 5] [--repeats 3] [--out bench/results]

For each model size and worker count it measures updates/s (summed over workers) of
  taups S   S real server shards (python -m ps --shard s, server.shards = S) with bench workers
            (bench/shard_worker.py) pushing one preallocated dense gradient, cut into one part per shard,
  rpc       torch.distributed.rpc doing the same work with one server (bench/rpc_baseline.py),
repeats times, interleaved, and reports the medians. The cost model is calibrated in the same run from an
isolated AMSGrad step and the bare ZeroMQ round trip (bench/machine.py), never from the runs it predicts.
Results go to OUT/shard_push.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from bench import cost_model, rpc_baseline
from bench.machine import amsgrad_step_s, copy_bandwidth_gbs, zmq_round_trip_s
from bench.push_run import ROOT, run_push_server
from bench.shard_report import write_report

CALIBRATION_PARAMS = 4194304  # the model's per-parameter and per-byte costs are measured at this size
TARGET = (16777216, 2, 2, 1.5)  # issue 15: 16M parameters, 2 workers: S = 2 at least 1.5x S = 1


def main() -> int:
    args = _parse_args()
    meta = _machine(args)
    rows = []
    for params in args.params:
        for workers in args.workers:
            rows.append(_measure(args, params, workers, meta["costs"]))
            print(_line(rows[-1]), flush=True)
    meta["command"] = "python -m bench.shard_push " + " ".join(sys.argv[1:])
    write_report(args.out, rows, meta, args.repeats)
    print(f"results: {args.out / 'shard_push.md'}")
    return 0


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=int, nargs="+", default=[262144, 4194304, 16777216])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--shards", type=int, nargs="+", default=None, help="default: 1 2, and 4 on 4 cores or more")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup-s", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3, help="alternate the cases this often; report medians")
    ap.add_argument("--rpc-transports", nargs="+", default=["auto", "tcp"], choices=sorted(rpc_baseline.TRANSPORTS))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    if args.shards is None:
        args.shards = [1, 2] + ([4] if (os.cpu_count() or 1) >= 4 else [])
        if 4 not in args.shards:
            print(f"S = 4 left out: {os.cpu_count()} cores (--shards 1 2 4 runs it anyway)", flush=True)
    return args


def _machine(args: argparse.Namespace) -> dict:
    """This machine's limits and the cost model calibrated on them (measured before any run)."""
    copy_gbs = copy_bandwidth_gbs()
    step = amsgrad_step_s(CALIBRATION_PARAMS)
    wire = zmq_round_trip_s(4 * CALIBRATION_PARAMS)
    costs = cost_model.loopback_costs(
        step, CALIBRATION_PARAMS, wire, 4 * CALIBRATION_PARAMS, copy_gbs, os.cpu_count() or 1
    )
    print(
        f"copy {copy_gbs:.1f} GB/s; at {CALIBRATION_PARAMS} params: isolated AMSGrad step {1e3 * step:.2f} ms, "
        f"bare ZeroMQ round trip {1e3 * wire:.2f} ms ({costs.link_Bps / 1e9:.2f} GB/s each way)",
        flush=True,
    )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cores": os.cpu_count(),
        "copy_gbs": copy_gbs,
        "calibration": {"params": CALIBRATION_PARAMS, "step_ms": 1e3 * step, "round_trip_ms": 1e3 * wire},
        "costs": costs,
        "shards": args.shards,
        "rpc_transports": args.rpc_transports,
        "target": TARGET,
    }


def _measure(args: argparse.Namespace, params: int, workers: int, costs: cost_model.Costs) -> dict:
    """One table row: every S and rpc transport alternated args.repeats times, the median trial of each."""
    taups: dict[int, list[dict]] = {s: [] for s in args.shards}
    rpc: dict[str, list[float]] = {t: [] for t in args.rpc_transports}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every case alike
        for s in args.shards:
            taups[s].append(_taups(params, workers, s, args))
        for t in args.rpc_transports:
            rpc[t].append(rpc_baseline.measure(params, workers, args.warmup_s, args.seconds, t))
    return {
        "params": params,
        "workers": workers,
        "taups": {s: _median_trial(trials) for s, trials in taups.items()},
        "taups_trials": {s: [round(t["updates_per_s"], 1) for t in trials] for s, trials in taups.items()},
        "rpc": {t: statistics.median(v) for t, v in rpc.items()},
        "rpc_trials": {t: [round(x, 1) for x in v] for t, v in rpc.items()},
        "model": {s: cost_model.predict(params, workers, s, costs) for s in args.shards},
    }


def _taups(params: int, workers: int, shards: int, args: argparse.Namespace) -> dict:
    """One trial; the shards' per-update apply times (ms) beside the updates/s. The shared-memory segment is
    off (server.transport: zmq) for every S: bench workers read replies, and publishing costs a copy."""
    got = run_push_server(params, workers, args.warmup_s, args.seconds, "tcp://127.0.0.1:0",
                          server={"transport": "zmq"}, shards=shards)  # fmt: skip
    applies = [1e3 * s["time_split_s"]["apply_s"] / max(1, s["updates"]) for s in got["shard_summaries"]]
    return {
        "updates_per_s": got["updates_per_s"],
        "shard_apply_ms": applies,
        "server_idle_fraction": got["server_idle_fraction"],
        "cpu_ms_per_update": 1e3 * got["server_cpu_s"] / max(1e-9, got["updates_per_s"] * args.seconds)
        + got["worker_cpu_ms_per_push"],
    }


def _median_trial(trials: list[dict]) -> dict:
    return sorted(trials, key=lambda t: t["updates_per_s"])[len(trials) // 2]


def _line(r: dict) -> str:
    cases = "  ".join(
        f"S={s} {t['updates_per_s']:7.1f}/s (model {r['model'][s][0]:.0f}, {r['model'][s][1]})"
        for s, t in r["taups"].items()
    )
    rpc = "  ".join(f"rpc/{k} {v:7.1f}/s" for k, v in r["rpc"].items())
    return f"{r['params']:>9} params {r['workers']} workers: {cases}  {rpc}"


if __name__ == "__main__":
    sys.exit(main())
