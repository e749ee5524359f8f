"""The synchronous baseline: N workers as one torch.distributed group (gloo on CPU, nccl on CUDA).

    python -m sync --config X.yaml --run-dir D       (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and,
    torchrun --nproc_per_node N -m sync --config X.yaml --run-dir D    for CUDA, LOCAL_RANK from the env)

start: every rank builds the same Task (same seed: the same initial model) and rank i's own sampling,
       straggler and compressor streams, exactly as async rank i does; then the group forms and a
       first collective (every rank's pid, host, device) is the barrier that starts the clock.
loop:  grad = minibatch gradient at x ; simulated slowdown (a straggler makes everyone wait below)
       direction = combine(grad)        all-reduce mean, or all-gather of compressed pushes (collective.py)
       the same optimizer step on every rank (torch.optim on the flat parameter vector)
       rank 0 records the step as the server would (updates.csv, status.json, snapshots; sync_records.py)
until the step's collective says stop: rank 0 asks at run.max_updates steps or run.max_seconds, any rank
       on SIGTERM/SIGINT; everyone learns it in the same collective, applies that step and leaves.
end:   a checksum collective confirms every rank holds the same parameters; rank 0 writes final.snap
       and server_summary.json; every rank writes worker-<rank>.json.

Every blocking call is bounded: the rendezvous by server.connect_timeout_s, each collective by
server.reply_timeout_s (a rank waits that long for its peers before failing).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import random
import signal
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from protocol.config.loader import load_experiment
from protocol.config.schema import ExperimentConfig, OptimizerConfig
from protocol.errors import ConfigError
from sync.collective import STOP_REASONS, Collective, make_combiner
from sync.records import SyncRecorder
from worker.loop import rank_uplink
from worker.straggler import extra_sleep_s
from worker.tasks import Task, rank_seed

log = logging.getLogger("sync")
HELLO = struct.Struct("<q64s16s")  # pid, host, device: the first collective
NORMAL_ENDS = ("max_updates", "max_seconds")


@dataclass
class SyncStats:
    """worker-<rank>.json: the async worker's keys (wait_s = time in collectives, stragglers included)."""

    pushes: int = 0
    applied: int = 0
    dropped: int = 0
    rejected: int = 0
    compute_s: float = 0.0
    simulated_s: float = 0.0
    wait_s: float = 0.0
    apply_s: float = 0.0  # decoding and combining pushes, and the optimizer step
    stop_reason: str = ""


def torch_optimizer(params: torch.Tensor, o: OptimizerConfig) -> torch.optim.Optimizer:
    """The server's optimizers as torch.optim on the flat vector (tests pin the server's 'torch' forms to these).

    sgd momentum_mode 'shifted' (one buffer per worker) equals one buffer here: every worker adds to every
    step, and the mean of per-worker buffers is the buffer of the mean gradient (the update is linear).
    """
    if o.form != "torch":
        raise ValueError("sync mode runs the torch form only (the config check refuses optimizer.form paper)")
    if o.name in ("amsgrad", "adam"):
        return torch.optim.Adam(
            [params],
            lr=o.lr,
            betas=o.betas,
            eps=o.eps,
            weight_decay=o.weight_decay,
            amsgrad=o.name == "amsgrad",
            fused=True,
        )
    if o.name == "sgd":
        return torch.optim.SGD(
            [params], lr=o.lr, momentum=o.momentum, dampening=o.dampening, weight_decay=o.weight_decay
        )
    raise ValueError(f"unknown optimizer {o.name!r}")


class SyncWorker:
    def __init__(
        self,
        cfg: ExperimentConfig,
        rank: int,
        world: int,
        device: str | torch.device = "cpu",
        run_dir: Path | None = None,
        clock=time.monotonic,
        sleep=time.sleep,
    ):
        if world != cfg.workers:
            raise ConfigError("workers", f"is {cfg.workers}, but the process group has {world} ranks")
        self.cfg, self.rank, self.world = cfg, rank, world
        self.clock, self.sleep = clock, sleep
        self.task = Task(cfg, device=device)
        net = self.task.net
        self.sampler = self.task.sampler(rank, world)
        self._rng = random.Random(rank_seed(cfg.seed, rank))  # the straggler jitter stream of async rank i
        self.comm = Collective(world, net.params.device)  # gloo: host tensors; nccl: this rank's GPU
        self.combiner = make_combiner(cfg, rank, net.numel, self.comm, rank_uplink(cfg, rank, net), net.params.device)
        self.opt = torch_optimizer(net.params, cfg.optimizer)
        self.recorder = SyncRecorder(cfg, run_dir, net.numel, world) if rank == 0 else None
        self.stats = SyncStats()
        self.stop_request = ""  # set by a signal handler; the next step's collective carries it
        self.record_s = 0.0

    # -- main loop -----------------------------------------------------------------------------------
    def run(self) -> SyncStats:
        ranks = self._hello()
        t_start = self.clock()
        params = self.task.net.params
        step = 0
        while True:
            loss, samples = self._compute()
            stop_code = STOP_REASONS.index(self._stop_request(step, t_start))
            t0, in_collectives = time.perf_counter(), self.comm.seconds
            rnd = self.combiner.combine(self.task.net.grad, loss, samples, step, stop_code)
            params.grad = rnd.direction
            self.opt.step()
            step += 1
            self._account(t0, in_collectives)
            if self.recorder is not None:
                self._record(step, self.clock() - t_start, rnd)
            if rnd.stop_reason:
                break
        self.stats.stop_reason = rnd.stop_reason
        agree = self._ranks_agree()
        if self.recorder is not None:
            self.recorder.finish(params, rnd.stop_reason, ranks, self.time_split(), agree)
        return self.stats

    def _compute(self) -> tuple[float, int]:
        batch = self.sampler.next()
        t0 = self.clock()
        loss = self.task.gradient(batch)  # float(loss) waits for the device, backward included
        compute = self.clock() - t0
        self.stats.compute_s += compute
        extra = extra_sleep_s(self.cfg.worker, self.cfg.slowdown(self.rank), compute, self._rng.random())
        if extra > 0:
            self.stats.simulated_s += extra
            self.sleep(extra)
        return loss, len(batch)

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

    def _record(self, step: int, wall_s: float, rnd) -> None:
        t0 = time.perf_counter()
        assert self.recorder is not None
        self.recorder.record(step, wall_s, self.cfg.optimizer.lr, rnd)
        self.recorder.tick(wall_s, self.task.net.params)
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


