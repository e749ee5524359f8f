"""python -m launch.node CONFIG.yaml [key.sub=value ...] [--run-dir DIR]: one process of a run placed by torchrun.

torchrun (or srun through torchrun) starts this module once per slot on every host; the global RANK decides
the role (docs/design.md, Runs across hosts):

    RANK 0            the head: the parameter server (with server.shards, every shard), the evaluator and the
                      run folder (as python -m launch)
    RANK 1..WORLD-1   worker rank RANK - 1 (so the config's `workers` must be WORLD_SIZE - 1)

The processes meet in the c10d store torchrun already runs at MASTER_ADDR:MASTER_PORT (a PrefixStore per
run): each worker publishes a CURVE public key it made on its own host (its secret never leaves it), the head
writes them into the run's allowlist, binds its server on server.interface (or its address on the route to
MASTER_ADDR; never a wildcard), and publishes the endpoint, the server's public key and the resolved config.
After training each worker publishes its report (worker-<rank>.json) for the head's run folder and summary.
A worker's own files go to DIR-worker<rank> (default: <run.runs_dir>/<name>-<run id>-worker<rank>).
A slot that fails (a bad config or key folder on its host, the run folder taken, its worker ending non-zero)
publishes why under failed/<RANK>: the head fails its run on a worker's, the workers end on the head's, each
naming the slot, instead of training on without it or waiting out their timeouts. A head whose run failed or
was stopped publishes that as well, and a worker slot whose head failed, or whose store is gone, stops its
worker. Every slot asks for SIGTERM when its torchrun dies (SIGKILL gives torchrun no chance to stop its
slots, which would train on orphaned).
Exit codes as python -m launch: 0, 1 a process failed, 2 bad config, arguments or environment.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from launch.advice import say_advice
from launch.node_store import POLL_S, NodeStore, PeerFailed, StoreError, slot_name
from launch.preflight import preflight
from launch.run import AsyncRun, RunFailed
from launch.rundir import make_run_dir
from launch.signals import Stopped, StopSignals
from launch.summary import format_summary
from launch.writes import WriteError, write_text
from launch.zygote import dies_with
from protocol.config.loader import load_experiment, resolved_yaml
from protocol.config.schema import ExperimentConfig
from protocol.errors import ConfigError
from protocol.wire.curve import SERVER, KeyFileError, create_pair, read_public, worker_keys, worker_name, write_public

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
REPORT_WAIT_S = 60.0  # after the server ends: the workers' reports reach the store
AFTER_STOP_REPORT_WAIT_S = 5.0  # after a failure or a signal (torchrun's agent kills its slots 30 s after SIGTERM)
TELL_TIMEOUT_S = 3.0  # a slot that fails before it has the store tells the others; torchrun's store is up by then
HEAD_POLL_S = 1.0  # a worker slot asks the store whether the head's run is over (one round trip per slot)
WORKER_STOP_S = 10.0  # then its worker gets this long after SIGTERM to leave


class HeadRun(AsyncRun):
    """The asynchronous run of python -m launch with its workers on other processes (other hosts)."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, store: NodeStore, **kw: Any):
        super().__init__(cfg, run_dir, **kw)
        self.store = store
        self._next_poll = 0.0

    def _start(self) -> None:
        started = self._start_server()  # every shard on the head (docs/design.md, Runs across hosts)
        self._start_evaluator()  # while the server starts
        endpoints = self._wait_until_bound(started)
        keys = Path(self.cfg.server.keys) if self.cfg.server.curve else None
        server_public = read_public(keys, SERVER).decode() if keys else ""
        self.store.publish_start(" ".join(endpoints), server_public, self.config_path.read_text(), self.run_dir.name)

    def _stop_workers(self) -> None:
        """The workers are elsewhere: their reports come through the store into the run folder. One that does
        not come (its slot was killed) or a store that is gone fails the run, naming the workers."""
        try:
            missing = self._collect_reports(REPORT_WAIT_S, self.signals.check)
        except StoreError as err:
            raise RunFailed(f"the workers' reports cannot be collected: torchrun's store is gone ({err})") from None
        if missing:
            raise RunFailed(f"no report from {', '.join(missing)} within {REPORT_WAIT_S:g}s: see that host's log")

    def _after_stop(self) -> None:
        """After a failure or a stop signal the server told the live workers Stop: their reports still belong in
        the run folder (python -m launch's workers write theirs there), waited for briefly (a killed slot sends
        none). Signals are only noted here, as in the rest of the stop."""
        super()._after_stop()
        try:
            missing = self._collect_reports(AFTER_STOP_REPORT_WAIT_S, lambda: None)
        except (StoreError, WriteError) as err:
            self.write_errors.append(f"the workers' reports: {err}")
            return
        if missing:
            self._say(f"no report from {', '.join(missing)} within {AFTER_STOP_REPORT_WAIT_S:g}s")

    def _collect_reports(self, timeout_s: float, check: Callable[[], None]) -> list[str]:
        """The workers' reports that reach the store within timeout_s, written as worker-<rank>.json; the
        slots (as the user knows them) that sent none."""
        reports = self.store.reports(self.cfg.workers, timeout_s, check)
        for rank, report in reports.items():
            write_text(self.run_dir / f"worker-{rank}.json", report)
        return [slot_name(r + 1) for r in range(self.cfg.workers) if r not in reports]

    def _sample(self, force_progress: bool = False) -> None:
        """Besides the local children, the worker slots on other hosts: one that published a failure (a config
        that does not load there, a worker process that ended non-zero) fails the run, as a dead local worker
        does under python -m launch."""
        super()._sample(force_progress)
        if time.monotonic() < self._next_poll or self._training_over():
            return
        self._next_poll = time.monotonic() + POLL_S  # one store round trip per POLL_S, not per tick
        try:
            self.store.raise_failures(range(1, self.cfg.workers + 1))
        except PeerFailed as err:
            raise RunFailed(str(err)) from None
        except StoreError as err:
            raise RunFailed(f"torchrun's store is gone ({err})") from None


