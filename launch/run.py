"""One run as processes, watched until the end: the asynchronous parameter server or the synchronous baseline.

Run (both modes): start the processes; watch them (progress line, psutil samples, any child dying ->
    stop everything and name it); finish (the evaluator scores the final snapshot); summary.json, plots.
AsyncRun: server -> wait until it has bound (server.json) -> evaluator and the worker processes (one per rank,
    or worker.per_process ranks on threads each: logs/workers0-32.log). The server stops
    at max_updates / max_seconds and tells the workers to stop; training is over when it exits 0.
SyncRun: evaluator and N ranks of `python -m sync` (RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1 and a
    free MASTER_PORT in their environment). Rank 0 decides the end and every rank learns it in the same
    collective; training is over when every rank has exited 0.
"""

from __future__ import annotations

import csv
import socket
import time
from pathlib import Path

from launch.plots import plot_run
from launch.progress import Progress
from launch.rundir import read_json, read_metrics
from launch.summary import build_summary
from launch.supervisor import Child, Supervisor
from protocol.config.schema import ExperimentConfig
from protocol.runfolder.records import RunSummary, Status, read_record, write_record

TICK_S = 0.2
START_TIMEOUT_S = 60.0  # server import + bind
FINISH_TIMEOUT_S = 60.0  # evaluator scoring the final snapshot


class RunFailed(RuntimeError):
    pass


class Run:
    """What every mode shares: supervision, progress, psutil samples, naming a failure, summary and plots."""

    starting = "starting..."  # the progress line before the first status.json

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, quiet: bool = False):
        self.cfg = cfg
        self.run_dir = run_dir
        self.config_path = run_dir / "config.yaml"
        self.sup = Supervisor(run_dir / "logs")
        self.progress = Progress(cfg.run.max_updates, cfg.run.progress_every_s, starting=self.starting)
        self.quiet = quiet
        self._proc_csv = open(run_dir / "processes.csv", "w", newline="")
        self._proc_rows = csv.writer(self._proc_csv)
        self._proc_rows.writerow(["wall_s", "process", "pid", "cpu_percent", "rss_mb"])
        self._exit_seen: dict[str, int] = {}  # child name -> watch tick at which it was first seen exited
        self.t0 = time.monotonic()

    def execute(self) -> RunSummary:
        """Run to the end and return summary.json's content; raises RunFailed or KeyboardInterrupt."""
        try:
            self._start()
            self._watch()
            self._stop_workers()
            self._finish_evaluation()
        except BaseException:
            self.sup.terminate_all()
            raise
        finally:
            self._proc_csv.close()
            if not self.quiet:
                self.progress.done()
        summary = build_summary(self.run_dir, self.cfg, self.sup.process_summary())
        write_record(self.run_dir / "summary.json", summary)
        if self.cfg.run.plots:
            plot_run(self.run_dir)
        return summary

    # -- what each mode defines ------------------------------------------------------------------------------
    def _start(self) -> None:
        raise NotImplementedError

    def _training_over(self) -> bool:
        raise NotImplementedError

    def _hard_limit_s(self) -> float:
        raise NotImplementedError

    def _stop_workers(self) -> None:
        """After training: make sure no worker is left running."""

    # -- shared --------------------------------------------------------------------------------------------
    def _start_evaluator(self) -> None:
        self.sup.start(
            "evaluator", "launch.evaluate", ["--config", str(self.config_path), "--run-dir", str(self.run_dir)]
        )

    def _watch(self) -> None:
        hard_limit, tick = self._hard_limit_s(), 0
        while True:
            self._sample()
            tick += 1
            for child in self.sup.exited():
                self._exit_seen.setdefault(child.name, tick)
            failed = [c for c in self.sup.exited() if c.returncode != 0]
            if failed:
                self._fail(self._first_cause(failed), "during the run", failed)
            if self._training_over():
                return
            if time.monotonic() - self.t0 > hard_limit:
                raise RunFailed(f"the run did not end within {hard_limit:.0f}s (max_seconds + grace); stopped it")
            time.sleep(TICK_S)

    def _first_cause(self, failed: list[Child]) -> Child:
        """The child whose failure started it: one killed by a signal, else the first seen to exit.

        In a process group one dead rank makes its peers fail too; the peers are consequences."""
        return min(failed, key=lambda c: (c.returncode >= 0, self._exit_seen.get(c.name, 0)))

    def _finish_evaluation(self) -> None:
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
            self.progress.show(
                read_record(Status, self.run_dir / "status.json"),
                metrics[-1] if metrics else None,
                force=force_progress,
            )

    def _fail(self, child: Child, when: str, failed: list[Child] | None = None) -> None:
        also = [f"{c.name} {c.describe_exit()}" for c in failed or [] if c is not child]
        then = f"\n(after it: {'; '.join(also)})" if also else ""
        raise RunFailed(
            f"{child.name} (pid {child.pid}) {child.describe_exit()} {when}; "
            f"last lines of {child.log_path}:\n{child.log_tail()}{then}"
        )

    def _workers(self) -> list[str]:
        return [n for n in self.sup.children if n.startswith("worker")]


