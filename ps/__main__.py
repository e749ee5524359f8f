"""python -m ps --config X.yaml --run-dir DIR [--init FILE] [--endpoint tcp://127.0.0.1:0] [--shard S]

Serves the initial model the launcher prepared (DIR/model/init.safetensors, or --init; `python -m
launch.prepare` writes one for servers started by hand). Binds, prints `TAUPS_SERVER_READY <endpoint>` (and
writes DIR/server.json) once workers can connect, serves until the run ends, and exits 0 when it ended
normally (max_updates or max_seconds), 2 on a bad config or initial model, 1 when it cannot bind, 3 when it
was stopped early. With server.shards > 1, --shard S serves shard S's range of the parameters and keeps
its files in DIR/shard-S/ (its endpoint in DIR/server-S.json); docs/design.md, Shards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import resource
import signal
import sys
from pathlib import Path

import torch

from protocol.config.loader import load_experiment
from protocol.config.schema import ExperimentConfig
from protocol.entry import freeze_imports
from protocol.errors import ConfigError
from protocol.runfolder.model_init import FILE, ModelInit, read_model_init
from protocol.runfolder.records import ServerSummary
from protocol.wire.curve import ServerKeys, key_folder, server_keys
from protocol.wire.endpoints import is_local, shard_endpoint
from ps.checkpoint import CheckpointMismatch
from ps.outbox import server_channel
from ps.server import ParameterServer

log = logging.getLogger("ps")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ps", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="experiment YAML (the launcher passes the resolved one)")
    ap.add_argument("--run-dir", type=Path, required=True, help="folder for updates.csv, status.json, snapshots")
    ap.add_argument("--init", type=Path, help=f"the initial model (default: RUN_DIR/{FILE})")
    ap.add_argument("--endpoint", help="override server.endpoint")
    ap.add_argument("--keys", type=Path, help="CURVE key folder (default: server.keys, else RUN_DIR/keys)")
    ap.add_argument("--resume", action="store_true", help="go on from the newest checkpoint in RUN_DIR/checkpoints")
    ap.add_argument("--shard", type=int, default=0, help="server.shards > 1: which shard this server is")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s ps %(levelname)s %(message)s", stream=sys.stdout)
    try:
        cfg = load_experiment(args.config)
        endpoint = args.endpoint or shard_endpoint(cfg.server.endpoint, args.shard)
        check_endpoint(cfg, endpoint)
        init = read_model_init(args.init or args.run_dir / FILE)
        keys = load_keys(cfg, args.keys, args.run_dir)
        check_shard(cfg, args.shard)
    except (ConfigError, OSError, ValueError) as err:  # KeyFileError is a ValueError naming the file
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(cfg.server.threads)
    raise_fd_limit()
    args.run_dir.mkdir(parents=True, exist_ok=True)
    return serve(cfg, init, args.run_dir, endpoint, args.resume, keys, args.shard)


def check_shard(cfg: ExperimentConfig, shard: int) -> None:
    if not 0 <= shard < cfg.server.shards:
        raise ConfigError("--shard", f"{shard} is outside 0..{cfg.server.shards - 1} (server.shards)")


def shard_files(cfg: ExperimentConfig, run_dir: Path, shard: int) -> tuple[Path, Path]:
    """(the folder of this server's own files, its endpoint file): the run folder and server.json, or with
    server.shards > 1 RUN/shard-S/ and RUN/server-S.json."""
    if cfg.server.shards == 1:
        return run_dir, run_dir / "server.json"
    return run_dir / f"shard-{shard}", run_dir / f"server-{shard}.json"


def raise_fd_limit() -> None:
    """Every connection holds a file descriptor: take all the system allows this process (the soft limit is
    often 1024, the hard one far more), so strangers' connections do not starve the workers' and the files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard if hard != resource.RLIM_INFINITY else 1 << 20, 1 << 20)
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def check_endpoint(cfg: ExperimentConfig, endpoint: str) -> None:
    """--endpoint too may not reach beyond this host without CURVE (ConfigError naming server.endpoint)."""
    try:
        cfg.server.check_exposure(endpoint)
    except ConfigError as err:
        raise ConfigError(f"server.{err.key}", err.message) from None


def load_keys(cfg: ExperimentConfig, folder: Path | None, run_dir: Path) -> ServerKeys | None:
    """The server's CURVE keys and allowlist when the run uses CURVE (server.auth), else None."""
    if not cfg.server.curve:
        return None
    return server_keys(folder or key_folder(cfg.server.keys, run_dir), cfg.workers)


def serve(
    cfg: ExperimentConfig,
    init: ModelInit,
    run_dir: Path,
    endpoint: str,
    resume: bool = False,
    keys: ServerKeys | None = None,
    shard: int = 0,
) -> int:
    own_dir, endpoint_file = shard_files(cfg, run_dir, shard)
    own_dir.mkdir(parents=True, exist_ok=True)
    chan = server_channel(cfg, keys)
    try:
        bound = chan.bind(endpoint)
    except Exception as err:
        print(f"error: cannot bind {endpoint}: {err}", file=sys.stderr)
        chan.close()
        return 1
    if not keys and not is_local(bound):
        log.warning("INSECURE: %s reaches beyond this host without CURVE (server.allow_insecure)", bound)
    try:
        server = ParameterServer(cfg, chan, init, run_dir=own_dir, resume=resume, shard=shard)
    except CheckpointMismatch as err:
        print(f"error: {err}", file=sys.stderr)
        chan.close()
        return 2
    signal.signal(signal.SIGTERM, lambda *_: server.signal_stop("terminated"))
    signal.signal(signal.SIGINT, lambda *_: server.signal_stop("interrupted"))
    _announce(server, endpoint_file, bound, keys is not None)
    try:
        summary = server.serve()
    finally:
        chan.close()
        if server.model.shared is not None:  # also when serving failed: the segment goes with the server
            server.model.shared.close()
    _log_end(summary)
    return 0 if summary.stop_reason in ("max_updates", "max_seconds") else 3


def _announce(server: ParameterServer, endpoint_file: Path, bound: str, curve: bool) -> None:
    """The bound endpoint into the run folder and on stdout (what the launcher waits for), and the log line."""
    cfg = server.cfg
    endpoint_file.write_text(json.dumps({"endpoint": bound}))
    print(f"TAUPS_SERVER_READY {bound}", flush=True)
    log.info("serving %d workers at %s (%s, optimizer %s, lr %g, %s)", cfg.workers, bound, _serves(server),
             cfg.optimizer.name, cfg.optimizer.lr,
             f"CURVE: keys of worker-0..{cfg.workers - 1} only" if curve else "no authentication")  # fmt: skip


def _serves(server: ParameterServer) -> str:
    m, n = server.model, server.cfg.server.shards
    if n == 1:
        return f"{m.numel} parameters"
    return f"shard {m.shard} of {n}: parameters [{m.lo}, {m.lo + m.numel}) of {m.layout.total}"


def _log_end(s: ServerSummary) -> None:
    log.info("stopped (%s) after %d updates in %.1fs: %d pushes received, %d applied, %d rejected",
             s.stop_reason, s.updates, s.wall_s, s.pushes_received, s.pushes_applied, s.pushes_rejected)  # fmt: skip


if __name__ == "__main__":
    freeze_imports()  # the imports are done: no collection need walk them again
    sys.exit(main())