def interface(cfg: ExperimentConfig, master_addr: str) -> str:
    """server.interface, else this host's address on the route to MASTER_ADDR (a UDP connect sends nothing).
    MASTER_ADDR may be a host name, of either family: it is resolved, not guessed from its spelling."""
    if cfg.server.interface:
        return cfg.server.interface
    try:
        family, kind, _, _, addr = socket.getaddrinfo(master_addr, 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind) as s:
            s.connect(addr)
            return str(s.getsockname()[0])
    except OSError as err:
        raise ConfigError("<MASTER_ADDR>", f"MASTER_ADDR {master_addr!r}: no route from this host to it, so no "
                          f"address for the server ({err}); set server.interface") from None  # fmt: skip


def _preflight(cfg: ExperimentConfig) -> None:
    """launch.preflight; the endpoint it tries is made here from server.interface (or the route to
    MASTER_ADDR), so its failure names that, not server.endpoint, and never suggests a wildcard."""
    try:
        preflight(cfg)
    except ConfigError as err:
        if err.key != "server.endpoint":
            raise
        source = "server.interface" if cfg.server.interface else "<MASTER_ADDR>"
        reason = err.message.removesuffix(": use 127.0.0.1 or *")  # a wildcard is what launch.node never binds
        raise ConfigError(source, f"{reason}: set server.interface to an address of this host, "
                          "or leave it empty for the address on the route to MASTER_ADDR") from None  # fmt: skip


def head(args: argparse.Namespace, env: dict[str, str], store: NodeStore) -> int:
    cfg = load_experiment(args.config, args.overrides)
    host = interface(cfg, env["MASTER_ADDR"])
    bind = f"tcp://[{host}]:0" if ":" in host else f"tcp://{host}:0"
    cfg = load_experiment(args.config, [*args.overrides, f"server.endpoint={bind}"])
    _preflight(cfg)
    say_advice(cfg)  # settings known to train badly: said, not refused
    run_dir = make_run_dir(cfg.run.runs_dir, cfg.name, args.run_dir)
    print(f"run folder: {run_dir} (head of {env['WORLD_SIZE']} processes; server on {host})", flush=True)
    if cfg.server.curve and not cfg.server.keys:  # the workers' own public keys are the allowlist
        folder = run_dir / "keys"
        create_pair(folder, SERVER)
        for rank, public in store.public_keys(cfg.workers, cfg.server.join_timeout_s).items():
            write_public(folder, worker_name(rank), public)
        cfg = load_experiment(args.config, [*args.overrides, f"server.endpoint={bind}", f"server.keys={folder}"])
    write_text(run_dir / "config.yaml", resolved_yaml(cfg))
    with StopSignals() as signals:
        try:
            summary = HeadRun(cfg, run_dir, store, quiet=args.quiet, signals=signals).execute()
        except RunFailed as err:  # published too: workers on other hosts whose server is gone end now
            return _tell(env, store, f"error: run failed: {err}", 1)
        except Stopped as stopped:
            return _tell(env, store, f"{stopped.status} ({stopped.describe()}): every process was stopped",
                         stopped.exit_code)  # fmt: skip
    print(format_summary(summary, run_dir, cfg.run.plots))
    return 0


