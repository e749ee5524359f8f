"""A benchmark worker: joins a taups server and pushes one preallocated dense gradient as fast as the
server answers (no gradient computation), counting round trips inside a measurement window.

python -m bench.push_worker --server EP --rank R --params P --warmup-s W --seconds S --out FILE
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from protocol.channel import Channel
from protocol.layout import Layout
from protocol.messages import Hello, Push, Reply, Stop, Welcome


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--params", type=int, required=True)
    ap.add_argument("--warmup-s", type=float, default=2.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    layout = Layout.from_shapes([("w", (args.params,))])
    params = torch.zeros(args.params)
    grad = torch.randn(args.params, generator=torch.Generator().manual_seed(args.rank)) * 1e-3
    chan = Channel("dealer")
    chan.connect(args.server)
    alloc = lambda cls, spec: params  # every reply lands in the same buffer
    chan.send(Hello(rank=args.rank, pid=0, host="bench", device="cpu", run_id="bench", uplink="grad",
                    signature=layout.signature(), init=params))
    while True:
        _, msg = chan.recv(120, alloc=alloc)
        if isinstance(msg, Welcome):
            break
    seq, version = msg.next_seq, msg.version
    t_start = time.perf_counter()
    lo, hi = t_start + args.warmup_s, t_start + args.warmup_s + args.seconds
    counted, first, last = 0, None, None
    while True:
        chan.send(Push(rank=args.rank, seq=seq, base_version=version, kind="grad", encoding="dense",
                       numel=args.params, loss=0.0, samples=1, values=grad))
        _, reply = chan.recv(120, alloc=alloc)
        now = time.perf_counter()
        if isinstance(reply, Stop) or now > hi:
            break
        assert isinstance(reply, Reply), reply
        seq, version = seq + 1, reply.version
        if now >= lo:
            counted += 1
            first = first or now
            last = now
    chan.close()
    with open(args.out, "w") as f:
        json.dump({"rank": args.rank, "updates": counted, "window_s": (last - first) if counted > 1 else 0.0}, f)


if __name__ == "__main__":
    main()
