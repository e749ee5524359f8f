"""How many server shards a model needs: a throughput model of the asynchronous parameter server with dense
pushes and replies (docs/performance.md, Choosing the number of shards). Pure arithmetic: no clocks, no
sockets; bench/shard_push.py calibrates it on this machine and checks it against its runs.

One update = one worker's push of P float32 gradients, every shard applying its P/S of them (AMSGrad, 36
bytes of memory traffic per parameter) and sending its P/S parameters back. Four resources bound the updates
per second X (each bound is an upper limit; X is their minimum):
  shard loop   X <= S / (P * apply_s + 8P * copy_s) a shard's loop takes every update in turn: copies its part of the
                                                   push in, applies it, copies its parameters out for the reply
  shard link   X <= S * link_Bps / (4 P)           a shard host's network link (each direction) carries 4P/S per update
  workers      X <= N / (compute_s + 2 * 4P / link_Bps + P * apply_s / S)
                                                   each worker is a closed loop: compute, push, wait for the slowest
                                                   shard's apply, receive
  cores        X <= cores / (compute_s + P * apply_s + 2 * 4P * cpu_per_byte_s)
                                                   only when every process shares one host's cores: sharding spreads
                                                   the work over processes but does not shrink it
apply_s is seconds per parameter of the AMSGrad step (36 bytes / memory bandwidth); copy_s is seconds per byte
copied in memory (read + write: 2 / copy bandwidth in B/s); link_Bps is bytes per
second per direction between two processes (a NIC, or loopback TCP on one host); cpu_per_byte_s is the CPU
time one byte costs to move end to end (both sides' copies; 1 / link_Bps on loopback, where copying is the
link).
"""

from __future__ import annotations

from dataclasses import dataclass

AMSGRAD_BYTES_PER_PARAM = 36  # read g, x, m, v, v_hat; write x, m, v, v_hat (float32)
BYTES_PER_PARAM = 4  # float32 on the wire, both ways


@dataclass(frozen=True)
class Costs:
    """The per-unit costs of one host kind.

    apply_s: seconds per parameter of one AMSGrad step on one core (36 bytes / memory bandwidth in B/s).
    link_Bps: bytes per second, each direction, between a worker and a shard.
    cpu_per_byte_s: CPU seconds to move one byte from one process to another (0: a NIC's DMA does it).
    compute_s: a worker's seconds per gradient (forward + backward).
    cores: cores shared by every process, or 0 when each process has its own (shards and workers on many hosts).
    copy_s: seconds per byte of a memory copy inside a shard's loop (2 / copy bandwidth counting read + write).
    """

    apply_s: float
    link_Bps: float
    cpu_per_byte_s: float
    compute_s: float = 0.0
    cores: int = 0
    copy_s: float = 0.0


def bounds(params: int, workers: int, shards: int, c: Costs) -> dict[str, float]:
    """Each resource's upper bound on updates/s (module docstring) for P = params, N = workers, S = shards."""
    p, wire = float(params), BYTES_PER_PARAM * float(params)
    out = {
        "shard loop": shards / (p * c.apply_s + 2 * wire * c.copy_s),
        "shard link": shards * c.link_Bps / wire,
        "workers": workers / (c.compute_s + 2 * wire / c.link_Bps + p * c.apply_s / shards),
    }
    if c.cores:
        out["cores"] = c.cores / (c.compute_s + p * c.apply_s + 2 * wire * (c.cpu_per_byte_s + c.copy_s))
    return out


def predict(params: int, workers: int, shards: int, c: Costs) -> tuple[float, str]:
    """Predicted updates/s and the name of the resource that binds."""
    b = bounds(params, workers, shards, c)
    name = min(b, key=lambda k: b[k])
    return b[name], name


def shards_needed(params: int, workers: int, c: Costs, max_shards: int = 1024, within: float = 0.95) -> int:
    """The fewest shards whose predicted updates/s is within `within` of what max_shards would give."""
    best = predict(params, workers, max_shards, c)[0]
    return next(s for s in range(1, max_shards + 1) if predict(params, workers, s, c)[0] >= within * best)


def loopback_costs(
    step_s: float, step_params: int, round_trip_s: float, round_trip_bytes: int, copy_gbs: float, cores: int
) -> Costs:
    """This host's costs from three measurements: an isolated AMSGrad step of step_params parameters, the bare
    ZeroMQ round trip of round_trip_bytes each way between two processes, and the one-thread copy bandwidth in
    GB/s counting bytes read + written (bench/machine.py)."""
    link = 2 * round_trip_bytes / round_trip_s  # bytes per second each way, copying included
    return Costs(apply_s=step_s / step_params, link_Bps=link, cpu_per_byte_s=1.0 / link, cores=cores,
                 copy_s=2 / (copy_gbs * 1e9))  # fmt: skip


def network_costs(mem_gbs: float, link_gbit: float, compute_s: float) -> Costs:
    """Hosts of their own (no shared cores) with `mem_gbs` GB/s of one core's memory bandwidth and a
    `link_gbit` Gb/s network link each; workers spend compute_s per gradient."""
    return Costs(
        apply_s=AMSGRAD_BYTES_PER_PARAM / (mem_gbs * 1e9),
        link_Bps=link_gbit * 1e9 / 8,
        cpu_per_byte_s=0.0,
        compute_s=compute_s,
        copy_s=2 / (mem_gbs * 1e9),
    )
