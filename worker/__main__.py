"""python -m worker --config X.yaml --rank I --server ENDPOINT [--run-dir DIR]

Joins the server, pushes gradients until the server says Stop, and exits 0. Exits 1 with a message
when the server cannot be reached, stops answering, or refuses this worker; 2 on a bad config.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from protocol.channel import Channel
from protocol.config import load
from protocol.errors import ConfigError
from worker.loop import WorkerError, WorkerLoop

log = logging.getLogger("worker")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m worker", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--server", required=True, help="server endpoint, e.g. tcp://127.0.0.1:5555")
    ap.add_argument("--run-dir", type=Path, help="where to write worker-<rank>.json")
    ap.add_argument("--run-id", default="")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format=f"%(asctime)s worker{args.rank} %(levelname)s %(message)s")
    try:
        cfg = load(args.config)
        if not 0 <= args.rank < cfg.workers:
            raise ConfigError("--rank", f"{args.rank} is outside 0..{cfg.workers - 1}")
    except (ConfigError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(cfg.worker.threads)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    chan = Channel("dealer", chunk_bytes=cfg.server.chunk_bytes, max_message_bytes=cfg.server.max_message_bytes,
                   send_timeout_s=cfg.server.send_timeout_s)
    chan.connect(args.server)
    try:
        loop = WorkerLoop(cfg, args.rank, chan, run_id=args.run_id)
        stats = loop.run()
    except WorkerError as err:
        print(f"error: worker {args.rank}: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        chan.close()
    log.info("stopped (%s): %d pushes, %d applied, %d dropped, %d rejected; compute %.2fs, simulated %.2fs, "
             "waiting %.2fs", stats.stop_reason, stats.pushes, stats.applied, stats.dropped, stats.rejected,
             stats.compute_s, stats.simulated_s, stats.wait_s)
    if args.run_dir:
        out = {k: v for k, v in asdict(stats).items() if k != "staleness"}
        (args.run_dir / f"worker-{args.rank}.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
