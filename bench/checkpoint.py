"""What server checkpoints cost: the loop's stall, the bytes and the seconds of one checkpoint, updates/s with
checkpoints on against off, and the time from a server kill to the first update applied after the restart.

python -m bench.checkpoint [--params 4194304 10000000] [--workers 1] [--seconds 10] [--warmup-s 2]
                           [--repeats 2] [--every-s 2] [--copies 5] [--no-recovery] [--out DIR]

Dense pushes and the AMSGrad server, so a checkpoint holds the parameters, m, v and v_hat (16 bytes per
parameter). Three measurements per model size:

in the server  The real server (python -m ps) against bench push workers (bench/push_worker.py), checkpoints
               every --every-s seconds (checkpoint.keep 1000, so that every one stays to be read) against
               none, in interleaved trials. From the run folder: updates/s on and off; checkpoints written
               and skipped and the longest copy (server_summary.json); the bytes of each (the two files in
               checkpoints/); and the stall as the pushes saw it: in updates.csv, the gap between the last row
               before a checkpoint and the next row, less the median gap between rows elsewhere. The first
               checkpoint of a server also allocates the buffers the state is copied into (reused after).
alone          ps's own code on a server built as python -m ps builds it (same config, same model file),
               serving nothing: the loop's part (ps.durable.checkpoint: capture, then a copy into the
               reused buffers) timed around the call, and the background write (safetensors file, fsync,
               SHA-256, manifest, rename, pruning) as the writer times it (CheckpointStats.write_s_last).
recovery       What a user gets: python -m launch with run.max_restarts=1 on the quadratic task of the same
               size (task.synthetic.kind quadratic: a worker's gradient costs next to nothing), the server
               SIGKILLed one second after its first checkpoint is on disk, --repeats times. From the kill to
               the first update applied after it: the launcher notices and restarts the server after its 1 s
               backoff (the new process's start, from /proc: 10 ms ticks), the new process imports, loads the
               model and the checkpoint and resumes (its log line "resumed from"), and the workers join again
               and push (updates.csv: the first applied row after the resume, on the resumed server's clock).
               A worker whose push died with the server sends it again after server.resend_s (5 s) of
               silence; one that pushed after the kill is answered as soon as the new server reads the push.

Results: DIR/checkpoint.{md,json} (default: a new folder under /tmp). No timing is asserted.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil
import torch
import yaml

from bench.push_run import ROOT, run_push_server, write_model
from protocol.config.loader import load_experiment
from protocol.runfolder.model_init import FILE, read_model_init
from ps import durable
from ps.outbox import server_channel
from ps.server import ParameterServer

KILL_AFTER_S = 1.0  # the kill comes this long after the first checkpoint is on disk
AFTER_S = 6.0  # training time left after the checkpoint resumed from
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ps INFO resumed from (\S+) at version (\d+)")


# -- in the server ----------------------------------------------------------------------------------------------
def checkpoint_section(every_s: float) -> dict:
    """every_s 0: no checkpoints (at the end neither, in both: the window is what is compared)."""
    return {"checkpoint": {"every_s": every_s, "every_updates": 0, "keep": 1000, "at_end": False}}


def read_checkpoints(run_dir: Path) -> dict:
    """The checkpoints a server wrote (version, bytes of both files) and the gaps in updates.csv around them."""
    ckpts = []
    for manifest in sorted((run_dir / "checkpoints").glob("ckpt-*.json")):
        m = json.loads(manifest.read_text())
        data = run_dir / "checkpoints" / m["file"]
        ckpts.append({"version": m["version"], "bytes": data.stat().st_size + manifest.stat().st_size})
    with open(run_dir / "updates.csv") as f:
        rows = [(int(r["version"]), float(r["wall_s"])) for r in csv.DictReader(f)]
    last_row = {version: i for i, (version, _) in enumerate(rows)}  # the last row at each version
    at = {last_row[c["version"]] for c in ckpts if last_row.get(c["version"], len(rows)) + 1 < len(rows)}
    gaps = [rows[i + 1][1] - rows[i][1] for i in range(len(rows) - 1)]
    usual = statistics.median([g for i, g in enumerate(gaps) if i not in at]) if len(gaps) > len(at) else 0.0
    stalls = [1e3 * (gaps[i] - usual) for i in sorted(at)]  # in the order taken: the first allocated its buffers
    return {"checkpoints": ckpts, "usual_gap_ms": 1e3 * usual, "stall_ms": stalls, "rows": len(rows)}


def in_server(params: int, args) -> dict:
    trials: dict[str, list[dict]] = {"off": [], "on": []}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both alike
        for mode, every_s in (("off", 0.0), ("on", args.every_s)):
            run = run_push_server(params, args.workers, args.warmup_s, args.seconds, args.endpoint,
                                  sections=checkpoint_section(every_s), read_run=read_checkpoints)  # fmt: skip
            s, r = run["summary"], run["run"]
            trials[mode].append({
                "updates_per_s": run["updates_per_s"],
                "checkpoints_written": s["checkpoints_written"],
                "checkpoints_skipped": s["checkpoints_skipped"],
                "copy_ms_max": s["checkpoint_stall_ms_max"],
                "bytes": [c["bytes"] for c in r["checkpoints"]],
                "stall_ms": r["stall_ms"],
                "usual_gap_ms": r["usual_gap_ms"],
            })  # fmt: skip
    on, off = trials["on"], trials["off"]
    firsts = [t["stall_ms"][0] for t in on if t["stall_ms"]]
    later = [x for t in on for x in t["stall_ms"][1:]]
    ups_on = statistics.median(t["updates_per_s"] for t in on)
    ups_off = statistics.median(t["updates_per_s"] for t in off)
    return {
        "updates_per_s_off": ups_off,
        "updates_per_s_on": ups_on,
        "ratio": ups_on / ups_off if ups_off else 0.0,
        "checkpoints_written": sum(t["checkpoints_written"] for t in on),
        "checkpoints_skipped": sum(t["checkpoints_skipped"] for t in on),
        "checkpoints_off": sum(t["checkpoints_written"] for t in off),
        "bytes_per_checkpoint": int(statistics.median(b for t in on for b in t["bytes"])) if on[0]["bytes"] else 0,
        "copy_ms_max": max(t["copy_ms_max"] for t in on),
        "usual_gap_ms": statistics.median(t["usual_gap_ms"] for t in on),
        "stall_first_ms": statistics.median(firsts) if firsts else None,
        "stall_later_ms": statistics.median(later) if later else None,
        "stall_later_max_ms": max(later) if later else None,
        "trials": trials,
    }


# -- one checkpoint alone -----------------------------------------------------------------------------------------
def alone(params: int, args) -> dict:
    torch.set_num_threads(1)  # as the server (server.threads)
    with tempfile.TemporaryDirectory(prefix="taups-ckbench-") as tmp:
        run_dir = Path(tmp) / "run"
        write_model(run_dir, params)
        (Path(tmp) / "c.yaml").write_text(yaml.safe_dump({"name": "bench", "workers": args.workers,
                                                          "checkpoint": {"keep": 3}}))  # fmt: skip
        cfg = load_experiment(Path(tmp) / "c.yaml")
        chan = server_channel(cfg)  # never bound: nothing is served
        try:
            server = ParameterServer(cfg, chan, read_model_init(run_dir / FILE), run_dir=run_dir)
            plan = server.plan
            assert plan is not None
            loop_ms, write_s, nbytes = [], [], []
            for i in range(args.copies):
                server.model.version = i + 1  # a new file each time, the old ones pruned, as in a run
                t0 = time.perf_counter()
                durable.checkpoint(server, plan)
                loop_ms.append(1e3 * (time.perf_counter() - t0))
                plan.writer.wait()
                stats = plan.writer.stats
                assert stats.error is None, stats.error
                write_s.append(stats.write_s_last)
                stem = run_dir / "checkpoints" / f"ckpt-{i + 1:010d}"
                nbytes.append(
                    stem.with_suffix(".safetensors").stat().st_size + stem.with_suffix(".json").stat().st_size
                )
        finally:
            chan.close()
    return {
        "loop_first_ms": loop_ms[0],
        "loop_ms": statistics.median(loop_ms[1:]) if len(loop_ms) > 1 else None,
        "write_s": statistics.median(write_s),
        "bytes": nbytes[-1],
        "loop_ms_all": loop_ms,
        "write_s_all": write_s,
    }


# -- recovery through the launcher --------------------------------------------------------------------------------
def recovery(params: int, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="taups-ckbench-") as tmp:
        tmp = Path(tmp)
        run_dir = tmp / "run"
        cfg = {
            "name": "ckbench",
            "workers": args.workers,
            "task": {"dataset": "synthetic", "batch_size": 1, "synthetic": {"kind": "quadratic", "dim": params}},
            "optimizer": {"name": "amsgrad", "lr": 1e-3},
            "checkpoint": {"every_s": args.every_s, "keep": 1000},
            "server": {"endpoint": args.endpoint, "stop_grace_s": 5},
            "run": {"max_updates": 10**9, "max_seconds": args.every_s + KILL_AFTER_S + AFTER_S, "max_restarts": 1,
                    "eval_every_s": 1e6, "plots": False, "tensorboard": False},
        }  # fmt: skip
        (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
        cmd = [sys.executable, "-m", "launch", str(tmp / "c.yaml"), "--run-dir", str(run_dir), "--quiet"]
        with open(tmp / "launcher.log", "w") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            t_kill, old, t_spawn = _kill_server(proc, run_dir)
            rc = proc.wait(timeout=cfg["run"]["max_seconds"] + 180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        launcher_log = (tmp / "launcher.log").read_text(errors="replace")
        assert rc == 0, f"the launcher exited {rc}:\n{launcher_log[-3000:]}"
        return _timeline(run_dir, t_kill, t_spawn) | {"killed_pid": old, "launcher_rc": rc}


def _servers(launcher: psutil.Process) -> list[psutil.Process]:
    found = []
    for p in launcher.children(recursive=True):  # forked from the fork server: a grandchild
        try:
            if p.cmdline()[1:3] == ["-m", "ps"]:
                found.append(p)
        except psutil.Error:
            pass
    return found


def _kill_server(proc: subprocess.Popen, run_dir: Path) -> tuple[float, int, float]:
    """SIGKILL the server KILL_AFTER_S after its first checkpoint is on disk; (kill time, its pid, the start of
    the process that replaced it), times as time.time()."""
    launcher, deadline = psutil.Process(proc.pid), time.monotonic() + 300
    while not list((run_dir / "checkpoints").glob("ckpt-*.json")):
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.02)
    time.sleep(KILL_AFTER_S)
    (server,) = _servers(launcher)
    server.send_signal(signal.SIGKILL)
    t_kill = time.time()
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, "the launcher did not restart the server"
        new = [p for p in _servers(launcher) if p.pid != server.pid]
        if new:
            return t_kill, server.pid, _started_at(new[0].pid)
        time.sleep(0.005)


def _started_at(pid: int) -> float:
    """When a process started, as time.time(), to the kernel's 10 ms tick: its age from /proc (psutil's
    create_time adds the boot time, which /proc/stat gives in whole seconds, and can be off by up to one)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


