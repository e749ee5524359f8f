"""python -m ps --config X.yaml [--run-dir DIR] [--endpoint tcp://127.0.0.1:0]

Binds, prints `TAUPS_SERVER_READY <endpoint>` (and writes <run-dir>/server.json) once workers can
connect, serves until the run ends, and exits 0 when it ended normally (max_updates or max_seconds).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

import torch

from protocol.config.loader import load_experiment
from protocol.errors import ConfigError
from ps.outbox import server_channel
from ps.server import ParameterServer

log = logging.getLogger("ps")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ps", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="experiment YAML (the launcher passes the resolved one)")
    ap.add_argument("--run-dir", type=Path, help="folder for updates.csv, status.json, snapshots")
    ap.add_argument("--endpoint", help="override server.endpoint")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s ps %(levelname)s %(message)s", stream=sys.stdout)
    try:
        cfg = load_experiment(args.config)
    except (ConfigError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(cfg.server.threads)
    if args.run_dir:
        args.run_dir.mkdir(parents=True, exist_ok=True)
    chan = server_channel(cfg.server)
    try:
        endpoint = chan.bind(args.endpoint or cfg.server.endpoint)
    except Exception as err:
        print(f"error: cannot bind {args.endpoint or cfg.server.endpoint}: {err}", file=sys.stderr)
        chan.close()
        return 1
    server = ParameterServer(cfg, chan, run_dir=args.run_dir)
    signal.signal(signal.SIGTERM, lambda *_: server.signal_stop("terminated"))
    signal.signal(signal.SIGINT, lambda *_: server.signal_stop("interrupted"))
    if args.run_dir:
        (args.run_dir / "server.json").write_text(json.dumps({"endpoint": endpoint}))
    print(f"TAUPS_SERVER_READY {endpoint}", flush=True)
    log.info(
        "serving %d workers at %s (optimizer %s, lr %g)", cfg.workers, endpoint, cfg.optimizer.name, cfg.optimizer.lr
    )
    try:
        summary = server.serve()
    finally:
        chan.close()
    log.info(
        "stopped (%s) after %d updates in %.1fs: %d pushes received, %d applied, %d rejected",
        summary.stop_reason,
        summary.updates,
        summary.wall_s,
        summary.pushes_received,
        summary.pushes_applied,
        summary.pushes_rejected,
    )
    return 0 if summary.stop_reason in ("max_updates", "max_seconds") else 3


if __name__ == "__main__":
    sys.exit(main())
