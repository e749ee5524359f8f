"""One run as processes, watched until the end: the asynchronous parameter server or the synchronous baseline.

Run (both modes, launch/runner.py): start, watch, finish; after a failure or a stop signal, stop the children
    in order so that the run folder still gets what the server and evaluator can write, and its summary.
AsyncRun: server and evaluator -> wait until the server has bound (server.json) -> the worker processes (one per
    rank, or worker.per_process ranks on threads each: logs/workers0-32.log). The server stops
    at max_updates / max_seconds and tells the workers to stop; training is over when it exits 0.
SyncRun: evaluator and N ranks of `python -m sync` (RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1 and a
    free MASTER_PORT in their environment). Rank 0 decides the end and every rank learns it in the same
    collective; training is over when every rank has exited 0.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from launch.handoff import hand_off
from launch.keys import run_keys
from launch.outcome import RunFailed
from launch.rundir import read_json
from launch.runner import Run
from launch.shards import ShardFiles
from launch.shutdown import STOP_MARGIN_S, WORKER_GRACE_S, Stage
from launch.signals import StopSignals
from launch.supervisor import Child
from launch.writes import WriteError, writing
from protocol.config.schema import ExperimentConfig
from protocol.errors import ConfigError
from protocol.runfolder.records import RunSummary

__all__ = ["RunFailed", "run_experiment", "worker_process"]  # RunFailed lives with the outcomes; callers use it here

START_TIMEOUT_S = 60.0  # server import + bind
SERVER_DECIDED = (2, 3)  # python -m ps exit codes that a restart would repeat (ps/__main__.py)


class AsyncRun(Run):
    starting = "starting the server..."

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, **kw: Any):
        super().__init__(cfg, run_dir, **kw)
        # server.shards > 1: one server process per shard, and the run folder's top put together from theirs
        self.shard_files = ShardFiles(run_dir, cfg.server.shards) if cfg.server.shards > 1 else None

    def _start(self) -> None:
        started = self._start_server()
        self._start_evaluator()  # it imports torch and reads its data while the server starts, on a core left idle
        endpoints = self._wait_until_bound(started)
        servers = [arg for e in endpoints for arg in ("--server", e)]
        for ranks in self.cfg.worker_processes():
            name, which = worker_process(ranks)
            self.sup.start(
                name,
                "worker",
                ["--config", str(self.config_path), *which, *servers, "--run-dir", str(self.run_dir),
                 "--run-id", self.run_dir.name],
            )  # fmt: skip

    def _servers(self) -> list[str]:
        """The server processes' names: server, or server0 .. server<S-1> (logs/server0.log ...)."""
        n = self.cfg.server.shards
        return ["server"] if n == 1 else [f"server{s}" for s in range(n)]

    def _start_server(self) -> list[Child]:
        """Hand the model off and start the server (every shard, in shard order); RunFailed when the task cannot
        be built."""
        try:
            with writing(self.run_dir / "model"):
                hand_off(self.cfg, self.run_dir)  # the server starts knowing its model and run
            with writing(self.run_dir / "keys"):
                run_keys(self.cfg, self.run_dir)  # CURVE without server.keys: this run's own keys
        except ConfigError as err:
            raise RunFailed(f"the task cannot be built: {err}") from None
        args = ["--config", str(self.config_path), "--run-dir", str(self.run_dir)]
        shard = [["--shard", str(s)] for s in range(self.cfg.server.shards)] if self.shard_files else [[]]
        return [self.sup.start(name, "ps", [*args, *more]) for name, more in zip(self._servers(), shard)]

    def _wait_until_bound(self, servers: list[Child]) -> list[str]:
        """Wait until every server has bound (at most START_TIMEOUT_S); their endpoints in shard order. RunFailed
        naming the server when one exits first or the time is up."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            self.signals.check()
            endpoints = self._endpoints()
            if endpoints:
                return endpoints
            for server in servers:
                if server.returncode is not None:
                    self._fail(server, "before it was ready")
            time.sleep(0.05)
        raise RunFailed(f"the server did not start within {START_TIMEOUT_S:.0f}s; see {servers[0].log_path}")

    def _endpoints(self) -> list[str] | None:
        if self.shard_files is not None:
            return self.shard_files.endpoints()
        info = read_json(self.run_dir / "server.json")
        return [info["endpoint"]] if info else None

    def _training_over(self) -> bool:
        return all(self.sup.children[name].returncode == 0 for name in self._servers())

    def _watch(self) -> None:
        super()._watch()
        if self.shard_files is not None:  # every shard has written its final snapshot and summary
            self.shard_files.finish()

    def _sample(self, force_progress: bool = False) -> None:
        if self.shard_files is not None:
            self.shard_files.tick()
        super()._sample(force_progress)

    def _after_stop(self) -> None:
        if self.shard_files is None:
            return
        try:  # after a failure: what the shards managed to write
            self.shard_files.finish()
        except WriteError as err:
            self.write_errors.append(str(err))

    def _restartable(self, name: str) -> bool:
        """The server resumes from its checkpoint, workers and the evaluator join again; but a server that
        ended the run on purpose (exit 3: too few workers left, ...) or cannot start (exit 2: its config or
        checkpoint) would only do the same again."""
        return name not in self._servers() or self.sup.children[name].returncode not in SERVER_DECIDED

    def _restart_args(self, name: str, args: list[str]) -> list[str]:
        if name not in self._servers():
            return args
        shard = name.removeprefix("server")
        info = read_json(self.run_dir / (f"server-{shard}.json" if shard else "server.json")) or {}
        endpoint = ["--endpoint", info["endpoint"]] if "endpoint" in info else []
        return [*(a for a in args if a != "--resume"), "--resume", *endpoint]  # the workers find it where it was

    def _hard_limit_s(self) -> float:
        return self.cfg.run.max_seconds + self.cfg.server.stop_grace_s + 60

    def _stop_workers(self) -> None:
        if not self._wait(self._workers(), self.cfg.server.stop_grace_s + 5):
            # The server has ended the run and written its results; a worker that missed the Stop
            # (e.g. still computing a long step) is simply stopped. The evaluator still has to score the
            # final snapshot, so it is left running.
            self.sup.terminate_all(only=self._workers())

    def _stop_order(self) -> list[Stage]:
        # The server first: it tells the live workers Stop and writes server_summary.json and final.safetensors
        # within stop_grace_s; the workers keep running meanwhile, so they get that Stop and leave cleanly.
        server_grace = self.cfg.server.stop_grace_s + STOP_MARGIN_S
        servers = Stage("the server", self._servers(), server_grace)
        return [servers, Stage("the workers", self._workers(), WORKER_GRACE_S)]


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

    def _stop_order(self) -> list[Stage]:
        # Every rank at once: any rank's SIGTERM travels in the next collective, the group applies that step
        # and leaves, and rank 0 writes final.safetensors and server_summary.json (a group with a dead rank cannot
        # finish a collective: its ranks fail and exit, and write nothing more).
        return [Stage("the ranks", self._workers(), self.cfg.server.stop_grace_s + STOP_MARGIN_S)]


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


def run_experiment(
    cfg: ExperimentConfig, run_dir: Path, quiet: bool = False, signals: StopSignals | None = None
) -> RunSummary:
    """Run one experiment (its mode decides how) into run_dir; returns summary.json's content.

    run_dir must exist and hold config.yaml (the resolved config). signals: the launcher's entered
    StopSignals, checked on every tick. Raises RunFailed or Stopped (KeyboardInterrupt without signals),
    after the run folder got its summary.
    """
    if cfg.mode not in RUNS:
        raise RunFailed(f"mode {cfg.mode!r} is not implemented")
    return RUNS[cfg.mode](cfg, run_dir, quiet=quiet, signals=signals).execute()
