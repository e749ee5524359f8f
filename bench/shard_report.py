"""The report of bench/shard_push.py: OUT/shard_push.json (every trial) and OUT/shard_push.md (the tables, the
cost model against the runs, and the model's answer for hosts bigger than this one)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bench import cost_model

# hosts of their own with a 25 Gb/s link each, for the question docs/performance.md answers with the model
PLANS = [(100_000_000, 64, 25.0, 0.1), (100_000_000, 64, 100.0, 0.1), (16_777_216, 8, 25.0, 0.05)]


def write_report(out: Path, rows: list[dict], meta: dict, repeats: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    costs: cost_model.Costs = meta["costs"]
    record = {**meta, "costs": dataclasses.asdict(costs), "rows": rows}
    (out / "shard_push.json").write_text(json.dumps(record, indent=1))
    lines = _head(meta, repeats) + _table(rows, meta) + [""] + _rpc_table(rows, meta) + [""]
    lines += _target(rows, meta) + [""] + _plans(meta) + [""] + _notes()
    (out / "shard_push.md").write_text("\n".join(lines) + "\n")


def _head(meta: dict, repeats: int) -> list[str]:
    cal = meta["calibration"]
    return [
        "# Server shards: dense push + AMSGrad + reply with S shards, against torch.distributed.rpc",
        "",
        f"Measured {meta['date']} with `{meta['command']}` on a {meta['cores']}-core machine (copy bandwidth "
        f"{meta['copy_gbs']:.1f} GB/s, one thread). Updates/s are summed over workers, medians of {repeats} "
        "interleaved trials (every trial in shard_push.json). The cost model (bench/cost_model.py) was "
        f"calibrated in the same run, before the trials, from an isolated AMSGrad step of {cal['params']} "
        f"parameters ({cal['step_ms']:.2f} ms), the bare ZeroMQ round trip of their bytes between two "
        f"processes ({cal['round_trip_ms']:.2f} ms) and the copy bandwidth, with the machine's "
        f"{meta['cores']} cores shared by every process.",
        "",
    ]


def _table(rows: list[dict], meta: dict) -> list[str]:
    out = [
        "| params | workers | S | updates/s | x S=1 | vs rpc/"
        + " | vs rpc/".join(meta["rpc_transports"])
        + " | model updates/s (binding) | measured / model | apply ms per shard | CPU ms per update | cores busy |",
        "|---|---|---|---|---|" + "---|" * len(meta["rpc_transports"]) + "---|---|---|---|---|",
    ]
    for r in rows:
        base = r["taups"][meta["shards"][0]]["updates_per_s"]
        for s, t in r["taups"].items():
            x, (m, bound) = t["updates_per_s"], r["model"][s]
            vs = " | ".join(f"{x / v:.2f}x" if v else "-" for v in r["rpc"].values())
            applies = ", ".join(f"{a:.2f}" for a in t["shard_apply_ms"])
            busy = t["cpu_ms_per_update"] * x / 1e3
            cpu = f"{t['cpu_ms_per_update']:.1f} | {busy:.2f}"
            out.append(f"| {r['params']} | {r['workers']} | {s} | {x:.1f} | {x / base:.2f}x | {vs} | "
                       f"{m:.1f} ({bound}) | {x / m:.2f} | {applies} | {cpu} |")  # fmt: skip
    return out


def _rpc_table(rows: list[dict], meta: dict) -> list[str]:
    out = ["| params | workers | " + " | ".join(f"rpc/{t} updates/s" for t in meta["rpc_transports"]) + " |",
           "|---|---|" + "---|" * len(meta["rpc_transports"])]  # fmt: skip
    out += [f"| {r['params']} | {r['workers']} | " + " | ".join(f"{v:.1f}" for v in r["rpc"].values()) + " |"
            for r in rows]  # fmt: skip
    return out


def _target(rows: list[dict], meta: dict) -> list[str]:
    params, workers, shards, ratio = meta["target"]
    row = next((r for r in rows if (r["params"], r["workers"]) == (params, workers)), None)
    if row is None or shards not in row["taups"] or 1 not in row["taups"]:
        return [f"Target ({params} parameters, {workers} workers, S = {shards} >= {ratio}x S = 1): not measured."]
    got = row["taups"][shards]["updates_per_s"] / row["taups"][1]["updates_per_s"]
    model = row["model"][shards][0] / row["model"][1][0]
    verdict = "met" if got >= ratio else "NOT met"
    return [f"Target: {params} parameters, {workers} workers, S = {shards} at least {ratio}x S = 1: measured "
            f"{got:.2f}x, {verdict}; the cost model predicts {model:.2f}x on this machine."]  # fmt: skip


def _plans(meta: dict) -> list[str]:
    """The model's answer for hosts of their own, with this machine's measured apply rate per core."""
    costs: cost_model.Costs = meta["costs"]
    mem_gbs = cost_model.AMSGRAD_BYTES_PER_PARAM / costs.apply_s / 1e9
    out = [f"Shards needed on hosts of their own (one shard per host, each core applying at this machine's "
           f"measured {mem_gbs:.1f} GB/s of AMSGrad traffic; the fewest S within 5% of the best):", "",
           "| params | workers | link Gb/s | worker compute ms | shards needed | updates/s then (binding) |",
           "|---|---|---|---|---|---|"]  # fmt: skip
    for params, workers, gbit, compute_s in PLANS:
        c = cost_model.network_costs(mem_gbs, gbit, compute_s)
        s = cost_model.shards_needed(params, workers, c)
        x, bound = cost_model.predict(params, workers, s, c)
        out.append(f"| {params} | {workers} | {gbit:g} | {1e3 * compute_s:g} | {s} | {x:.1f} ({bound}) |")
    return out


def _notes() -> list[str]:
    return [
        "S = 1 runs the same bench worker (bench/shard_worker.py) against one server, so every S pays the same "
        "worker code. updates/s counts whole updates (a push every shard answered); apply ms per shard = "
        "the shard's validate + AMSGrad step per update (its server_summary.json); CPU ms per update = the "
        "CPU time (all threads, ZeroMQ's I/O threads too) of all servers and workers per update; cores busy = "
        "that times updates/s. The model's bounds: shard loop, shard link, workers (closed loops) and cores "
        "(bench/cost_model.py's docstring); on one host the cores bound does not grow with S, which is why "
        "sharding helps there only while a single shard's loop, not the machine, is what binds.",
    ]
