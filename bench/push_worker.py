"""A benchmark worker: joins a taups server and pushes as fast as the server answers, counting round
trips inside a measurement window. No model: a few preallocated random gradients, cycled, stand in for
the model's gradient (a fixed one would let g_i converge to it and leave EF21 nothing to compress).
With --shm the worker reads the parameters from the server's shared-memory segment, as a worker on the
server's host does (worker/shm_params.py): its pushes ask for version-only replies. With --shm-push too, a
dense float32 push leaves its values in the rank's push slot and travels as a header (values_in_shm), as a
worker on the server's host does (docs/design.md, Shared-memory pushes). With --grad-in-slot as well, the
gradient is taken to be computed straight into the slot, as a CPU worker's backward does there
(worker/shm_params.py): the slot holds the first stand-in gradient, and each push only invalidates and
publishes it (no copy of 4P bytes); the server's work does not depend on the values.
Everything else a real worker does per push is done: the error-feedback state update and compression
(uplink.prepare), the push/reply exchange, and decoding what was sent into g_i (uplink.sent while the
reply is awaited, uplink.commit after it).

python -m bench.push_worker --server EP --rank R --params P --warmup-s W --seconds S --out FILE [--shm [--shm-push]]
                            [--method none|naive|ef14|ef21|ef21-sgdm|ef21-sgd2m --compressor topk
                             --ratio 0.01 --values float32 --indices auto --selection exact]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

from protocol.config.schema import CompressionConfig
from protocol.wire import shm
from protocol.wire.channel import Channel
from protocol.wire.curve import worker_keys
from protocol.wire.encoding import Payload
from protocol.wire.layout import Layout
from protocol.wire.messages import Hello, Message, Pull, Push, Reply, Stop, Welcome
from worker.compressors import make_compressor
from worker.ef import Uplink, make_uplink

GRADIENTS = 4  # distinct preallocated gradients, cycled
REPLY_WAIT_S = 60.0  # then the server is taken to be gone (bench/push_run.py waits for a worker 120 s past its window)


def compression_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--method", default="none")
    ap.add_argument("--compressor", default="identity")
    ap.add_argument("--ratio", type=float, default=0.01)
    ap.add_argument("--values", default="float32")
    ap.add_argument("--indices", default="auto")
    ap.add_argument("--selection", default="exact")


def compression_config(args) -> CompressionConfig:
    cfg = CompressionConfig(
        method=args.method,
        compressor=args.compressor,
        ratio=args.ratio,
        values=args.values,
        indices=args.indices,
        selection=args.selection,
    )
    cfg.check()
    return cfg


def pusher(args: argparse.Namespace) -> tuple[Uplink, list[torch.Tensor]]:
    """A bench worker's error-feedback uplink (the compression flags) and its preallocated gradients."""
    comp = compression_config(args)
    layout = Layout.from_shapes([("w", (args.params,))])
    compressor = make_compressor(comp, layout, seed=args.rank) if comp.method != "none" else None
    uplink = make_uplink(comp, args.params, compressor, torch.device("cpu"))
    gen = torch.Generator().manual_seed(args.rank)
    return uplink, [torch.randn(args.params, generator=gen) * 1e-3 for _ in range(GRADIENTS)]


