"""Where a sync rank runs and how the group forms: the rank's device, the rendezvous, loopback pinning."""

from __future__ import annotations

import ipaddress
import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist

from protocol.config.schema import ExperimentConfig
from protocol.errors import ConfigError


def rank_device(cfg: ExperimentConfig, local_rank: int, world: int) -> torch.device:
    """The rank's device: worker.devices[local_rank mod len] if given, else worker.device (cuda: cuda:LOCAL_RANK)."""
    d = cfg.worker.devices[local_rank % len(cfg.worker.devices)] if cfg.worker.devices else cfg.worker.device
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
    if world > 1 and not cfg.worker.devices:
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
    _pin_interface(addr)
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


def _pin_interface(addr: str) -> None:
    """gloo and nccl sockets on the interface that reaches MASTER_ADDR: loopback when the master is this host
    (every rank is here), else the one holding this host's address on the route to it. Left to themselves they
    take the address the host name resolves to, often 127.0.x.x, which peers on other hosts cannot reach.
    GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME already set are kept."""
    try:
        ip = ipaddress.ip_address(socket.gethostbyname(addr))
    except (OSError, ValueError):
        return
    name = loopback_interface() if ip.is_loopback else route_interface(str(ip))
    if name:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", name)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", name)


def route_interface(addr: str) -> str | None:
    """The name of this host's interface on the route to IPv4 `addr` (a UDP connect sends nothing)."""
    import psutil

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((addr, 9))
            own = s.getsockname()[0]
    except OSError:
        return None
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == own for a in addrs):
            return name
    return None


def loopback_interface() -> str | None:
    """The name of the network interface that holds 127.0.0.1 (lo on Linux, lo0 on macOS)."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address.startswith("127.") for a in addrs):
            return name
    return None