def worker(args: argparse.Namespace, env: dict[str, str], store: NodeStore) -> int:
    rank = int(env["RANK"]) - 1
    own = load_experiment(args.config, args.overrides)  # validated here too: a bad file fails on every host
    if args.run_dir:
        folder = Path(f"{args.run_dir}-worker{rank}")
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = make_run_dir(own.run.runs_dir, f"{own.name}-worker{rank}", None)
    named = Path(own.server.keys) if own.server.keys else None  # the head uses the same folder (same config)
    keydir = named or folder / "keys"
    # a named folder's own pair, else one made on this host; only its public half travels
    pair = worker_keys(named, rank).pair if named else create_pair(keydir, worker_name(rank))
    store.publish_key(rank, pair.public)
    start = store.start(own.server.join_timeout_s + own.server.connect_timeout_s)
    (folder / "config.yaml").write_text(start.config)
    keys = []
    if start.server_public:
        if named is None:
            write_public(keydir, SERVER, start.server_public.encode())
        elif read_public(named, SERVER) != start.server_public.encode():
            raise KeyFileError(f"{named / 'server.key'} is not the public key of the head's server (server.keys)")
        keys = ["--keys", str(keydir)]
    servers = [a for e in start.endpoint.split() for a in ("--server", e)]  # every shard's, in shard order
    cmd = [sys.executable, "-m", "worker", "--config", str(folder / "config.yaml"), "--rank", str(rank),
           *servers, "--run-dir", str(folder), "--run-id", start.run_id, *keys]  # fmt: skip
    code, ended_by, error = _run_watching_head(cmd, store)
    if ended_by:  # the head's run is over: nobody collects this report any more
        print(f"error: worker {rank} stopped: {ended_by}", file=sys.stderr)
        return 1
    report = folder / f"worker-{rank}.json"
    try:
        if code != 0:  # the head fails its run on it (HeadRun._sample) instead of training on without this rank
            store.publish_failure(rank + 1, _why_ended(code, error))
        store.publish_report(rank, report.read_text() if report.exists() else "")
    except StoreError as err:  # the head's torchrun is gone: this worker's own outcome still decides
        print(f"error: worker {rank}'s report ({report}) did not reach the head: torchrun's store is gone ({err})",
              file=sys.stderr)  # fmt: skip
        return code or 1
    return code


def _run_watching_head(cmd: list[str], store: NodeStore) -> tuple[int, str, str]:
    """Run the worker; SIGTERM/SIGINT (torchrun stopping its slots) reach it, and its exit code is ours (a
    signal's as a shell reports it, 128 + N: sys.exit(-15) would exit 241). It gets SIGTERM if this slot dies.
    Every HEAD_POLL_S the store is asked whether the head failed or its host's torchrun ended (the store gone):
    then the worker is stopped (SIGKILL after WORKER_STOP_S), instead of training on against a dead server
    until its reply timeout. Returns (exit code, why the head ended it: "" when it did not, the worker's last
    'error:' line: "" when it printed none)."""
    child = subprocess.Popen(cmd, preexec_fn=dies_with(os.getpid()), stderr=subprocess.PIPE)
    assert child.stderr is not None  # Popen(stderr=PIPE)
    errors = _StderrFollower(child.stderr)
    errors.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: child.send_signal(s))
    ended_by, kill_at = "", 0.0
    while True:
        try:
            code = child.wait(timeout=HEAD_POLL_S)
            errors.join(timeout=TELL_TIMEOUT_S)  # the last lines, after the worker's exit
            return (128 - code if code < 0 else code), ended_by, errors.last_error
        except subprocess.TimeoutExpired:
            pass
        if not ended_by:
            ended_by = _head_over(store)
            if ended_by:
                child.terminate()
                kill_at = time.monotonic() + WORKER_STOP_S
        elif time.monotonic() > kill_at:
            child.kill()  # blocked in a send to the dead server (up to server.send_timeout_s)


class _StderrFollower(threading.Thread):
    """Copies the worker's standard error to this slot's, line by line, keeping its last 'error:' line: the
    cause the slot publishes when the worker fails, so the head names it, not only an exit code."""

    def __init__(self, stream: IO[bytes]):
        super().__init__(name="worker-stderr", daemon=True)
        self.stream, self.last_error = stream, ""

    def run(self) -> None:
        for raw in self.stream:
            line = raw.decode(errors="replace")
            sys.stderr.write(line)
            sys.stderr.flush()
            if line.startswith("error:"):
                self.last_error = line.removeprefix("error:").strip()


