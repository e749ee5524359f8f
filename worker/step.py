"""The compute-and-simulate step both modes share: one minibatch gradient, then the simulated straggler time.

The asynchronous worker (worker/loop.py) and the synchronous baseline (sync/loop.py) both take their
steps here, so a rank's sampling stream, its straggler jitter stream and the meaning of
`worker.slowdown`, `worker.jitter` and `worker.compute_s` are the same in both modes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import torch

from protocol.config.schema import ExperimentConfig
from protocol.runfolder.records import WorkerReport
from worker.straggler import extra_sleep_s
from worker.tasks import Task, rank_seed
from worker.tasks.loader import batch_size_of

RANDOM_LAYERS_STREAM = 2  # rank_seed stream of dropout and augmentation (0: sampling, 1: compressor)


class Stepper:
    def __init__(
        self,
        cfg: ExperimentConfig,
        rank: int,
        task: Task,
        stats: WorkerReport,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.cfg, self.rank, self.task, self.stats = cfg, rank, task, stats
        self.clock, self.sleep = clock, sleep
        self.batches = task.batches(rank, cfg.workers)
        self._rng = random.Random(rank_seed(cfg.seed, rank))  # the straggler jitter stream
        # torch's global generator was seeded with the experiment seed to build the same initial model in every
        # process; from here on it draws this rank's dropout masks and augmentations, so ranks draw different ones
        torch.manual_seed(rank_seed(cfg.seed, rank, stream=RANDOM_LAYERS_STREAM))

    def gradient(self, host_copy: torch.Tensor | None = None) -> tuple[float, int]:
        """(minibatch loss, samples): the gradient lands in task.net.grad (and, given one, a host copy of it,
        taken inside the timed compute); then the step sleeps as long as the rank's slowdown says."""
        batch = next(self.batches)
        t0 = self.clock()
        loss = self.task.gradient(batch)  # float(loss) waits for the device, backward included
        if host_copy is not None:
            host_copy.copy_(self.task.net.grad)  # synchronous device -> host copy
        compute = self.clock() - t0
        self.stats.compute_s += compute
        extra = extra_sleep_s(self.cfg.worker, self.cfg.slowdown(self.rank), compute, self._rng.random())
        if extra > 0:
            self.stats.simulated_s += extra
            self.sleep(extra)
        return loss, batch_size_of(batch)
