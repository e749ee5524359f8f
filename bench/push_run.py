"""One measured run of the real server (python -m ps) against bench push workers (bench/push_worker.py),
shared by the push benchmarks. Returns updates/s summed over workers, the server's per-update time
split (server_summary.json), the workers' per-push split, and the uplink bytes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import torch
import yaml

from protocol.runfolder.model_init import FILE, ModelInit, write_model_init
from protocol.wire.curve import create_keys
from protocol.wire.layout import Layout

ROOT = Path(__file__).resolve().parent.parent


def run_push_server(
    params: int,
    workers: int,
    warmup_s: float,
    seconds: float,
    endpoint: str,
    compression: dict | None = None,
    auth: str = "none",
    server: dict | None = None,
    beside: Callable[[str, Path], subprocess.Popen] | None = None,
    extra_ranks: int = 0,
    sections: dict | None = None,
    read_run: Callable[[Path], dict] | None = None,
    worker_flags: list[str] | None = None,
    shards: int | None = None,
) -> dict:
    """`compression`: the config's compression section (server and workers use the same); None = dense. `auth`:
    server.auth ("curve": keys made for the run, every worker connects with its own). `server`: more server
    settings. `beside(endpoint, folder)`: another process started with the workers (a flooder, say), stopped
    when they end; `extra_ranks` more ranks in the run (and keys) for it to join as. `sections`: more config
    sections (checkpoint, say). `read_run(run_dir)`: reads the run folder once the server ended, before the
    temporary folder goes; returned as "run". `worker_flags`: more arguments of every worker (--shm, say).
    `shards`: S server shards and bench/shard_worker.py workers (None: one server, bench/push_worker.py)."""
    compression, server_cfg = compression or {}, {"auth": auth, **(server or {}), "shards": shards or 1}
    window = ["--params", str(params), "--warmup-s", str(warmup_s), "--seconds", str(seconds)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp, ranks = Path(tmp), workers + extra_ranks
        _write_config(tmp / "c.yaml", ranks, warmup_s + seconds + 1.0, endpoint, compression, server_cfg, sections)
        write_model(tmp / "run", params)
        keys = _keys(tmp / "keys", ranks) if auth == "curve" else []
        servers, eps = zip(*(_start_server(tmp, keys, s if shards else None) for s in range(shards or 1)))
        flags = [f"--{key}={value}" for key, value in compression.items()] + keys + (worker_flags or []) + window
        procs = [_start_worker(list(eps), r, flags, tmp / f"w{r}.json", shards) for r in range(workers)]
        other = beside(eps[0], tmp) if beside else None
        server_cpu_s = _cpu_in_window([p.pid for p in servers], warmup_s, seconds)
        _wait_for_the_end(list(servers), procs, other, warmup_s + seconds + 120)
        results, summaries, run = _read_results(tmp, workers, read_run, shards)
    got = {"server_cpu_s": server_cpu_s, "summary": summaries[0], "shard_summaries": summaries, "run": run}
    return {**summarize(results, summaries[0]), **got}


def _keys(folder: Path, ranks: int) -> list[str]:
    """CURVE keys for the server and every rank in `folder`; the flag that hands them to a process."""
    create_keys(folder, ranks)
    return ["--keys", str(folder)]


def _write_config(
    path: Path, workers: int, max_seconds: float, endpoint: str, compression: dict, server: dict, sections: dict | None
) -> None:
    """The run's config: the server at `endpoint` runs for max_seconds, however many updates that is; `sections`:
    more config sections."""
    cfg = {
        "name": "bench",
        "workers": workers,
        "compression": compression,
        "server": {"endpoint": endpoint, "stop_grace_s": 1.0, "join_timeout_s": 60, **server},
        "run": {"max_updates": 10**9, "max_seconds": max_seconds, "eval_every_s": 1e6},
        **(sections or {}),
    }
    path.write_text(yaml.safe_dump(cfg))


def _start_server(tmp: Path, keys: list[str], shard: int | None = None) -> tuple[subprocess.Popen, str]:
    """python -m ps on tmp/c.yaml (server shard `shard`), and the endpoint it bound (its first line of output)."""
    ps = [sys.executable, "-m", "ps", "--config", str(tmp / "c.yaml"), "--run-dir", str(tmp / "run"), *keys]
    ps += ["--shard", str(shard)] if shard is not None else []
    server_proc = subprocess.Popen(ps, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    return server_proc, server_proc.stdout.readline().split()[1]


def _wait_for_the_end(
    servers: list[subprocess.Popen], workers: list[subprocess.Popen], other: subprocess.Popen | None, timeout_s: float
) -> None:
    """The workers end by themselves; the process beside them is stopped then; the servers end their run."""
    for p in workers:
        p.wait(timeout=timeout_s)
    if other is not None:
        other.terminate()
        other.wait(timeout=30)
    for p in servers:
        p.wait(timeout=60)


def _start_worker(endpoints: list[str], rank: int, flags: list[str], out: Path, shards: int | None) -> subprocess.Popen:
    flags = [*flags, "--out", str(out)]
    if shards is not None:
        cmd = [sys.executable, "-m", "bench.shard_worker", "--servers", *endpoints, "--rank", str(rank), *flags]
    else:
        cmd = [sys.executable, "-m", "bench.push_worker", "--server", endpoints[0], "--rank", str(rank), *flags]
    return subprocess.Popen(cmd, cwd=ROOT)


def _read_results(
    tmp: Path, workers: int, read_run: Callable[[Path], dict] | None, shards: int | None
) -> tuple[list, list[dict], dict | None]:
    """The workers' results, every server's summary (shard order), and what `read_run` read from the run folder
    (None without)."""
    results = [json.loads((tmp / f"w{r}.json").read_text()) for r in range(workers)]
    own = [tmp / "run"] if (shards or 1) == 1 else [tmp / "run" / f"shard-{s}" for s in range(shards or 1)]
    summaries = [json.loads((d / "server_summary.json").read_text()) for d in own]
    return results, summaries, read_run(tmp / "run") if read_run else None


def write_model(run_dir: Path, params: int) -> None:
    """The served model the bench workers push to: one flat float32 parameter `w` of `params` zeros."""
    empty = Layout.from_shapes([])
    init = ModelInit(Layout.from_shapes([("w", (params,))]), torch.zeros(params), empty, torch.zeros(0), "bench")
    write_model_init(run_dir / FILE, init)


def _cpu_in_window(pids: list[int], warmup_s: float, seconds: float) -> float:
    """The server processes' CPU seconds (all threads, zmq's I/O threads too) over roughly the workers' window
    (the workers start it within a second of the servers: close enough for a per-update CPU cost)."""
    procs = [psutil.Process(pid) for pid in pids]
    time.sleep(warmup_s + 0.5)
    start = sum(t.user + t.system for t in (p.cpu_times() for p in procs))
    time.sleep(seconds - 1.0)
    end = sum(t.user + t.system for t in (p.cpu_times() for p in procs))
    return (end - start) * seconds / (seconds - 1.0)  # scaled up to the full window


def summarize(results: list[dict], summary: dict) -> dict:
    split = summary["time_split_s"]
    n = max(1, summary["updates"])
    counted = max(1, sum(r["updates"] for r in results))
    worker_split = {
        k.removesuffix("_s"): 1e3 * sum(r["split_s"][k] for r in results) / counted for k in results[0]["split_s"]
    }
    return {
        "updates_per_s": sum(r["updates"] / r["window_s"] for r in results if r["window_s"] > 0),
        "per_update_ms": {k.removesuffix("_s"): 1e3 * v / n for k, v in split.items() if k != "idle_s"},
        "server_idle_fraction": split["idle_s"] / max(1e-9, sum(split.values())),
        "worker_per_push_ms": worker_split,
        "worker_cpu_ms_per_push": 1e3 * sum(r["cpu_s"] for r in results) / counted,
        "push_bytes": sum(r["push_bytes"] for r in results) / counted,  # steady state, inside the window
        "uplink_bytes_per_push": summary["uplink_bytes"] / max(1, summary["pushes_received"]),  # all, resets too
        "ef_drift_max": summary.get("ef_drift_max"),
        "shm_fallbacks": sum(r.get("shm_fallbacks", 0) for r in results),  # --shm reads torn every try: pulled
    }