def _why_ended(code: int, error: str = "") -> str:
    """What a worker slot publishes when its worker ended with `code` != 0 (and its last `error` line). A SIGTERM
    or SIGINT is usually the host's torchrun stopping every slot after one of them died (a killed slot publishes
    nothing itself)."""
    where = f"on {socket.gethostname()}"
    if code in (128 + signal.SIGTERM, 128 + signal.SIGINT):
        return (f"its worker process was stopped by a signal (exit {code}) {where}: torchrun stops every slot of a "
                "host when one of them ends, so that host's torchrun log names the first")  # fmt: skip
    return f"its worker process exited with code {code} {where}" + (f": {error}" if error else "")


def _head_over(store: NodeStore) -> str:
    """Why the head's run is over for this worker ("" while it is not): its published failure, or its store
    gone (the head's torchrun ended)."""
    try:
        store.raise_failures(range(1))
    except PeerFailed as err:
        return str(err)
    except StoreError as err:
        return f"torchrun's store is gone: the head's host ended ({err})"
    return ""


def _check_world(cfg: ExperimentConfig, world: int, max_restarts: str = "") -> None:
    if max_restarts not in ("", "0"):  # a restarted head would start a second run in a folder that is not empty
        raise ConfigError(
            "<torchrun>",
            f"torchrun --max-restarts is {max_restarts}: python -m launch.node does "
            "not restart a run; drop it (run.max_restarts restarts the head's server and evaluator)",
        )
    if cfg.mode != "async":
        raise ConfigError(
            "mode", "python -m launch.node runs the asynchronous mode (the sync baseline: torchrun -m sync)"
        )
    if cfg.workers != world - 1:
        raise ConfigError("workers", f"is {cfg.workers}, but torchrun started {world} processes: one head and "
                          f"{world - 1} workers, so set workers={world - 1}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launch.node", description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="experiment YAML (the same file on every host)")
    ap.add_argument("overrides", nargs="*", help="key.sub=value settings applied on top of the file")
    ap.add_argument("--run-dir", help="the head's run folder (workers: DIR-worker<rank>)")
    ap.add_argument("--quiet", action="store_true", help="no progress line")
    args = ap.parse_intermixed_args(argv)  # overrides may come after the flags too
    env = {k: os.environ.get(k, "") for k in (*TORCHRUN_ENV, "TORCHELASTIC_RUN_ID", "TORCHELASTIC_MAX_RESTARTS")}
    missing = [k for k in TORCHRUN_ENV if not env[k]]
    if missing:
        print(f"error: {', '.join(missing)} not set: start it with torchrun (docs/design.md)", file=sys.stderr)
        return 2
    in_child = dies_with(os.getppid())  # torchrun's agent: SIGKILLed, it cannot stop this slot itself
    if in_child is not None:
        in_child()
    try:
        own = load_experiment(args.config, args.overrides)
        _check_world(own, int(env["WORLD_SIZE"]), env["TORCHELASTIC_MAX_RESTARTS"])  # before any waiting
    except ConfigError as err:
        return _tell(env, None, f"error: {err}", 2)
    try:
        store = NodeStore.connect(env, timeout_s=own.server.connect_timeout_s)
    except TimeoutError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return _role(args, env, store)


def _role(args: argparse.Namespace, env: dict[str, str], store: NodeStore) -> int:
    """This slot's role; a failure is published for the other slots (failed/<RANK>) and printed."""
    try:
        return head(args, env, store) if env["RANK"] == "0" else worker(args, env, store)
    except (ConfigError, FileExistsError, KeyFileError) as err:
        return _tell(env, store, f"error: {err}", 2)
    except (TimeoutError, PeerFailed) as err:
        return _tell(env, store, f"error: {err}", 1)
    except StoreError as err:
        print(f"error: torchrun's store at {env['MASTER_ADDR']}:{env['MASTER_PORT']} is gone: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C (torchrun passes it on) while waiting on the store, before any run
        return _tell(env, store, "stopped (SIGINT) while waiting for the other processes", 130)


def _tell(env: dict[str, str], store: NodeStore | None, message: str, code: int) -> int:
    """Print why this slot ends and publish it for the others (best effort: the store may be gone too)."""
    print(message, file=sys.stderr)
    try:
        store = store or NodeStore.connect(env, timeout_s=TELL_TIMEOUT_S)
        store.publish_failure(int(env["RANK"]), message.removeprefix("error: "))
    except (TimeoutError, StoreError):
        pass  # the others still end: on their own timeouts, or when torchrun stops them
    return code


if __name__ == "__main__":
    sys.exit(main())
