"""python -m sync --config X.yaml --run-dir D: one rank of the synchronous baseline.

    python -m sync --config X.yaml --run-dir D       (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and,
    torchrun --nproc_per_node N -m sync --config X.yaml --run-dir D    for CUDA, LOCAL_RANK from the env)

The loop is sync/loop.py. Exit codes: 0 a normal end, 2 a bad config or environment, 1 the group could not
form or a step failed (a peer died), 143/130 on SIGTERM/SIGINT, 3 stopped by a peer's signal.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from protocol.config.loader import load_experiment
from protocol.config.schema import ExperimentConfig
from protocol.entry import freeze_imports
from protocol.errors import ConfigError
from protocol.runfolder.records import WorkerReport, write_record
from sync.group import join_group, rank_device
from sync.loop import SyncWorker

log = logging.getLogger("sync")
NORMAL_ENDS = ("max_updates", "max_seconds")


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format=f"%(asctime)s sync{rank} %(levelname)s %(message)s"
    )
    try:
        cfg, device, worker = _prepare(args.config, args.run_dir, rank, world)
    except (ConfigError, OSError) as err:
        print(f"error: rank {rank}: {err}", file=sys.stderr)
        return 2
    if not _join(rank, world, device, cfg):
        return 1
    signal.signal(signal.SIGTERM, lambda *_: setattr(worker, "stop_request", "terminated"))
    signal.signal(signal.SIGINT, lambda *_: setattr(worker, "stop_request", "interrupted"))
    stats = _train(worker, rank, world, device)
    if stats is None:
        return 1
    _log_end(stats)
    if args.run_dir:
        write_record(args.run_dir / f"worker-{rank}.json", stats)
    return exit_code(stats.stop_reason, worker.stop_request)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m sync", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--run-dir", type=Path, help="rank 0 writes the run's records here; every rank its worker json")
    return ap.parse_args(argv)


def _prepare(
    config: str, run_dir: Path | None, rank: int, world: int
) -> tuple[ExperimentConfig, torch.device, SyncWorker]:
    """The config, this rank's device and its SyncWorker (not yet in the group). Raises ConfigError or OSError."""
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise ConfigError("MASTER_ADDR", "and MASTER_PORT must be set (the launcher or torchrun sets them)")
    cfg = load_experiment(config)
    device = rank_device(cfg, int(os.environ.get("LOCAL_RANK", rank)), world)
    torch.set_num_threads(cfg.worker.threads)
    if run_dir:
        run_dir.mkdir(parents=True, exist_ok=True)
    return cfg, device, SyncWorker(cfg, rank, world, device, run_dir=run_dir if rank == 0 else None)


def _join(rank: int, world: int, device: torch.device, cfg: ExperimentConfig) -> bool:
    """Form the process group; False (said on stderr) if it cannot be formed."""
    try:
        join_group(rank, world, device, cfg)
    except (RuntimeError, OSError) as err:
        print(
            f"error: rank {rank}: could not form the process group at {os.environ['MASTER_ADDR']}:"
            f"{os.environ['MASTER_PORT']}: {err}",
            file=sys.stderr,
            flush=True,
        )
        return False
    return True


def _train(worker: SyncWorker, rank: int, world: int, device: torch.device) -> WorkerReport | None:
    """The rank's steps, then the process group destroyed; None (said on stderr) when a step failed."""
    try:
        log.info("rank %d of %d on %s (%s)", rank, world, device, dist.get_backend())
        return worker.run()
    except RuntimeError as err:  # a peer died or stopped answering (gloo/nccl errors are RuntimeErrors)
        log.exception("the step failed")
        print(f"error: rank {rank}: {err}", file=sys.stderr, flush=True)
        return None
    finally:
        dist.destroy_process_group()


def _log_end(stats: WorkerReport) -> None:
    log.info(
        "stopped (%s) after %d steps: compute %.2fs, simulated %.2fs, collectives %.2fs, apply %.2fs",
        stats.stop_reason,
        stats.pushes,
        stats.compute_s,
        stats.simulated_s,
        stats.wait_s,
        stats.apply_s,
    )


def exit_code(stop_reason: str, own_request: str) -> int:
    """0 for a normal end; a signalled rank exits as the signal asks; a rank stopped by a peer's signal, 3."""
    if stop_reason in NORMAL_ENDS:
        return 0
    if own_request:
        return {"terminated": 143, "interrupted": 130}.get(own_request, 3)
    return 3


if __name__ == "__main__":
    freeze_imports()  # the imports are done: no collection need walk them again
    sys.exit(main())
