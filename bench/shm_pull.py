"""Shared-memory parameters and pushes (docs/design.md, Shared-memory parameters; Shared-memory pushes): what a
pull through the segment costs, and dense push updates/s with the parameters (and the pushes) in shared memory
against ZeroMQ both ways, beside torch.distributed.rpc, in one run.

python -m bench.shm_pull [--pull-params 10000000] [--params 262144 4194304] [--workers 1 2] [--seconds 5]
                         [--repeats 3] [--out bench/results]

pull   a writer process publishes a version of --pull-params floats into a segment (timed: the server's cost
       per version), then a reader process copies it out (timed: a worker's pull); --pull-trials times. In
       the same run: a one-thread copy of the same bytes between two private buffers, and the median bare
       ZeroMQ round trip of that many bytes each way over loopback, zero-copy (half of it: one way).
push   the real server (python -m ps) and bench workers pushing dense gradients: zmq (parameters in every
       reply) against shm (python -m bench.push_worker --shm: version-only replies, parameters read from the
       segment; pushes over ZeroMQ), shm_push (--shm --shm-push: the pushes through the rank's push slot
       too, copied into it as a worker whose pushes are not its gradient buffer does) and shm_grad (and
       --grad-in-slot: the gradient computed straight into the slot, as a CPU worker's dense pushes are: no
       copy per push), and torch.distributed.rpc doing the same work with its auto transport (shared memory on one host,
       rpc) and pinned to loopback TCP (rpc_tcp); interleaved --repeats times, medians.
Results go to bench/results/shm_pull.{md,json}; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench import rpc_baseline
from bench.machine import zmq_round_trip_s
from bench.push_run import ROOT, run_push_server
from protocol.wire import shm

TARGET_PULL_MS = 5.0  # issue 15: a 10M-parameter pull through shared memory


def main() -> int:
    args = _parse_args()
    pull = measure_pull(args.pull_params, args.pull_trials)
    print(_pull_line(pull), flush=True)
    rows = []
    for params in args.params:
        for workers in args.workers:
            rows.append(_measure_push(args, params, workers))
            print(_push_line(rows[-1]), flush=True)
    _write(args.out, pull, rows, args)
    print(f"wrote {args.out}/shm_pull.md", flush=True)
    return 0


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pull-params", type=int, default=10_000_000)
    ap.add_argument("--pull-trials", type=int, default=50)
    ap.add_argument("--params", type=int, nargs="*", default=[262144, 4194304])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup-s", type=float, default=2.0)
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="alternate zmq, shm, shm_push, shm_grad, rpc, rpc_tcp this often; medians",
    )
    ap.add_argument("--no-rpc", action="store_true", help="leave torch.distributed.rpc out")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    return ap.parse_args()


# -- pull ------------------------------------------------------------------------------------------------------


def measure_pull(numel: int, trials: int) -> dict:
    """Publish (this process) and read (another process) times of a numel-float segment, ms, every trial."""
    ctx = mp.get_context("spawn")
    todo, done = ctx.Queue(), ctx.Queue()
    writer = shm.SegmentWriter("bench-pull", numel)
    reader = ctx.Process(target=_read_trials, args=(writer.advert().to_wire(), numel, todo, done))
    reader.start()
    values, publish_ms, read_ms, uniform = np.empty(numel, np.float32), [], [], True
    try:
        for version in range(1, trials + 3):
            values.fill(version)
            t0 = time.perf_counter()
            writer.publish(version, values)
            publish_ms.append(1e3 * (time.perf_counter() - t0))
            todo.put(version)
            ms, ok = done.get(timeout=120)
            read_ms.append(ms)
            uniform &= ok
        todo.put(0)
        reader.join(timeout=60)
    finally:
        writer.close()
        if reader.is_alive():
            reader.kill()
    skip = 2  # the first versions touch fresh pages of the segment and of the reader's buffer
    return _pull_figures(numel, publish_ms[skip:], read_ms[skip:], uniform)


def _read_trials(advert: dict, numel: int, todo: mp.Queue, done: mp.Queue) -> None:
    reader = shm.SegmentReader(shm.Advert.from_wire(advert), numel)
    dst = np.empty(numel, np.float32)
    while (version := todo.get(timeout=120)) > 0:
        t0 = time.perf_counter()
        got = reader.read_into(dst, version)
        ms = 1e3 * (time.perf_counter() - t0)
        done.put((ms, got == version and float(dst.min()) == float(dst.max()) == version))
    reader.close()


def _pull_figures(numel: int, publish_ms: list[float], read_ms: list[float], uniform: bool) -> dict:
    src, dst = np.ones(numel, np.float32), np.zeros(numel, np.float32)
    copies = []
    for _ in range(len(read_ms)):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        copies.append(1e3 * (time.perf_counter() - t0))
    return {
        "numel": numel,
        "read_ms_median": statistics.median(read_ms),
        "read_ms_p90": sorted(read_ms)[int(0.9 * (len(read_ms) - 1))],
        "publish_ms_median": statistics.median(publish_ms),
        "private_copy_ms_median": statistics.median(copies),
        "zmq_one_way_ms": 1e3 * zmq_round_trip_s(4 * numel) / 2,
        "every_read_uniform": uniform,
        "read_ms_all": [round(x, 3) for x in read_ms],
        "publish_ms_all": [round(x, 3) for x in publish_ms],
    }


def _pull_line(p: dict) -> str:
    return (
        f"pull of {p['numel']} floats through shared memory: read {p['read_ms_median']:.2f} ms (p90 "
        f"{p['read_ms_p90']:.2f}; target {TARGET_PULL_MS} ms), publish {p['publish_ms_median']:.2f} ms; a private "
        f"copy of the same bytes {p['private_copy_ms_median']:.2f} ms, ZeroMQ one way {p['zmq_one_way_ms']:.2f} ms"
    )


# -- push ------------------------------------------------------------------------------------------------------


def _measure_push(args: argparse.Namespace, params: int, workers: int) -> dict:
    """One row: zmq, shm, shm_push (and rpc, rpc_tcp) alternated args.repeats times, the median of each."""
    cases = [*OURS, *([] if args.no_rpc else ["rpc", "rpc_tcp"])]
    trials: dict[str, list[float]] = {case: [] for case in cases}
    down: dict[str, list[float]] = {case: [] for case in OURS}
    up: dict[str, list[float]] = {case: [] for case in OURS}
    pulls = dict.fromkeys(trials, 0)  # shm reads torn every try, pulled over ZeroMQ instead (all trials)
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every case alike
        for case in trials:
            rate, downlink, uplink, pulled = _one_case(case, params, workers, args.warmup_s, args.seconds)
            trials[case].append(rate)
            down.get(case, []).append(downlink)
            up.get(case, []).append(uplink)
            pulls[case] += pulled
    med = {case: statistics.median(v) for case, v in trials.items()}
    return {
        "params": params,
        "workers": workers,
        "updates_per_s": med,
        "ratios": {f"{a}_over_{b}": _ratio(med, a, b) for a, b in RATIOS},
        "trials": {case: [round(x, 1) for x in v] for case, v in trials.items()},
        "downlink_bytes_per_update": {case: statistics.median(v) for case, v in down.items()},
        "socket_bytes_per_push": {case: statistics.median(v) for case, v in up.items()},
        "shm_fallbacks": pulls,
    }


OURS = ["zmq", "shm", "shm_push", "shm_grad"]
FLAGS = {
    "zmq": [],
    "shm": ["--shm"],
    "shm_push": ["--shm", "--shm-push"],
    "shm_grad": ["--shm", "--shm-push", "--grad-in-slot"],
}
# the ratios each row reports: shm params over zmq, shm pushes over shm params and over zmq, the gradient in the
# slot over a copy into it, and the shm paths over rpc with each of its transports
RATIOS = [("shm", "zmq"), ("shm_push", "shm"), ("shm_push", "zmq"), ("shm_grad", "shm_push"), ("shm", "rpc"),
          ("shm_push", "rpc"), ("shm_push", "rpc_tcp"), ("shm_grad", "rpc"), ("shm_grad", "rpc_tcp")]  # fmt: skip


def _ratio(med: dict[str, float], a: str, b: str) -> float | None:
    return med[a] / med[b] if med.get(a) and med.get(b) else None


def _one_case(case: str, params: int, workers: int, warmup_s: float, seconds: float) -> tuple[float, float, float, int]:
    """Updates/s, the server's downlink bytes per update (0 for rpc: the parameters, or only a header), the
    bytes a push put on the socket (0 for rpc: the gradient, or only a header) and the shm reads pulled instead."""
    if case in ("rpc", "rpc_tcp"):
        transport = "auto" if case == "rpc" else "tcp"
        return rpc_baseline.measure(params, workers, warmup_s, seconds, transport), 0.0, 0.0, 0
    server = {"transport": "zmq" if case == "zmq" else "auto"}
    got = run_push_server(
        params, workers, warmup_s, seconds, "tcp://127.0.0.1:0", server=server, worker_flags=FLAGS[case]
    )
    down = got["summary"]["downlink_bytes"] / max(1, got["summary"]["updates"])
    return got["updates_per_s"], down, got["push_bytes"], got["shm_fallbacks"]


def _push_line(r: dict) -> str:
    rates = "  ".join(f"{case} {v:7.1f}/s" for case, v in r["updates_per_s"].items())
    ratios = "  ".join(f"{k.replace('_over_', '/')} {v:.2f}x" for k, v in r["ratios"].items() if v is not None)
    return f"{r['params']:>8} params {r['workers']} workers: {rates}  {ratios}"


# -- results ---------------------------------------------------------------------------------------------------


def _write(out: Path, pull: dict, rows: list[dict], args: argparse.Namespace) -> None:
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "python -m bench.shm_pull " + " ".join(sys.argv[1:])}
    (out / "shm_pull.json").write_text(json.dumps({**meta, "pull": pull, "rows": rows}, indent=1))
    p = pull
    lines = [
        "# Shared-memory parameters and pushes: pull and dense push",
        "",
        f"Measured {meta['date']} with `{meta['command']}`; medians (every trial in shm_pull.json).",
        "",
        "| floats | read ms (median) | read ms (p90) | target ms | publish ms | private copy ms | ZeroMQ one way ms "
        "| every read uniform |",
        "|---|---|---|---|---|---|---|---|",
        f"| {p['numel']} | {p['read_ms_median']:.2f} | {p['read_ms_p90']:.2f} | {TARGET_PULL_MS} | "
        f"{p['publish_ms_median']:.2f} | {p['private_copy_ms_median']:.2f} | {p['zmq_one_way_ms']:.2f} | "
        f"{p['every_read_uniform']} |",
        "",
        "zmq: parameters and pushes over ZeroMQ; shm: parameters from shared memory, pushes over ZeroMQ; "
        "shm+push: both through shared memory, the push copied into the slot; shm+grad: the gradient computed in "
        "the slot (a CPU worker's dense pushes); rpc: torch.distributed.rpc, auto transport (shared memory) and "
        "loopback TCP.",
        "",
        "| params | workers | zmq upd/s | shm upd/s | shm+push upd/s | shm+grad upd/s | rpc (auto) upd/s "
        "| rpc (tcp) upd/s | shm / zmq | shm+push / shm | shm+push / zmq | shm+grad / shm+push "
        "| shm+push / rpc (auto) | shm+push / rpc (tcp) | shm+grad / rpc (auto) | shm+grad / rpc (tcp) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_table_row(r) for r in rows]
    (out / "shm_pull.md").write_text("\n".join(lines) + "\n")


def _table_row(r: dict) -> str:
    u, q = r["updates_per_s"], r["ratios"]
    rates = " | ".join(f"{u[c]:.1f}" if c in u else "" for c in (*OURS, "rpc", "rpc_tcp"))
    keys = ("shm_over_zmq", "shm_push_over_shm", "shm_push_over_zmq", "shm_grad_over_shm_push", "shm_push_over_rpc",
            "shm_push_over_rpc_tcp", "shm_grad_over_rpc", "shm_grad_over_rpc_tcp")  # fmt: skip
    ratios = " | ".join(f"{q[k]:.2f}x" if q.get(k) else "" for k in keys)
    return f"| {r['params']} | {r['workers']} | {rates} | {ratios} |"


if __name__ == "__main__":
    sys.exit(main())
