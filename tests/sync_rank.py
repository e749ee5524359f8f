"""Test helper, run as a script: one rank of a sync run, writing its final parameters for the test to compare.

    RANK=i WORLD_SIZE=N MASTER_ADDR=127.0.0.1 MASTER_PORT=P python tests/sync_rank.py CONFIG OUT_DIR

Forms the group as `python -m sync` does (sync.group.join_group), runs the SyncWorker (rank 0
records into OUT_DIR/run), and writes OUT_DIR/rank<i>.safetensors (protocol/runfolder/snapshot.py, no pickle).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from protocol.config.loader import load_experiment  # noqa: E402
from protocol.runfolder.snapshot import write_snapshot  # noqa: E402
from sync.group import join_group  # noqa: E402
from sync.loop import SyncWorker  # noqa: E402


def main() -> int:
    config, out = sys.argv[1], Path(sys.argv[2])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    cfg = load_experiment(config)
    (out / "run").mkdir(parents=True, exist_ok=True)
    worker = SyncWorker(cfg, rank, world, "cpu", run_dir=out / "run" if rank == 0 else None)
    join_group(rank, world, torch.device("cpu"), cfg)
    try:
        stats = worker.run()
    finally:
        dist.destroy_process_group()
    write_snapshot(out / f"rank{rank}.safetensors", worker.task.net.params, {"steps": stats.pushes})
    return 0


if __name__ == "__main__":
    sys.exit(main())