def _timeline(run_dir: Path, t_kill: float, t_spawn: float) -> dict:
    """Kill -> restarted -> resumed -> first applied update, from the server's log and updates.csv."""
    log = (run_dir / "logs" / "server.log").read_text(errors="replace")
    restarted = log.split("--- server restarted by the launcher ---", 1)[1]
    found = next(m for m in map(LOG_TIME.match, restarted.splitlines()) if m)
    t_resumed = datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    version = int(found[3])
    manifest = json.loads((run_dir / "checkpoints" / found[2]).with_suffix(".json").read_text())
    with open(run_dir / "updates.csv") as f:
        first = next(r for r in csv.DictReader(f) if int(r["version"]) == version + 1 and r["applied"] == "1")
    t_first = t_resumed + float(first["wall_s"]) - manifest["wall_s"]  # the resumed clock starts at its wall_s
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "kill_to_update_s": t_first - t_kill,
        "kill_to_restart_s": t_spawn - t_kill,
        "restart_to_resumed_s": t_resumed - t_spawn,
        "resumed_to_update_s": t_first - t_resumed,
        "checkpoint_bytes": manifest["bytes"],
        "resumed_version": version,
        "updates_lost": summary["updates_lost"],
        "server_restarts": summary["server_restarts"],
        "status": summary["status"],
    }


