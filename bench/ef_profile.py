"""Where an EF21 push's time goes, piece by piece, in one process (one thread, no sockets).

python -m bench.ef_profile [--params 4194304] [--repeats 10]

Worker: Top-K 1% compression + encoding of c = grad - g_i as EF21's uplink does it (one blocked pass
over grad and g_i, TopK.compress_difference), the two-pass form it replaced (the difference written
out, then compressed) for comparison, and decoding what was sent into g_i (commit; a worker does it
while the reply is awaited). Server: staging an EF21 delta (decode), applying it (index_add into g),
settling it (index_add into g_i, after the reply), staging a dense push (validation), and the AMSGrad
step both feed. Each figure is the median of `repeats` calls, with an AMSGrad step over the same size
in between so caches are as cold as in a server; one copy of the vector is the yardstick.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from protocol.config.schema import CompressionConfig, OptimizerConfig
from protocol.wire.encoding import encode_dense
from protocol.wire.layout import Layout
from protocol.wire.messages import Push
from ps.aggregate import make_aggregator
from ps.optim import make_optimizer
from worker.compressors import TopK, make_compressor
from worker.ef import add_payload


def _push(rank: int, seq: int, kind: str, p) -> Push:
    return Push(
        rank=rank,
        seq=seq,
        base_version=0,
        kind=kind,
        encoding=p.encoding,
        numel=p.numel,
        loss=0.0,
        samples=1,
        meta=p.meta,
        values=p.values,
        indices=p.indices,
        signs=p.signs,
    )


def profile(params: int, repeats: int = 10, values: str = "float32", indices: str = "int32") -> dict:
    """Median ms of each piece at `params` floats."""
    torch.set_num_threads(1)
    cfg = CompressionConfig(method="ef21", compressor="topk", ratio=0.01, values=values, indices=indices)
    comp = make_compressor(cfg, Layout.from_shapes([("w", (params,))]), 0)
    assert isinstance(comp, TopK)
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(params, generator=gen) for _ in range(4)]
    g_i, diff, scratch = torch.zeros(params), torch.empty(params), torch.empty(params)
    x = torch.zeros(params)
    opt = make_optimizer(x, OptimizerConfig())
    ef, dense = make_aggregator(True, params, 10**9), make_aggregator(False, params, 10**9)
    ef.apply(0, ef.stage(_push(0, 0, "reset", encode_dense(grads[0]))))
    times: dict[str, list[float]] = {}

    def timed(name, fn):
        opt.step(grads[0], 1e-3)  # evict: the server's step streams 36 bytes per parameter
        t0 = time.perf_counter()
        out = fn()
        times.setdefault(name, []).append(time.perf_counter() - t0)
        return out

    for i in range(repeats):
        grad = grads[(i + 1) % len(grads)]
        timed("copy (yardstick)", lambda grad=grad: diff.copy_(grad))
        p = timed("worker: C(grad - g_i), one blocked pass", lambda grad=grad: comp.compress_difference(grad, g_i))
        timed("worker: c = grad - g_i (two-pass form)", lambda grad=grad: torch.sub(grad, g_i, out=diff))
        timed("worker: Top-K 1% + encode of c", lambda: comp.compress(diff))
        timed("worker: commit (decode into g_i)", lambda p=p: add_payload(g_i, p, scratch))
        staged = timed("server: EF21 stage (decode)", lambda p=p, i=i: ef.stage(_push(0, i + 1, "delta", p)))
        timed("server: EF21 apply (index_add into g)", lambda staged=staged: ef.apply(0, staged))
        timed("server: EF21 settle (index_add into g_i)", ef.settle)  # after the reply, in the server
        timed(
            "server: dense stage (validate)",
            lambda grad=grad, i=i: dense.stage(_push(0, i, "grad", encode_dense(grad))),
        )
        timed("server: AMSGrad step", lambda grad=grad: opt.step(grad, 1e-3))
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=int, default=4194304)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    for name, ms in profile(args.params, args.repeats).items():
        print(f"{name:<36} {ms:7.2f} ms")


if __name__ == "__main__":
    main()
