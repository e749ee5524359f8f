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
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent


def run_push_server(
    params: int, workers: int, warmup_s: float, seconds: float, endpoint: str, compression: dict | None = None
) -> dict:
    """`compression`: the config's compression section (server and workers use the same); None = dense."""
    compression = compression or {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = {
            "name": "bench",
            "workers": workers,
            "compression": compression,
            "server": {"endpoint": endpoint, "stop_grace_s": 1.0, "join_timeout_s": 60},
            "run": {"max_updates": 10**9, "max_seconds": warmup_s + seconds + 1.0, "eval_every_s": 1e6},
        }
        (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
        server = subprocess.Popen(
            [sys.executable, "-m", "ps", "--config", str(tmp / "c.yaml"), "--run-dir", str(tmp / "run")],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        ep = server.stdout.readline().split()[1]
        flags = [f"--{key}={value}" for key, value in compression.items()]
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.push_worker",
                    "--server",
                    ep,
                    "--rank",
                    str(r),
                    "--params",
                    str(params),
                    "--warmup-s",
                    str(warmup_s),
                    "--seconds",
                    str(seconds),
                    "--out",
                    str(tmp / f"w{r}.json"),
                    *flags,
                ],
                cwd=ROOT,
            )
            for r in range(workers)
        ]
        server_cpu_s = _cpu_in_window(server.pid, warmup_s, seconds)
        for p in procs:
            p.wait(timeout=warmup_s + seconds + 120)
        server.wait(timeout=60)
        results = [json.loads((tmp / f"w{r}.json").read_text()) for r in range(workers)]
        summary = json.loads((tmp / "run" / "server_summary.json").read_text())
    return {**summarize(results, summary), "server_cpu_s": server_cpu_s}


def _cpu_in_window(pid: int, warmup_s: float, seconds: float) -> float:
    """The server process's CPU seconds (all threads, zmq's I/O thread too) over roughly the workers' window
    (the workers start it within a second of the server: close enough for a per-update CPU cost)."""
    proc = psutil.Process(pid)
    time.sleep(warmup_s + 0.5)
    t = proc.cpu_times()
    start = t.user + t.system
    time.sleep(seconds - 1.0)
    t = proc.cpu_times()
    return (t.user + t.system - start) * seconds / (seconds - 1.0)  # scaled up to the full window


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
    }
