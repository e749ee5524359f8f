"""python -m launch.evaluate --config RUN/config.yaml --run-dir RUN [--idle-timeout SECONDS]

The evaluator: scores the parameter snapshots the server (or sync rank 0) writes to RUN/snapshots/
and appends one line per snapshot to RUN/metrics.jsonl. It runs beside training in its own process
and never talks to the server, so evaluation costs the workers nothing but a share of the CPU.
Exit codes: 0 after scoring final.safetensors; 1 when the run is over without a final snapshot it can score
(launch/endwatch.py says when), final.safetensors is not a snapshot of this config's model, or metrics.jsonl
cannot be written (each said in one line); 2 a missing or unusable --run-dir or --config.
A latest.safetensors of a different model is reported, naming the file and both sizes, and skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from launch.endwatch import EndWatch, default_idle_timeout
from launch.writes import WriteError, writing
from protocol.config.loader import load_experiment
from protocol.config.schema import ExperimentConfig
from protocol.entry import freeze_imports
from protocol.errors import ConfigError
from protocol.runfolder.snapshot import read_snapshot
from worker.tasks import Task
from worker.tasks.export import save_model


class UnusableSnapshot(Exception):
    """A snapshot this evaluator cannot score: not a snapshot, or of a model of another size."""


class GaveUp(Exception):
    """The run is over and will never write a final snapshot."""


class Evaluator:
    def __init__(self, cfg: ExperimentConfig, run_dir: Path):
        self.cfg = cfg
        self.snap_dir = run_dir / "snapshots"
        self.model_dir = run_dir / "model"
        self.out = run_dir / "metrics.jsonl"
        self.task = Task(cfg, device="cpu")
        self._last_mtime = 0.0

    def score(self, path: Path) -> dict:
        meta, params, buffers = self._read(path)
        t0 = time.monotonic()
        run = self.cfg.run
        m = self.task.evaluate(params, run.eval_max_samples, grad_norm=run.eval_grad_norm, buffers=buffers)
        self._save(meta)
        line = {
            "wall_s": round(meta["wall_s"], 4),
            "updates": meta["version"],
            **m,
            "train_loss_pushed": meta.get("train_loss_pushed"),
            "eval_s": round(time.monotonic() - t0, 4),
        }
        if meta.get("final"):
            line["final"] = True
        with writing(self.out), open(self.out, "a") as f:
            f.write(json.dumps(line) + "\n")
        return line

    def _save(self, meta: dict) -> None:
        """The scored weights as a named state_dict: model/latest.safetensors, and model/model.safetensors
        for the final snapshot (worker/tasks/export.py says how to load them)."""
        name = "model.safetensors" if meta.get("final") else "latest.safetensors"
        facts = {"version": meta["version"], "wall_s": meta["wall_s"], "config": "../config.yaml"}
        with writing(self.model_dir / name):
            save_model(self.task.net.model, self.model_dir / name, facts)

    def _read(self, path: Path) -> tuple[dict, torch.Tensor, torch.Tensor]:
        try:
            meta, params, buffers = read_snapshot(path)
        except (OSError, ValueError, KeyError) as err:
            raise UnusableSnapshot(f"{path} cannot be read: {err}") from err
        model = self.task.net.numel
        if params.numel() != model:
            raise UnusableSnapshot(
                f"{path} holds {params.numel()} parameters, but this config's model has {model}: "
                "a snapshot of a different model"
            )
        if buffers.numel() not in (0, self.task.net.buffer_layout.total):
            raise UnusableSnapshot(
                f"{path} holds {buffers.numel()} buffer values, this config's model "
                f"{self.task.net.buffer_layout.total}: a snapshot of a different model"
            )
        return meta, params, buffers

    def poll_once(self) -> bool:
        """Score whatever is new; True once the final snapshot has been scored (UnusableSnapshot if it cannot)."""
        final = self.snap_dir / "final.safetensors"
        if final.exists():
            self.score(final)
            return True
        latest = self.snap_dir / "latest.safetensors"
        try:
            mtime = latest.stat().st_mtime
        except FileNotFoundError:
            return False
        if mtime != self._last_mtime:
            self._last_mtime = mtime
            try:
                self.score(latest)
            except UnusableSnapshot as err:  # a later snapshot, or final.safetensors, may still be scored
                print(f"skipped: {err}", flush=True)
        return False

    def run(self, watch: EndWatch | None = None, poll_s: float = 0.1) -> None:
        """Until final.safetensors is scored; GaveUp when `watch` says the run is over without one."""
        while not self.poll_once():
            why = watch.verdict() if watch is not None else None
            if why is not None:
                raise GaveUp(why)
            time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launch.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, required=True, help="the run's resolved config (RUN/config.yaml)")
    ap.add_argument("--run-dir", type=Path, required=True, help="the run folder the server writes snapshots into")
    ap.add_argument(
        "--idle-timeout",
        type=float,
        help="give up when nothing in the run folder changed for this long and there is no final snapshot "
        "(default: the longer of 600s and connect + reply + stop timeouts of the config's server section)",
    )
    args = ap.parse_args(argv)
    try:
        _check_arguments(args)
        cfg = load_experiment(args.config)
    except (BadArgument, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    idle = args.idle_timeout if args.idle_timeout is not None else default_idle_timeout(cfg)
    print(f"scoring {args.run_dir / 'snapshots'} until final.safetensors (idle timeout {idle:g}s)", flush=True)
    try:
        Evaluator(cfg, args.run_dir).run(EndWatch(args.run_dir, idle))
    except (GaveUp, UnusableSnapshot, WriteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


class BadArgument(Exception):
    pass


def _check_arguments(args: argparse.Namespace) -> None:
    """--run-dir must be a folder and --config a file: a typo must not mean waiting forever for nothing."""
    if not args.run_dir.is_dir():
        what = "is not a folder" if args.run_dir.exists() else "does not exist"
        raise BadArgument(f"--run-dir {args.run_dir} {what}")
    if not args.config.is_file():
        what = "is not a file" if args.config.exists() else "does not exist"
        raise BadArgument(f"--config {args.config} {what}")
    if args.idle_timeout is not None and args.idle_timeout <= 0:
        raise BadArgument(f"--idle-timeout must be > 0, got {args.idle_timeout:g}")


if __name__ == "__main__":
    freeze_imports()  # the imports are done: no collection need walk them again
    sys.exit(main())
