"""One asynchronous run: server, evaluator and N workers as processes, watched until the end.

start server -> wait until it has bound (server.json) -> start evaluator and workers
watch: progress line, psutil samples, any child dying -> stop everything and name it
end:   the server stops at max_updates / max_seconds and tells workers to stop; the evaluator scores
       the final snapshot; summary.json and plots are written.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from launch.plots import plot_run
from launch.progress import Progress
from launch.rundir import read_json, read_metrics
from launch.summary import build_summary
from launch.supervisor import Child, Supervisor
from protocol.config import ExperimentConfig

TICK_S = 0.2
START_TIMEOUT_S = 60.0  # server import + bind
FINISH_TIMEOUT_S = 60.0  # evaluator scoring the final snapshot


class RunFailed(RuntimeError):
    pass


class AsyncRun:
    def __init__(self, cfg: ExperimentConfig, run_dir: Path, quiet: bool = False):
        self.cfg = cfg
        self.run_dir = run_dir
        self.config_path = run_dir / "config.yaml"
        self.sup = Supervisor(run_dir / "logs")
        self.progress = Progress(cfg.run.max_updates, cfg.run.progress_every_s)
        self.quiet = quiet
        self._proc_csv = open(run_dir / "processes.csv", "w", newline="")
        self._proc_rows = csv.writer(self._proc_csv)
        self._proc_rows.writerow(["wall_s", "process", "pid", "cpu_percent", "rss_mb"])
        self.t0 = time.monotonic()

    def execute(self) -> dict:
        """Run to the end and return summary.json's content; raises RunFailed or KeyboardInterrupt."""
        try:
            endpoint = self._start_server()
            self.sup.start("evaluator", "launch.evaluate",
                           ["--config", str(self.config_path), "--run-dir", str(self.run_dir)])
            for rank in range(self.cfg.workers):
                self.sup.start(f"worker{rank}", "worker",
                               ["--config", str(self.config_path), "--rank", str(rank), "--server", endpoint,
                                "--run-dir", str(self.run_dir), "--run-id", self.run_dir.name])
            self._watch()
            self._finish()
        except BaseException:
            self.sup.terminate_all()
            raise
        finally:
            self._proc_csv.close()
            if not self.quiet:
                self.progress.done()
        summary = build_summary(self.run_dir, self.cfg, self.sup.process_summary())
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        if self.cfg.run.plots:
            plot_run(self.run_dir)
        return summary

    def _start_server(self) -> str:
        server = self.sup.start("server", "ps", ["--config", str(self.config_path), "--run-dir", str(self.run_dir)])
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            info = read_json(self.run_dir / "server.json")
            if info:
                return info["endpoint"]
            if server.returncode is not None:
                self._fail(server, "before it was ready")
            time.sleep(0.05)
        raise RunFailed(f"the server did not start within {START_TIMEOUT_S:.0f}s; see {server.log_path}")

    def _watch(self) -> None:
        hard_limit = self.cfg.run.max_seconds + self.cfg.server.stop_grace_s + 60
        while True:
            self._sample()
            server = self.sup.children["server"]
            for child in self.sup.exited():
                if child.returncode != 0:
                    self._fail(child, "during the run")
            if server.returncode == 0:
                return
            if time.monotonic() - self.t0 > hard_limit:
                raise RunFailed(f"the run did not end within {hard_limit:.0f}s (max_seconds + grace); stopped it")
            time.sleep(TICK_S)

    def _finish(self) -> None:
        workers = [n for n in self.sup.children if n.startswith("worker")]
        if not self.sup.wait(workers, self.cfg.server.stop_grace_s + 5):
            # The server has ended the run and written its results; a worker that missed the Stop
            # (e.g. still computing a long step) is simply stopped.
            self.sup.terminate_all()
        if not self.sup.wait(["evaluator"], FINISH_TIMEOUT_S):
            raise RunFailed(f"the evaluator did not score the final snapshot within {FINISH_TIMEOUT_S:.0f}s")
        evaluator = self.sup.children["evaluator"]
        if evaluator.returncode != 0:
            self._fail(evaluator, "while scoring the final snapshot")
        self._sample(force_progress=True)

    def _sample(self, force_progress: bool = False) -> None:
        wall = time.monotonic() - self.t0
        for name, pid, cpu, rss in self.sup.sample():
            self._proc_rows.writerow([f"{wall:.2f}", name, pid, f"{cpu:.1f}", f"{rss / 2**20:.1f}"])
        if not self.quiet:
            metrics = read_metrics(self.run_dir) if (self.run_dir / "metrics.jsonl").exists() else []
            self.progress.show(read_json(self.run_dir / "status.json"), metrics[-1] if metrics else None,
                               force=force_progress)

    def _fail(self, child: Child, when: str) -> None:
        raise RunFailed(f"{child.name} (pid {child.pid}) {child.describe_exit()} {when}; "
                        f"last lines of {child.log_path}:\n{child.log_tail()}")


def run_experiment(cfg: ExperimentConfig, run_dir: Path, quiet: bool = False) -> dict:
    """Run one experiment (its mode decides how) into run_dir; returns summary.json's content.

    run_dir must exist and hold config.yaml (the resolved config). Raises RunFailed or KeyboardInterrupt.
    """
    if cfg.mode == "async":
        return AsyncRun(cfg, run_dir, quiet=quiet).execute()
    raise RunFailed(f"mode {cfg.mode!r} is not implemented")
