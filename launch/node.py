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
Exit codes as python -m launch: 0, 1 a process failed, 2 bad config, arguments or environment.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from launch.__main__ import format_summary
from launch.node_store import NodeStore, StoreError
from launch.preflight import preflight
from launch.run import AsyncRun, RunFailed
from launch.rundir import make_run_dir
from launch.signals import Stopped, StopSignals
from launch.writes import write_text
from protocol.config.loader import load_experiment, resolved_yaml
from protocol.config.schema import ExperimentConfig
from protocol.errors import ConfigError
from protocol.wire.curve import SERVER, KeyFileError, create_pair, read_public, worker_keys, worker_name, write_public

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
REPORT_WAIT_S = 60.0  # after the server ends: the workers' reports reach the store


class HeadRun(AsyncRun):
    """The asynchronous run of python -m launch with its workers on other processes (other hosts)."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, store: NodeStore, **kw: Any):
        super().__init__(cfg, run_dir, **kw)
        self.store = store

    def _start(self) -> None:
        started = self._start_server()  # every shard on the head (docs/design.md, Runs across hosts)
        self._start_evaluator()  # while the server starts
        endpoints = self._wait_until_bound(started)
        keys = Path(self.cfg.server.keys) if self.cfg.server.curve else None
        server_public = read_public(keys, SERVER).decode() if keys else ""
        self.store.publish_start(" ".join(endpoints), server_public, self.config_path.read_text(), self.run_dir.name)

    def _stop_workers(self) -> None:
        """The workers are elsewhere: their reports come through the store into the run folder."""
        for rank, report in self.store.reports(self.cfg.workers, REPORT_WAIT_S, self.signals.check).items():
            write_text(self.run_dir / f"worker-{rank}.json", report)


def interface(cfg: ExperimentConfig, master_addr: str) -> str:
    """server.interface, else this host's address on the route to MASTER_ADDR (a UDP connect sends nothing)."""
    if cfg.server.interface:
        return cfg.server.interface
    family = socket.AF_INET6 if ":" in master_addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.connect((master_addr, 9))
        return s.getsockname()[0]


def head(args: argparse.Namespace, env: dict[str, str], store: NodeStore) -> int:
    cfg = load_experiment(args.config, args.overrides)
    host = interface(cfg, env["MASTER_ADDR"])
    bind = f"tcp://[{host}]:0" if ":" in host else f"tcp://{host}:0"
    cfg = load_experiment(args.config, [*args.overrides, f"server.endpoint={bind}"])
    preflight(cfg)
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
        except RunFailed as err:
            print(f"error: run failed: {err}", file=sys.stderr)
            return 1
        except Stopped as stopped:
            print(f"{stopped.status} ({stopped.describe()}): every process was stopped", file=sys.stderr)
            return stopped.exit_code
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
    code = _run_forwarding_signals(cmd)
    report = folder / f"worker-{rank}.json"
    try:
        store.publish_report(rank, report.read_text() if report.exists() else "")
    except StoreError as err:  # the head's torchrun is gone: this worker's own outcome still decides
        print(f"error: worker {rank}'s report ({report}) did not reach the head: torchrun's store is gone ({err})",
              file=sys.stderr)  # fmt: skip
        return code or 1
    return code


def _run_forwarding_signals(cmd: list[str]) -> int:
    """Run the worker; SIGTERM/SIGINT (torchrun stopping its slots) reach it, and its exit code is ours."""
    child = subprocess.Popen(cmd)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, _f: child.send_signal(s))
    return child.wait()


def _check_world(cfg: ExperimentConfig, world: int) -> None:
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
    env = {k: os.environ.get(k, "") for k in (*TORCHRUN_ENV, "TORCHELASTIC_RUN_ID")}
    missing = [k for k in TORCHRUN_ENV if not env[k]]
    if missing:
        print(f"error: {', '.join(missing)} not set: start it with torchrun (docs/design.md)", file=sys.stderr)
        return 2
    try:
        own = load_experiment(args.config, args.overrides)
        _check_world(own, int(env["WORLD_SIZE"]))  # before any waiting
        store = NodeStore.connect(env, timeout_s=own.server.connect_timeout_s)
        return head(args, env, store) if env["RANK"] == "0" else worker(args, env, store)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (FileExistsError, KeyFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TimeoutError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except StoreError as err:
        print(f"error: torchrun's store at {env['MASTER_ADDR']}:{env['MASTER_PORT']} is gone: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C (torchrun passes it on) while waiting on the store, before any run
        print("stopped (SIGINT) while waiting for the other processes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
