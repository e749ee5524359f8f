"""The same push + AMSGrad step + reply loop on torch.distributed.rpc (the reference point in
docs/performance.md, Machine facts).

Rank 0 holds the parameters and a fused torch.optim.Adam(amsgrad=True); ranks 1..W call
rpc_sync(push, grad) in a loop and receive the fresh parameters. A lock serialises the steps
(rpc runs calls on a thread pool), as a one-thread parameter server does.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import torch
import torch.distributed.rpc as rpc
import torch.multiprocessing as mp

_state: dict = {}


def _push(grad: torch.Tensor) -> torch.Tensor:
    with _state["lock"]:
        _state["x"].grad = grad
        _state["opt"].step()
        return _state["x"].detach().clone()


# TensorPipe picks shared memory ("shm" transport, "cma" cross-memory-attach channel) between processes on
# one host when it can; "tcp" pins it to the loopback socket taups uses, for a like-for-like transport.
TRANSPORTS = {"auto": {}, "tcp": {"_transports": ["uv"], "_channels": ["basic"]}}


def _run(
    rank: int, world: int, params: int, warmup_s: float, seconds: float, port: int, out, transport: str = "auto"
) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    opts = rpc.TensorPipeRpcBackendOptions(
        num_worker_threads=8, rpc_timeout=120, init_method=f"tcp://127.0.0.1:{port}", **TRANSPORTS[transport]
    )
    if rank == 0:
        x = torch.zeros(params)
        _state.update(x=x, opt=torch.optim.Adam([x], lr=1e-3, amsgrad=True, fused=True), lock=threading.Lock())
    rpc.init_rpc(f"r{rank}", rank=rank, world_size=world, rpc_backend_options=opts)
    if rank > 0:
        grad = torch.randn(params) * 1e-3
        t0 = time.perf_counter()
        lo, hi = t0 + warmup_s, t0 + warmup_s + seconds
        counted, first, last = 0, None, None
        while True:
            rpc.rpc_sync("r0", _push, args=(grad,))
            now = time.perf_counter()
            if now > hi:
                break
            if now >= lo:
                counted += 1
                first = first or now
                last = now
        out.put(counted / (last - first) if counted > 1 else 0.0)
    rpc.shutdown()


def measure(params: int, workers: int, warmup_s: float = 2.0, seconds: float = 5.0, transport: str = "auto") -> float:
    """Updates per second summed over workers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_run, args=(r, workers + 1, params, warmup_s, seconds, port, out, transport))
        for r in range(workers + 1)
    ]
    for p in procs:
        p.start()
    rates = [out.get(timeout=warmup_s + seconds + 120) for _ in range(workers)]
    for p in procs:
        p.join(timeout=60)
        if p.is_alive():
            p.kill()
    return sum(rates)