# -- the report ---------------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=int, nargs="+", default=[4194304, 10000000])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=10.0, help="measurement window of each trial")
    ap.add_argument("--warmup-s", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=2, help="trials each of checkpoints on and off, and kills")
    ap.add_argument("--every-s", type=float, default=2.0, help="checkpoint.every_s in the runs with checkpoints")
    ap.add_argument("--copies", type=int, default=5, help="checkpoints taken one by one in the alone measurement")
    ap.add_argument("--no-recovery", action="store_true", help="skip the kill and restart through the launcher")
    ap.add_argument("--endpoint", default="tcp://127.0.0.1:0")
    ap.add_argument("--out", type=Path, default=None, help="folder for checkpoint.{md,json} (default: new in /tmp)")
    args = ap.parse_args()
    rows = []
    for params in args.params:
        row = {"params": params, "workers": args.workers, "every_s": args.every_s}
        row["alone"] = alone(params, args)
        row["server"] = in_server(params, args)
        row["recovery"] = [] if args.no_recovery else [recovery(params, args) for _ in range(args.repeats)]
        rows.append(row)
        print(_line(row), flush=True)
    out = args.out or Path(tempfile.mkdtemp(prefix="taups-checkpoint-"))
    _write(out, rows, args)
    print("\n".join(_table(rows) + [""] + _recovery_table(rows)))
    print(f"wrote {out}/checkpoint.md")
    return 0


