"""The synchronous baseline: N workers as one torch.distributed group (gloo on CPU, nccl on CUDA).

    python -m sync --config X.yaml --run-dir D       (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and,
    torchrun --nproc_per_node N -m sync --config X.yaml --run-dir D    for CUDA, LOCAL_RANK from the env)

start: every rank builds the same Task (same seed: the same initial model) and rank i's own sampling,
       straggler and compressor streams, exactly as async rank i does; then the group forms and a
       first collective (every rank's pid, host, device) is the barrier that starts the clock.
loop:  grad = minibatch gradient at x ; simulated slowdown (a straggler makes everyone wait below)
       direction = combine(grad)        all-reduce mean, or all-gather of compressed pushes (collective.py)
       the same optimizer step on every rank (the server's optimizers, ps/optim.py, on the flat vector)
       rank 0 records the step as the server would (updates.csv, status.json, snapshots; sync/records.py)
until the step's collective says stop: rank 0 asks at run.max_updates steps or run.max_seconds, any rank
       on SIGTERM/SIGINT; everyone learns it in the same collective, applies that step and leaves.
end:   a checksum collective confirms every rank holds the same parameters; rank 0 writes final.safetensors
       and server_summary.json; every rank writes worker-<rank>.json.

Every blocking call is bounded: the rendezvous by server.connect_timeout_s, each collective by
server.reply_timeout_s (a rank waits that long for its peers before failing).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import torch

from protocol.config.schema import ExperimentConfig
from protocol.errors import ConfigError
from protocol.runfolder.records import WorkerReport
from ps.optim import Optimizer, make_optimizer
from ps.schedule import lr_factor
from sync.collective import STOP_REASONS, Collective, Round, make_combiner
from sync.records import SyncRecorder
from worker.loop import rank_uplink
from worker.step import Stepper
from worker.tasks import Task

log = logging.getLogger("sync")
HELLO = struct.Struct("<q64s16s")  # pid, host, device: the first collective


class SyncWorker:
    def __init__(
        self,
        cfg: ExperimentConfig,
        rank: int,
        world: int,
        device: str | torch.device = "cpu",
        run_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if world != cfg.workers:
            raise ConfigError("workers", f"is {cfg.workers}, but the process group has {world} ranks")
        self.cfg, self.rank, self.world = cfg, rank, world
        self.clock, self.sleep = clock, sleep
        self.task = Task(cfg, device=device)
        net = self.task.net
        self.stats = WorkerReport()
        self.step = Stepper(cfg, rank, self.task, self.stats, clock, sleep)  # async rank i's streams
        self.comm = Collective(world, net.params.device)  # gloo: host tensors; nccl: this rank's GPU
        self.combiner = make_combiner(cfg, rank, net.numel, self.comm, rank_uplink(cfg, rank, net), net.params.device)
        self.opt: Optimizer = make_optimizer(net.params, cfg.optimizer)  # the server's optimizer, on every rank
        self.recorder = SyncRecorder(cfg, run_dir, net.numel, world) if rank == 0 else None
        self.stop_request = ""  # set by a signal handler; the next step's collective carries it
        self.record_s = 0.0

    # -- main loop -----------------------------------------------------------------------------------
    def run(self) -> WorkerReport:
        ranks = self._hello()
        t_start = self.clock()
        params = self.task.net.params
        step = 0
        while True:
            loss, samples = self.step.gradient()
            stop_code = STOP_REASONS.index(self._stop_request(step, t_start))
            t0, in_collectives = time.perf_counter(), self.comm.seconds
            rnd = self.combiner.combine(self.task.net.grad, loss, samples, step, stop_code)
            self.opt.step(rnd.direction, self._lr(step))
            step += 1
            self._account(t0, in_collectives)
            if self.recorder is not None:
                self._record(step, self.clock() - t_start, rnd)
            if rnd.stop_reason:
                break
        self.stats.stop_reason = rnd.stop_reason
        agree = self._ranks_agree()
        if self.recorder is not None:
            self.recorder.finish(params, rnd.stop_reason, ranks, self.time_split(), agree, self.task.net.buffers())
        return self.stats

    def _lr(self, step: int) -> float:
        """lr0 of optimizer.schedule at `step` steps done (ps/schedule.py), as the server computes it."""
        opt = self.cfg.optimizer
        return opt.lr * lr_factor(opt.schedule, step, self.cfg.run.max_updates)

    def _stop_request(self, step: int, t_start: float) -> str:
        """What this rank asks for in this step's collective: '' (go on) or why the run should end after it."""
        if self.stop_request:
            return self.stop_request
        if self.rank == 0 and step + 1 >= self.cfg.run.max_updates:
            return "max_updates"
        if self.rank == 0 and self.clock() - t_start >= self.cfg.run.max_seconds:
            return "max_seconds"
        return ""

    def _account(self, t0: float, in_collectives_before: float) -> None:
        waited = self.comm.seconds - in_collectives_before
        self.stats.wait_s += waited
        self.stats.apply_s += time.perf_counter() - t0 - waited
        self.stats.pushes += 1
        self.stats.applied += 1

    def _record(self, step: int, wall_s: float, rnd: Round) -> None:
        t0 = time.perf_counter()
        assert self.recorder is not None
        self.recorder.record(step, wall_s, self._lr(step - 1), rnd)
        self.recorder.tick(wall_s, self.task.net.params, self.task.net.buffers())
        self.record_s += time.perf_counter() - t0

    def time_split(self) -> dict:
        s = self.stats
        return {
            "compute_s": s.compute_s,
            "simulated_s": s.simulated_s,
            "communicate_s": s.wait_s,
            "apply_s": s.apply_s,
            "record_s": self.record_s,
        }

    # -- the group's first and last collectives ------------------------------------------------------
    def _hello(self) -> list[dict]:
        """Every rank's pid, host and device; completing it is the barrier that starts training."""
        device = str(self.task.net.params.device)
        blob = HELLO.pack(os.getpid(), socket.gethostname().encode()[:64], device.encode()[:16])
        rows = self.comm.all_gather(torch.frombuffer(bytearray(blob), dtype=torch.uint8))
        out = []
        for row in rows:
            pid, host, dev = HELLO.unpack(row.numpy().tobytes())
            out.append(
                {
                    "pid": pid,
                    "host": host.rstrip(b"\0").decode(errors="replace"),
                    "device": dev.rstrip(b"\0").decode(errors="replace"),
                }
            )
        return out

    def _ranks_agree(self) -> bool:
        """Whether every rank ends with bitwise the same parameters (an int64 sum of their bit patterns)."""
        bits = self.task.net.params.detach().view(torch.int32).sum(dtype=torch.int64).reshape(1)
        sums = self.comm.all_gather(bits)
        agree = bool((sums == sums[0]).all())
        if not agree:
            log.error("ranks ended with different parameters (checksums %s)", sums.reshape(-1).tolist())
        return agree