class AsyncRun(Run):
    starting = "starting the server..."

    def _start(self) -> None:
        endpoint = self._start_server()
        self._start_evaluator()
        for ranks in self.cfg.worker_processes():
            name, which = worker_process(ranks)
            self.sup.start(
                name,
                "worker",
                [
                    "--config",
                    str(self.config_path),
                    *which,
                    "--server",
                    endpoint,
                    "--run-dir",
                    str(self.run_dir),
                    "--run-id",
                    self.run_dir.name,
                ],
            )

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

    def _training_over(self) -> bool:
        return self.sup.children["server"].returncode == 0

    def _hard_limit_s(self) -> float:
        return self.cfg.run.max_seconds + self.cfg.server.stop_grace_s + 60

    def _stop_workers(self) -> None:
        if not self.sup.wait(self._workers(), self.cfg.server.stop_grace_s + 5):
            # The server has ended the run and written its results; a worker that missed the Stop
            # (e.g. still computing a long step) is simply stopped. The evaluator still has to score the
            # final snapshot, so it is left running.
            self.sup.terminate_all(only=self._workers())


class SyncRun(Run):
    starting = "starting the workers..."

    def _start(self) -> None:
        self._start_evaluator()
        group = {"WORLD_SIZE": str(self.cfg.workers), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        for rank in range(self.cfg.workers):
            self.sup.start(
                f"worker{rank}",
                "sync",
                ["--config", str(self.config_path), "--run-dir", str(self.run_dir)],
                env={**group, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            )

    def _training_over(self) -> bool:
        return all(self.sup.children[name].returncode == 0 for name in self._workers())

    def _hard_limit_s(self) -> float:
        # as async, plus forming the group, which may take up to connect_timeout_s
        s = self.cfg.server
        return self.cfg.run.max_seconds + s.connect_timeout_s + s.stop_grace_s + 60


def worker_process(ranks: range) -> tuple[str, list[str]]:
    """The child's name (its log is logs/<name>.log) and rank arguments of the process hosting `ranks`:
    worker3 / --rank 3 for one rank, workers0-32 / --ranks 0-32 for several (worker.per_process)."""
    if len(ranks) == 1:
        return f"worker{ranks[0]}", ["--rank", str(ranks[0])]
    span = f"{ranks[0]}-{ranks[-1]}"
    return f"workers{span}", ["--ranks", span]


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (rank 0 binds it moments later; the race is theoretical on loopback)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


RUNS = {"async": AsyncRun, "sync": SyncRun}


def run_experiment(cfg: ExperimentConfig, run_dir: Path, quiet: bool = False) -> RunSummary:
    """Run one experiment (its mode decides how) into run_dir; returns summary.json's content.

    run_dir must exist and hold config.yaml (the resolved config). Raises RunFailed or KeyboardInterrupt.
    """
    if cfg.mode not in RUNS:
        raise RunFailed(f"mode {cfg.mode!r} is not implemented")
    return RUNS[cfg.mode](cfg, run_dir, quiet=quiet).execute()