def _line(r: dict) -> str:
    a, s = r["alone"], r["server"]
    kills = ", ".join(f"{k['kill_to_update_s']:.2f}" for k in r["recovery"])
    return (f"{r['params']:>9} params: loop {_ms(a['loop_ms'])} ms (first {a['loop_first_ms']:.1f}), write "
            f"{a['write_s']:.3f} s, {a['bytes']} B; upd/s off {s['updates_per_s_off']:.1f} on "
            f"{s['updates_per_s_on']:.1f} ({s['ratio']:.2f}); kill to update {kills or '-'} s")  # fmt: skip


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _table(rows: list[dict]) -> list[str]:
    lines = [
        "| params | bytes per checkpoint | loop stall, ms (first) | stall seen by pushes, ms (first; max) "
        "| server's longest copy, ms | write, s | updates/s off | on | on / off | written (skipped) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        a, s = r["alone"], r["server"]
        lines.append(
            f"| {r['params']} | {s['bytes_per_checkpoint']} | {_ms(a['loop_ms'])} ({a['loop_first_ms']:.1f}) | "
            f"{_ms(s['stall_later_ms'])} ({_ms(s['stall_first_ms'])}; {_ms(s['stall_later_max_ms'])}) | "
            f"{s['copy_ms_max']:.1f} | {a['write_s']:.3f} | {s['updates_per_s_off']:.1f} | "
            f"{s['updates_per_s_on']:.1f} | {s['ratio']:.2f} | "
            f"{s['checkpoints_written']} ({s['checkpoints_skipped']}) |"
        )
    return lines


def _recovery_table(rows: list[dict]) -> list[str]:
    lines = [
        "| params | kill to first update, s | launcher restarts the server, s | start and resume, s "
        "| rejoin and first update, s | resumed at version | updates lost |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for k in r["recovery"]:
            lines.append(
                f"| {r['params']} | {k['kill_to_update_s']:.2f} | {k['kill_to_restart_s']:.2f} | "
                f"{k['restart_to_resumed_s']:.2f} | {k['resumed_to_update_s']:.2f} | {k['resumed_version']} | "
                f"{k['updates_lost']} |"
            )
    return lines


def _write(out: Path, rows: list[dict], args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "python -m bench.checkpoint " + " ".join(sys.argv[1:])}
    (out / "checkpoint.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    lines = [
        "# Checkpoint cost",
        "",
        f"Measured {meta['date']} with `{meta['command']}`: dense pushes, AMSGrad server, {args.workers} "
        f"worker(s), loopback TCP; checkpoints every {args.every_s:g} s in the runs with them.",
        "",
        *_table(rows),
        "",
        "- bytes per checkpoint: the safetensors file and its JSON manifest (median over the real server's).",
        "- loop stall: ps.durable.checkpoint (capture, then copy into reused buffers) on a server doing nothing "
        f"else, median of {args.copies - 1} after the first; the first also allocates the buffers.",
        "- stall seen by pushes: in updates.csv of the real server, the gap across a checkpoint less the median "
        "gap elsewhere; median over the later checkpoints of each server (its first; the largest later one), "
        f"{args.repeats} trials of {args.seconds:g} s.",
        "- server's longest copy: checkpoint_stall_ms_max of server_summary.json (the copy part of the stall, as "
        "the server times it), the largest over the trials.",
        "- write: the background write (safetensors file, fsync, SHA-256, manifest, rename) as the writer times "
        "it, alone (median).",
        f"- updates/s: medians of {args.repeats} interleaved trials with checkpoints every {args.every_s:g} s "
        "(on) and none (off); written (skipped): checkpoints of all trials with them.",
        "",
    ]
    if any(r["recovery"] for r in rows):
        lines += [
            *_recovery_table(rows),
            "",
            "- One row per kill: SIGKILL of the server under python -m launch (run.max_restarts=1, the quadratic "
            f"task of the same size, {args.workers} worker(s)) one second after its first checkpoint, to the first "
            "update applied after the restart. The launcher restarts the server after its 1 s backoff; the new "
            "process imports, loads the model and the checkpoint and resumes; a worker whose push was lost with "
            "the server sends it again after server.resend_s (5 s) of silence (one that pushed after the kill is "
            "answered as soon as the new server reads it), joins again and pushes.",
        ]
    else:
        lines.append("- Recovery after a kill: not measured (--no-recovery).")
    (out / "checkpoint.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
