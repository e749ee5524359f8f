"""python -m worker --config X.yaml (--rank I | --ranks A-B) --server ENDPOINT [--run-dir DIR]

Joins the server, pushes gradients until the server says Stop, and exits 0. Exits 1 with a message
when the server cannot be reached, stops answering, or refuses this worker; 2 on a bad config; 143 on
SIGTERM. `--ranks A-B` hosts ranks A..B (inclusive) in this one process, each a full worker on its own
thread (worker/host.py; the launcher does this for worker.per_process > 1): log lines name the rank,
every rank writes its own worker-<rank>.json, and if one rank fails the others stop and the process
exits with the failed rank's code.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
from pathlib import Path

import torch

from protocol.config.loader import load_experiment
from protocol.config.schema import ExperimentConfig
from protocol.entry import freeze_imports
from protocol.errors import ConfigError
from protocol.runfolder.records import write_record
from protocol.wire.curve import WorkerKeys, key_folder, worker_keys
from worker.host import EXIT_CANCELLED, RankHost, RankResult, exit_code

log = logging.getLogger("worker")


def parse_ranks(text: str) -> list[int]:
    """'3' -> [3]; '0-33' -> [0, ..., 33] (inclusive)."""
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", text.strip())
    if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
        raise ConfigError("--ranks", f"must look like A-B with A <= B (or a single rank), got {text!r}")
    lo = int(m.group(1))
    return list(range(lo, int(m.group(2) or lo) + 1))


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(threadName)s %(levelname)s %(message)s"
    )
    try:
        cfg, ranks = _config_and_ranks(args)
        keys = load_keys(cfg, ranks, args.keys, args.run_dir)
        ready_run_dir(args.run_dir)
    except (ConfigError, OSError, ValueError) as err:  # KeyFileError is a ValueError naming the file
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(cfg.worker.threads)  # shared by every rank of this process
    host = RankHost(cfg, ranks, args.server, run_id=args.run_id, keys=keys)
    signal.signal(signal.SIGTERM, lambda *_: host.cancel())
    host.start()
    try:
        results = host.wait()
    except KeyboardInterrupt:  # by hand: Ctrl-C
        host.cancel()
        results = host.wait()
    report(results, args.run_dir)
    code = exit_code(results)
    if any(r.still_running for r in results):  # a rank stuck in a long step: do not wait for it at exit
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    host.close()
    return code


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m worker", description=__doc__.split("\n\n")[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--rank", type=int, help="the one rank this process runs")
    which.add_argument("--ranks", help="A-B: run ranks A..B (inclusive), one thread each")
    ap.add_argument("--config", required=True)
    ap.add_argument(
        "--server",
        required=True,
        action="append",
        help="server endpoint, e.g. tcp://127.0.0.1:5555; once per shard, in shard order (server.shards)",
    )
    ap.add_argument("--run-dir", type=Path, help="where to write worker-<rank>.json")
    ap.add_argument("--run-id", default="")
    ap.add_argument("--keys", type=Path, help="CURVE key folder (default: server.keys, else RUN_DIR/keys)")
    return ap.parse_args(argv)


def _config_and_ranks(args: argparse.Namespace) -> tuple[ExperimentConfig, list[int]]:
    """The config and the ranks this process runs; ConfigError for a rank outside the run."""
    ranks = [args.rank] if args.ranks is None else parse_ranks(args.ranks)
    cfg = load_experiment(args.config)
    if len(args.server) != cfg.server.shards:
        raise ConfigError("--server", f"given {len(args.server)} times; server.shards is {cfg.server.shards}")
    bad = [r for r in ranks if not 0 <= r < cfg.workers]
    if bad:
        raise ConfigError("--rank" if args.ranks is None else "--ranks", f"{bad[0]} is outside 0..{cfg.workers - 1}")
    return cfg, ranks


def ready_run_dir(run_dir: Path | None) -> None:
    """Make --run-dir (and its parents) now, so that a folder that cannot be written fails at the start, naming
    it, not after training when worker-<rank>.json is written (OSError)."""
    if run_dir is None:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise PermissionError(f"--run-dir {run_dir}: not writable")


def load_keys(
    cfg: ExperimentConfig, ranks: list[int], folder: Path | None, run_dir: Path | None
) -> dict[int, WorkerKeys] | None:
    """Each rank's CURVE key pair and the server's public key when the run uses CURVE (server.auth)."""
    if not cfg.server.curve:
        return None
    folder = folder or key_folder(cfg.server.keys, run_dir)
    return {rank: worker_keys(folder, rank) for rank in ranks}


def report(results: list[RankResult], run_dir: Path | None) -> None:
    """Each stopped rank's figures (and worker-<rank>.json), one line for the cancelled ranks, and the
    failures last, so that they end the log the launcher quotes when this process fails."""
    for r in results:
        if r.code == 0 and r.stats is not None:
            st = r.stats
            log.info(
                "rank %d stopped (%s): %d pushes, %d applied, %d dropped, %d rejected; compute %.2fs, "
                "simulated %.2fs, waiting %.2fs",
                r.rank,
                st.stop_reason,
                st.pushes,
                st.applied,
                st.dropped,
                st.rejected,
                st.compute_s,
                st.simulated_s,
                st.wait_s,
            )
            if run_dir:
                write_record(run_dir / f"worker-{r.rank}.json", st)
    cancelled = sorted(r.rank for r in results if r.code == EXIT_CANCELLED)
    if cancelled:
        log.info("ranks %s were asked to stop and left", spans(cancelled))
    for r in results:
        if r.code not in (0, EXIT_CANCELLED):
            print(f"error: worker {r.rank}: {r.error}", file=sys.stderr, flush=True)


def spans(ranks: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    out, lo = [], None
    for i, r in enumerate(ranks):
        lo = r if lo is None else lo
        if i + 1 == len(ranks) or ranks[i + 1] != r + 1:
            out.append(str(r) if lo == r else f"{lo}-{r}")
            lo = None
    return ", ".join(out)


if __name__ == "__main__":
    freeze_imports()  # the imports are done: no collection need walk them again
    sys.exit(main())