def main() -> None:
    args = _parse_args()
    torch.set_num_threads(1)
    uplink, grads = pusher(args)
    params = torch.zeros(args.params)
    keys = worker_keys(Path(args.keys), args.rank) if args.keys else None
    chan = Channel("dealer", curve=keys)
    chan.connect(args.server)
    alloc = lambda cls, spec: params  # every reply lands in the same buffer
    welcome = _join(chan, args.rank, uplink.uplink, Layout.from_shapes([("w", (args.params,))]), alloc)
    reader = shm.SegmentReader(shm.Advert.from_wire(welcome.settings.get("shm")), args.params) if args.shm else None
    if args.shm_push:
        args.slot = shm.PushSlotWriter(
            shm.Advert.from_wire(welcome.settings.get("shm_push"), args.rank), args.rank, args.params
        )
        if args.grad_in_slot:
            args.slot.values[:] = grads[0].numpy()
    result = push_loop(chan, uplink, grads, args, welcome.next_seq, welcome.version, alloc, reader, params)
    chan.close()
    with open(args.out, "w") as f:
        json.dump({"rank": args.rank, **result}, f)


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--params", type=int, required=True)
    ap.add_argument("--warmup-s", type=float, default=2.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--keys", default="", help="CURVE key folder (the server runs with server.auth: curve)")
    ap.add_argument("--shm", action="store_true", help="parameters from the server's shared-memory segment")
    ap.add_argument("--shm-push", action="store_true", help="dense pushes through the rank's push slot (with --shm)")
    ap.add_argument("--grad-in-slot", action="store_true", help="the gradient computed in the slot (with --shm-push)")
    compression_args(ap)
    return ap.parse_args()


def _join(chan: Channel, rank: int, uplink: str, layout: Layout, alloc: Callable) -> Welcome:
    """Hello, then wait for the Welcome (heartbeats before it are passed over)."""
    hello = Hello(
        rank=rank, pid=0, host="bench", device="cpu", run_id="bench", uplink=uplink, signature=layout.signature()
    )
    chan.send(hello)
    while True:
        msg = chan.recv(120, alloc=alloc).msg
        if isinstance(msg, Welcome):
            return msg


def push_loop(
    chan: Channel, uplink, grads: list, args, seq: int, version: int, alloc, reader=None, params=None
) -> dict:
    """Push until the window ends; counts, bytes and the worker's time split inside the window. With a
    shared-memory `reader`, pushes ask for version-only replies and the parameters are read into `params`."""
    lo = time.perf_counter() + args.warmup_s  # the measurement window [lo, hi]
    hi = lo + args.seconds
    counted, first, last, pushed_bytes, cpu_first, cpu_last = 0, None, None, 0, 0.0, 0.0
    split = {"prepare_s": 0.0, "exchange_s": 0.0, "commit_s": 0.0}
    fell_back = {"shm_fallbacks": 0}
    while True:
        t0 = time.perf_counter()
        kind, p = uplink.prepare(grads[seq % len(grads)])
        t1 = time.perf_counter()
        sent = _push(chan, args, seq, version, kind, p, reader is not None)
        uplink.sent()  # as worker/loop.py does: EF21's g_i moves while the server works on the push
        reply = _answer(chan, alloc, reader, params, args.rank, fell_back)
        t2 = time.perf_counter()
        if isinstance(reply, Stop) or t2 > hi:
            break
        assert isinstance(reply, Reply), reply
        uplink.commit(reply.applied)
        t3 = time.perf_counter()
        seq, version = seq + 1, reply.version
        if t2 >= lo:
            counted += 1
            if first is None:
                first, cpu_first = t2, time.process_time()
            last, cpu_last = t2, time.process_time()
            pushed_bytes += sent
            for key, dt in (("prepare_s", t1 - t0), ("exchange_s", t2 - t1), ("commit_s", t3 - t2)):
                split[key] += dt
    return {
        "updates": counted,
        "window_s": (last - first) if counted > 1 else 0.0,
        "push_bytes": pushed_bytes,
        **fell_back,
        "split_s": split,
        "cpu_s": cpu_last - cpu_first,  # this process's CPU time (all threads, zmq's I/O thread too)
    }


def _answer(chan: Channel, alloc, reader, params, rank: int, fell_back: dict) -> Message:
    """The answer to a push; with a shared-memory `reader`, the parameters of its version read into `params`,
    or pulled over ZeroMQ when the reads were torn every try (counted), as a worker does (worker/shm_params.py)."""
    try:
        reply = chan.recv(REPLY_WAIT_S, alloc=alloc).msg
    except TimeoutError:  # the server ended its run while this worker was descheduled past its stop grace
        return Stop(reason="no answer: the server is gone", version=-1)
    if reader is None or not isinstance(reply, Reply):
        return reply
    assert reply.params is None
    if reader.read_into(params.numpy(), reply.version) is None:
        fell_back["shm_fallbacks"] += 1
        chan.send(Pull(rank=rank))
        pulled = chan.recv(120, alloc=alloc).msg
        assert isinstance(pulled, Reply) and pulled.params is not None, pulled
    return reply


def _push(
    chan: Channel, args: argparse.Namespace, seq: int, version: int, kind: str, p: Payload, via_shm: bool = False
) -> int:
    """Send one push of payload `p`; its size in bytes (a push through the slot: the header only)."""
    slot = getattr(args, "slot", None)
    in_slot = slot is not None and p.encoding == "dense" and p.values is not None and p.values.dtype == torch.float32
    if in_slot and getattr(args, "grad_in_slot", False):
        slot.invalidate()  # as worker/shm_params.py does before backward, then publishes what it wrote
        slot.publish(seq)
    elif in_slot:
        slot.write(seq, p.values.numpy())
    push = Push(
        rank=args.rank,
        seq=seq,
        base_version=version,
        kind=kind,
        encoding=p.encoding,
        numel=args.params,
        loss=0.0,
        samples=1,
        meta=p.meta,
        values=None if in_slot else p.values,
        indices=p.indices,
        signs=p.signs,
        shm=via_shm,
        values_in_shm=in_slot,
    )
    return chan.send(push).nbytes


if __name__ == "__main__":
    main()
