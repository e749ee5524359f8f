"""A benchmark worker of a run with server shards (server.shards = S): joins every shard and pushes as fast as
they answer, as bench/push_worker.py does against one server. Per push it cuts the prepared payload into one
part per shard (protocol.wire.encoding.slice_payload, as worker/shards.py does), sends every part before it
waits for any answer, then collects each shard's reply straight into the shard's range of the parameter buffer.
The error-feedback state follows every shard's verdict over its own range (Uplink.commit_parts).

python -m bench.shard_worker --servers EP0 [EP1 ...] --rank R --params P --warmup-s W --seconds S --out FILE
                             [--method ... as bench/push_worker.py]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bench.push_worker import compression_args, pusher
from protocol.wire.channel import Channel
from protocol.wire.encoding import Payload, slice_payload
from protocol.wire.layout import Layout
from protocol.wire.messages import Hello, Push, Reply, Stop, Welcome
from worker.ef import Uplink


class Shards:
    """One socket per shard, each shard's range [lo, hi) of `params`, clock and sequence number."""

    def __init__(self, endpoints: list[str], rank: int, params: torch.Tensor):
        self.rank, self.params = rank, params
        self.ranges = Layout.from_shapes([("w", (params.numel(),))]).shard_ranges(len(endpoints))
        self.chans = [Channel("dealer") for _ in endpoints]
        for chan, ep in zip(self.chans, endpoints):
            chan.connect(ep)
        self.seq, self.version = [0] * len(endpoints), [0] * len(endpoints)

    def _alloc(self, s: int):
        lo, hi = self.ranges[s]
        return lambda cls, spec: self.params[lo:hi]  # every reply lands in its shard's range

    def join(self, uplink: str) -> None:
        """Hello to every shard, then every Welcome (heartbeats before it are passed over)."""
        layout = Layout.from_shapes([("w", (self.params.numel(),))])
        hello = Hello(rank=self.rank, pid=0, host="bench", device="cpu", run_id="bench", uplink=uplink,
                      signature=layout.signature())  # fmt: skip
        for chan in self.chans:
            chan.send(hello)
        for s, chan in enumerate(self.chans):
            while not isinstance(msg := chan.recv(120, alloc=self._alloc(s)).msg, Welcome):
                pass
            if len(self.chans) > 1:
                assert msg.settings.get("shard") == [s, *self.ranges[s]], msg.settings
            self.seq[s], self.version[s] = msg.next_seq, msg.version

    def exchange(self, kind: str, p: Payload) -> tuple[list[Reply | Stop], int]:
        """Send every shard its part of payload `p`, then collect every answer; the bytes sent."""
        sent = 0
        for s, ((lo, hi), chan) in enumerate(zip(self.ranges, self.chans)):
            part = slice_payload(p, lo, hi)
            push = Push(rank=self.rank, seq=self.seq[s], base_version=self.version[s], kind=kind,
                        encoding=part.encoding, numel=part.numel, loss=0.0, samples=1, meta=part.meta,
                        values=part.values, indices=part.indices, signs=part.signs)  # fmt: skip
            sent += chan.send(push).nbytes
        replies = [chan.recv(120, alloc=self._alloc(s)).msg for s, chan in enumerate(self.chans)]
        for s, reply in enumerate(replies):
            if isinstance(reply, Reply):
                self.seq[s], self.version[s] = self.seq[s] + 1, reply.version
        return replies, sent  # type: ignore[return-value]

    def close(self) -> None:
        for chan in self.chans:
            chan.close()


def main() -> None:
    args = _parse_args()
    torch.set_num_threads(1)
    uplink, grads = pusher(args)
    shards = Shards(args.servers, args.rank, torch.zeros(args.params))
    shards.join(uplink.uplink)
    result = push_loop(shards, uplink, grads, args)
    shards.close()
    with open(args.out, "w") as f:
        json.dump({"rank": args.rank, **result}, f)


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--servers", nargs="+", required=True, help="every shard's endpoint, in shard order")
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--params", type=int, required=True)
    ap.add_argument("--warmup-s", type=float, default=2.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", required=True)
    compression_args(ap)
    return ap.parse_args()


def push_loop(shards: Shards, uplink: Uplink, grads: list[torch.Tensor], args: argparse.Namespace) -> dict:
    """Push until the window ends; counts, bytes and the worker's time split inside the window (the same
    record as bench/push_worker.py's)."""
    t_start = time.perf_counter()
    lo, hi = t_start + args.warmup_s, t_start + args.warmup_s + args.seconds
    counted, first, last, pushed_bytes, cpu_first, cpu_last = 0, None, None, 0, 0.0, 0.0
    split = {"prepare_s": 0.0, "exchange_s": 0.0, "commit_s": 0.0}
    while True:
        t0 = time.perf_counter()
        kind, p = uplink.prepare(grads[shards.seq[0] % len(grads)])
        t1 = time.perf_counter()
        replies, sent = shards.exchange(kind, p)
        t2 = time.perf_counter()
        if any(isinstance(r, Stop) for r in replies) or t2 > hi:
            break
        uplink.commit_parts([(a, b, r.applied) for (a, b), r in zip(shards.ranges, replies)])  # type: ignore[union-attr]
        t3 = time.perf_counter()
        if t2 >= lo:
            counted, pushed_bytes, last, cpu_last = counted + 1, pushed_bytes + sent, t2, time.process_time()
            if first is None:
                first, cpu_first = t2, cpu_last
            for key, dt in (("prepare_s", t1 - t0), ("exchange_s", t2 - t1), ("commit_s", t3 - t2)):
                split[key] += dt
    window = (last - first) if counted > 1 and first is not None and last is not None else 0.0
    return {"updates": counted, "window_s": window, "push_bytes": pushed_bytes, "split_s": split,
            "cpu_s": cpu_last - cpu_first}  # fmt: skip


if __name__ == "__main__":
    main()
