"""python -m launch.evaluate --config RUN/config.yaml --run-dir RUN

The evaluator: scores the parameter snapshots the server (or sync rank 0) writes to RUN/snapshots/
and appends one line per snapshot to RUN/metrics.jsonl. It runs beside training in its own process
and never talks to the server, so evaluation costs the workers nothing but a share of the CPU.
It exits after scoring final.snap.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from protocol.config.loader import load_experiment
from protocol.config.schema import ExperimentConfig
from protocol.runfolder.snapshot import read_snapshot
from worker.tasks import Task


class Evaluator:
    def __init__(self, cfg: ExperimentConfig, run_dir: Path):
        self.cfg = cfg
        self.snap_dir = run_dir / "snapshots"
        self.out = run_dir / "metrics.jsonl"
        self.task = Task(cfg, device="cpu")
        self._last_mtime = 0.0

    def score(self, path: Path) -> dict:
        meta, params = read_snapshot(path)
        t0 = time.monotonic()
        m = self.task.evaluate(params, self.cfg.run.eval_max_samples, grad_norm=self.cfg.run.eval_grad_norm)
        line = {
            "wall_s": round(meta["wall_s"], 4),
            "updates": meta["version"],
            **m,
            "train_loss_pushed": meta.get("train_loss_pushed"),
            "eval_s": round(time.monotonic() - t0, 4),
        }
        if meta.get("final"):
            line["final"] = True
        with open(self.out, "a") as f:
            f.write(json.dumps(line) + "\n")
        return line

    def poll_once(self) -> bool:
        """Score whatever is new; True once the final snapshot has been scored."""
        final = self.snap_dir / "final.snap"
        if final.exists():
            self.score(final)
            return True
        latest = self.snap_dir / "latest.snap"
        try:
            mtime = latest.stat().st_mtime
        except FileNotFoundError:
            return False
        if mtime != self._last_mtime:
            self._last_mtime = mtime
            self.score(latest)
        return False

    def run(self, poll_s: float = 0.1) -> None:
        while not self.poll_once():
            time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launch.evaluate")
    ap.add_argument("--config", required=True)
    ap.add_argument("--run-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    Evaluator(load_experiment(args.config), args.run_dir).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