# -- process start: device, rendezvous, signals ---------------------------------------------------------
def rank_device(cfg: ExperimentConfig, local_rank: int, world: int) -> torch.device:
    d = cfg.worker.device
    if d == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("worker.device", f"is {d}, but no CUDA device is visible")
    if d == "cuda":  # nccl needs one GPU per rank: rank i on this host takes cuda:LOCAL_RANK
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                "worker.device",
                f"local rank {local_rank} needs cuda:{local_rank}, this host has "
                f"{torch.cuda.device_count()} GPU(s) (nccl needs one GPU per rank)",
            )
        return torch.device("cuda", local_rank)
    if world > 1:
        raise ConfigError(
            "worker.device",
            f"{d} would put every rank on one GPU (nccl needs one GPU per rank); "
            "use cuda: rank i takes cuda:LOCAL_RANK",
        )
    return torch.device(d)


def join_group(rank: int, world: int, device: torch.device, cfg: ExperimentConfig) -> None:
    """Form the process group (gloo for CPU ranks, nccl for GPU ranks)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=cfg.server.reply_timeout_s)  # each collective waits this long for its peers
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    _stay_on_loopback(addr)
    if "TORCHELASTIC_RUN_ID" in os.environ:  # torchrun hosts the store itself: env:// finds it
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=timeout)
        return
    # Rank 0 binds the store's port on MASTER_ADDR only (TCPStore by itself listens on every interface)
    # and hands the socket to the store, which closes it with the group.
    store_timeout = timedelta(seconds=cfg.server.connect_timeout_s)
    if rank == 0:
        fd = socket.create_server((addr, port), backlog=max(128, world)).detach()
        store = dist.TCPStore(addr, port, world, True, timeout=store_timeout, master_listen_fd=fd)
    else:
        store = dist.TCPStore(addr, port, world, False, timeout=store_timeout)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)


def _stay_on_loopback(addr: str) -> None:
    """With a loopback master every rank is on this host: gloo and nccl sockets bind to loopback only."""
    try:
        loopback = ipaddress.ip_address(socket.gethostbyname(addr)).is_loopback
    except (OSError, ValueError):
        return
    name = loopback_interface() if loopback else None
    if name:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", name)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", name)


def loopback_interface() -> str | None:
    """The name of the network interface that holds 127.0.0.1 (lo on Linux, lo0 on macOS)."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address.startswith("127.") for a in addrs):
            return name
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sync", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--run-dir", type=Path, help="rank 0 writes the run's records here; every rank its worker json")
    args = ap.parse_args(argv)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout, format=f"%(asctime)s sync{rank} %(levelname)s %(message)s"
    )
    try:
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise ConfigError("MASTER_ADDR", "and MASTER_PORT must be set (the launcher or torchrun sets them)")
        cfg = load_experiment(args.config)
        device = rank_device(cfg, int(os.environ.get("LOCAL_RANK", rank)), world)
        torch.set_num_threads(cfg.worker.threads)
        if args.run_dir:
            args.run_dir.mkdir(parents=True, exist_ok=True)
        worker = SyncWorker(cfg, rank, world, device, run_dir=args.run_dir if rank == 0 else None)
    except (ConfigError, OSError) as err:
        print(f"error: rank {rank}: {err}", file=sys.stderr)
        return 2
    try:
        join_group(rank, world, device, cfg)
    except (RuntimeError, OSError) as err:
        print(
            f"error: rank {rank}: could not form the process group at {os.environ['MASTER_ADDR']}:"
            f"{os.environ['MASTER_PORT']}: {err}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    signal.signal(signal.SIGTERM, lambda *_: setattr(worker, "stop_request", "terminated"))
    signal.signal(signal.SIGINT, lambda *_: setattr(worker, "stop_request", "interrupted"))
    try:
        log.info("rank %d of %d on %s (%s)", rank, world, device, dist.get_backend())
        stats = worker.run()
    except RuntimeError as err:  # a peer died or stopped answering (gloo/nccl errors are RuntimeErrors)
        log.exception("the step failed")
        print(f"error: rank {rank}: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        dist.destroy_process_group()
    log.info(
        "stopped (%s) after %d steps: compute %.2fs, simulated %.2fs, collectives %.2fs, apply %.2fs",
        stats.stop_reason,
        stats.pushes,
        stats.compute_s,
        stats.simulated_s,
        stats.wait_s,
        stats.apply_s,
    )
    if args.run_dir:
        (args.run_dir / f"worker-{rank}.json").write_text(json.dumps(asdict(stats), indent=1))
    return exit_code(stats.stop_reason, worker.stop_request)


def exit_code(stop_reason: str, own_request: str) -> int:
    """0 for a normal end; a signalled rank exits as the signal asks; a rank stopped by a peer's signal, 3."""
    if stop_reason in NORMAL_ENDS:
        return 0
    if own_request:
        return {"terminated": 143, "interrupted": 130}.get(own_request, 3)
    return 3


if __name__ == "__main__":
    sys.exit(main())
