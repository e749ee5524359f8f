"""Start-up of a whole run: wall time of `python -m launch CONFIG`, the time to its first applied update, and
where the time before it goes.

python -m bench.startup [--config configs/quickstart.yaml] [--repeats 3] [--out DIR] [--set key=value ...]

Each repeat runs the launcher as a user would (into a new temporary run folder, --quiet) and reads its
timeline from the run folder, all on this host's clock: the launcher's start (this process, just before
spawning it); config.yaml written (imports, config, preflight done); model/init.safetensors written (the
model built and handed off); server.json written (the server imported, loaded the model and bound); the start
of training and the first applied update (server_summary.json started_unix + updates.csv wall_s: every
worker has joined); the end of training (+ wall_s); the launcher's exit. One more run with
PYTHONPROFILEIMPORTTIME=1 splits each process's import time by package (the logs hold `-X importtime`'s
lines), and a fresh interpreter times the launcher's steps one by one, alone on the machine. Results go to
DIR/startup.{md,json} (default: a new folder in /tmp; pass --out bench/results to update the checked-in ones).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from protocol.runfolder.records import ServerSummary, read_record

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 600.0  # one launcher run, start to exit
PHASES = {  # timeline event -> the phase that ends there (from the event before it)
    "validated": "launcher: interpreter, imports, config, preflight",
    "handed_off": "launcher: model built and written (init.safetensors)",
    "server_bound": "server: started, imports, model read, bound",
    "training": "workers and evaluator: started, imports, data, all joined",
    "first_update": "start of training to the first applied update",
    "training_end": "training",
    "exit": "end: final evaluation, plots, summary, exits",
}
GROUPS = ("torch", "numpy", "zmq", "safetensors", "yaml", "psutil", "matplotlib", "sklearn", "scipy", "tensorboard")
OURS = ("protocol", "ps", "worker", "launch", "sync", "bench")


def main() -> int:
    args = _parse_args()
    load = os.getloadavg()[0]
    runs = [_timed_run(args, i) for i in range(args.repeats)]
    for r in runs:
        print(_line(r), flush=True)
    profile = _profiled_run(args)
    steps = _steps_alone(args)
    out = args.out or Path(tempfile.mkdtemp(prefix="taups-startup-"))
    _write(out, runs, profile, steps, {"before": load, "after": os.getloadavg()[0]})
    print(f"wrote {out}/startup.md")
    return 0


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/quickstart.yaml", help="the experiment (from the repo root)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, as python -m launch takes")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs; the table shows each and the median")
    ap.add_argument("--no-profile", action="store_true", help="skip the import-profiled run and the steps alone")
    ap.add_argument("--out", type=Path, default=None, help="folder for startup.{md,json} (default: new in /tmp)")
    return ap.parse_args()


# -- one run of the launcher ---------------------------------------------------------------------------------
def _launch(args: argparse.Namespace, env: dict | None = None) -> tuple[Path, float, float, float]:
    """Run the launcher once into a new run folder; (the folder, spawn time, exit time) in Unix seconds and the
    CPU seconds (user + system) of the launcher and every process it waited for. Raises RuntimeError (with the
    launcher's last output) when it fails."""
    tmp = Path(tempfile.mkdtemp(prefix="taups-startup-run-"))
    run_dir = tmp / "run"
    cmd = [sys.executable, "-m", "launch", args.config, *args.set, "--run-dir", str(run_dir), "--quiet"]
    with open(tmp / "launcher.log", "w") as log:
        cpu0 = _children_cpu_s()
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        rc = proc.wait(timeout=RUN_TIMEOUT_S)
        t1 = time.time()
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {rc}:\n{(tmp / 'launcher.log').read_text()[-3000:]}")
    return run_dir, t0, t1, _children_cpu_s() - cpu0


def _children_cpu_s() -> float:
    """CPU seconds of this process's waited-for descendants so far (a child's includes those it waited for)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed_run(args: argparse.Namespace, i: int) -> dict:
    run_dir, t0, t1, cpu = _launch(args)
    events = timeline(run_dir, t0, t1)
    return {"repeat": i, "run_dir": str(run_dir), "events_s": events, "phases_s": phases(events), "cpu_s": cpu}


def timeline(run_dir: Path, t0: float, t1: float) -> dict[str, float]:
    """Seconds after the launcher's spawn of each event of the run in run_dir (see the module docstring).
    Raises ValueError when the run left no applied update or no start of training."""
    summary = read_record(ServerSummary, run_dir / "server_summary.json")
    if summary is None or summary.started_unix is None:
        raise ValueError(f"{run_dir}/server_summary.json has no started_unix: training never started")
    with open(run_dir / "updates.csv", newline="") as f:
        applied = [float(r["wall_s"]) for r in csv.DictReader(f) if r["applied"] == "1"]
    if not applied:
        raise ValueError(f"{run_dir}/updates.csv has no applied update")
    started = summary.started_unix
    at = {
        "validated": (run_dir / "config.yaml").stat().st_mtime,
        "handed_off": (run_dir / "model" / "init.safetensors").stat().st_mtime,
        "server_bound": (run_dir / "server.json").stat().st_mtime,
        "training": started,
        "first_update": started + min(applied),
        "training_end": started + summary.wall_s,
        "exit": t1,
    }
    return {k: v - t0 for k, v in at.items()}


def phases(events: dict[str, float]) -> dict[str, float]:
    """Each phase's seconds: from the event before it to its own, but the first applied update and training
    both count from the start of training (so the first lies within the second)."""
    since = {"first_update": "training", "training_end": "training"}
    out, before = {}, "spawn"
    for name in PHASES:
        start = since.get(name, before)
        out[name] = events[name] - (0.0 if start == "spawn" else events[start])
        before = name if name != "first_update" else before
    return out


def _line(r: dict) -> str:
    e = r["events_s"]
    return (
        f"repeat {r['repeat']}: total {e['exit']:.2f} s, first applied update at {e['first_update']:.2f} s, "
        f"CPU {r['cpu_s']:.1f} s, "
        f"training {r['phases_s']['training_end']:.2f} s ("
        + ", ".join(f"{k} {v:.2f}" for k, v in r["phases_s"].items())
        + ")"
    )


# -- imports of every process, profiled ----------------------------------------------------------------------
def _profiled_run(args: argparse.Namespace) -> dict[str, dict[str, float]] | None:
    """One more run with PYTHONPROFILEIMPORTTIME=1: process name -> seconds of imports by package group."""
    if args.no_profile:
        return None
    run_dir, _, _, _ = _launch(args, env={"PYTHONPROFILEIMPORTTIME": "1"})
    logs = {"launcher": run_dir.parent / "launcher.log"}
    logs.update({p.stem: p for p in sorted((run_dir / "logs").glob("*.log"))})
    return {name: import_seconds(path.read_text(errors="replace")) for name, path in logs.items()}


def import_seconds(text: str) -> dict[str, float]:
    """Seconds of import (each module's own time, so nothing is counted twice) by group: the packages in
    GROUPS, ours (OURS) and 'other' (the standard library and the rest), plus 'total', from the lines
    `python -X importtime` writes: `import time: self_us | cumulative_us | module`."""
    out = dict.fromkeys(("total", *GROUPS, "ours", "other"), 0.0)
    for line in text.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        self_us, _, module = (part.strip() for part in line[len("import time:") :].split("|"))
        if not self_us.isdigit():  # the header line
            continue
        top = module.split(".")[0]
        group = top if top in GROUPS else "ours" if top in OURS else "other"
        out[group] += int(self_us) / 1e6
        out["total"] += int(self_us) / 1e6
    return out


# -- the launcher's steps, alone -------------------------------------------------------------------------------
def _steps_alone(args: argparse.Namespace) -> dict[str, float] | None:
    """The steps of start-up timed one by one in a fresh interpreter with nothing else running."""
    if args.no_profile:
        return None
    bare = statistics.median(_seconds([sys.executable, "-c", "pass"]) for _ in range(3))
    code = "import sys; from bench.startup import steps_child; steps_child(sys.argv[1:])"
    proc = subprocess.run(
        [sys.executable, "-c", code, args.config, *args.set], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        raise RuntimeError(f"timing the steps failed:\n{proc.stderr[-3000:]}")
    return {"interpreter": bare, **json.loads(proc.stdout.strip().splitlines()[-1])}


def _seconds(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, timeout=60)
    return time.perf_counter() - t


def steps_child(argv: list[str]) -> None:
    """In a fresh interpreter: time each step (seconds) and print them as one JSON line. argv: config, overrides."""
    times: dict[str, float] = {}
    clock = _Clock(times)
    with clock("import torch"):
        import torch  # noqa: F401
    with clock("import launch (after torch)"):
        import launch.__main__  # noqa: F401  (everything the launcher loads before it starts a process)
    from launch.handoff import hand_off
    from launch.preflight import preflight
    from protocol.config.loader import load_experiment

    with clock("config"):
        cfg = load_experiment(argv[0], argv[1:])
    with clock("preflight"):
        preflight(cfg)
    with tempfile.TemporaryDirectory(prefix="taups-startup-steps-") as tmp, clock("model built and written"):
        (Path(tmp) / "model").mkdir()
        hand_off(cfg, Path(tmp))
    _role_steps(cfg, clock)
    print(json.dumps(times))


def _role_steps(cfg: object, clock: _Clock) -> None:
    """What the other processes add: their modules (after torch), a worker's data and task, the plots' imports."""
    with clock("import ps (after torch)"):
        import ps.__main__  # noqa: F401
    with clock("import worker (after torch)"):
        import worker.__main__  # noqa: F401
    with clock("import launch.evaluate (after torch)"):
        import launch.evaluate  # noqa: F401
    from worker.tasks.data import load_dataset
    from worker.tasks.task import Task

    with clock("data set loaded"):
        load_dataset(cfg.task)  # type: ignore[attr-defined]
    with clock("task built (data and model)"):
        Task(cfg, device="cpu")  # type: ignore[arg-type]
    with clock("import matplotlib (plots)"):
        import matplotlib.pyplot  # noqa: F401


class _Clock:
    """`with clock(name):` adds the block's seconds to times[name]."""

    def __init__(self, times: dict[str, float]):
        self.times = times
        self.name = ""
        self.t = 0.0

    def __call__(self, name: str) -> _Clock:
        self.name = name
        return self

    def __enter__(self) -> None:
        self.t = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.times[self.name] = time.perf_counter() - self.t


# -- the results -----------------------------------------------------------------------------------------------
def _write(out: Path, runs: list[dict], profile: dict | None, steps: dict | None, load: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    median = {k: statistics.median(r["events_s"][k] for r in runs) for k in runs[0]["events_s"]}
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python -m bench.startup " + " ".join(sys.argv[1:]),
        "cores": os.cpu_count(),
        "load_average_1min": load,
        "median_events_s": median,
        "median_phases_s": {k: statistics.median(r["phases_s"][k] for r in runs) for k in PHASES},
        "median_cpu_s": statistics.median(r["cpu_s"] for r in runs),
    }
    data = {**meta, "runs": runs, "imports_s": profile, "steps_alone_s": steps}
    (out / "startup.json").write_text(json.dumps(data, indent=1))
    lines = [
        "# Start-up: from `python -m launch` to the first applied update",
        "",
        f"Measured {meta['date']} with `{meta['command']}` on this {meta['cores']}-core machine "
        f"(1-minute load average {load['before']:.2f} before the runs, {load['after']:.2f} after); "
        f"{len(runs)} timed runs and their median (every event in startup.json).",
        "",
        *_runs_table(runs, meta["median_phases_s"], median),
        *(_imports_table(profile) if profile else []),
        *(_steps_table(steps) if steps else []),
    ]
    (out / "startup.md").write_text("\n".join(lines) + "\n")


def _runs_table(runs: list[dict], median_phases: dict, median_events: dict) -> list[str]:
    head = "| run | total s | first applied update s | CPU s | " + " | ".join(f"{p} s" for p in PHASES.values()) + " |"
    cpu = statistics.median(r["cpu_s"] for r in runs)
    rows = [(str(r["repeat"]), r["events_s"], r["phases_s"], r["cpu_s"]) for r in runs]
    lines = [head, "|---" * (4 + len(PHASES)) + "|"]
    for name, e, p, c in [*rows, ("median", median_events, median_phases, cpu)]:
        lines.append(
            f"| {name} | {e['exit']:.2f} | {e['first_update']:.2f} | {c:.1f} | "
            + " | ".join(f"{p[k]:.2f}" for k in PHASES)
            + " |"
        )
    return lines + [
        "",
        "total = the launcher's spawn to its exit; first applied update = spawn to the server applying the first "
        "push (server_summary.json started_unix + the first applied row's wall_s in updates.csv); CPU = user + "
        "system seconds of the launcher and all its processes, the work start-up and training cost whatever else "
        "runs on the machine. The phases "
        "follow each other and add up to the total, except the first applied update, which lies within training "
        "(from the start of training, every worker joined, to the server's stop): the launcher's start to "
        "config.yaml written; to model/init.safetensors written; to server.json written; to the start of "
        "training; training; the end of training to the launcher's exit. Each phase ends on a file's "
        "modification time or a server record, all on this host's clock.",
        "",
    ]


def _imports_table(profile: dict) -> list[str]:
    cols = [g for g in (*GROUPS, "ours", "other") if max(p[g] for p in profile.values()) >= 0.005]
    lines = [
        "Imports per process, from one more run with PYTHONPROFILEIMPORTTIME=1 (seconds; each module's own "
        "time, summed by top-level package; ours = " + ", ".join(OURS) + "; other = the standard library and "
        "the rest). The processes run side by side on the machine's cores, so these are contended times.",
        "",
        "| process | imports s | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for name, p in profile.items():
        lines.append(f"| {name} | {p['total']:.2f} | " + " | ".join(f"{p[g]:.2f}" for g in cols) + " |")
    return [*lines, ""]


def _steps_table(steps: dict) -> list[str]:
    lines = [
        "Each step alone (seconds, one fresh interpreter, in this order, nothing else of the run running): "
        "interpreter = `python -c pass`; the imports after torch count only what they add to it.",
        "",
        "| step | s |",
        "|---|---|",
    ]
    return [*lines, *(f"| {k} | {v:.3f} |" for k, v in steps.items()), ""]


if __name__ == "__main__":
    sys.exit(main())
