"""What CURVE (authenticated, encrypted transport) costs: updates/s with server.auth curve against none.

python -m bench.curve_cost [--params 262144 4194304] [--workers 1] [--seconds 5] [--repeats 3] [--out DIR]

For each model size and push kind (dense float32, EF21 Top-K 1%) it runs the real server (python -m ps)
against bench workers (bench/push_worker.py) with CURVE off and on, interleaved, and reports the median
updates/s and the ratio on/off. CURVE encrypts and authenticates every frame (XSalsa20-Poly1305 after a
Curve25519 handshake), so its cost grows with the bytes moved: the push and the parameters in every reply.
Target (docs/security.md): CURVE keeps at least 75% of the dense updates/s at 262k parameters.
Results go to DIR/curve_cost.{md,json} (default: a new folder under /tmp).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.ef_push import TOPK
from bench.machine import zmq_stream_gbs
from bench.push_run import run_push_server

KINDS = {"dense": None, "topk1%": TOPK}
TARGET = {(262144, "dense"): 0.75}  # CURVE on / off, at least


def measure(params: int, kind: str, args, curve_gbs: float) -> dict:
    trials: dict[str, list[float]] = {"none": [], "curve": []}
    push_bytes = []
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both alike
        for auth in trials:
            run = run_push_server(params, args.workers, args.warmup_s, args.seconds, args.endpoint, KINDS[kind], auth)
            assert run["summary"]["auth"] == auth, run["summary"]["auth"]
            trials[auth].append(run["updates_per_s"])
            push_bytes.append(run["push_bytes"])
    off, on = statistics.median(trials["none"]), statistics.median(trials["curve"])
    # every byte of the push and of the reply's parameters goes through the cipher: its time at the stream rate
    crypto_s = (statistics.median(push_bytes) + 4 * params) / (curve_gbs * 1e9)
    return {"params": params, "kind": kind, "workers": args.workers, "off": off, "on": on,
            "ratio": on / off if off else 0.0, "plain_ms_per_update": 1e3 / off if off else 0.0,
            "crypto_ms_per_update": 1e3 * crypto_s, "trials": trials, "target": TARGET.get((params, kind))}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=int, nargs="+", default=[262144, 4194304])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup-s", type=float, default=1.5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--endpoint", default="tcp://127.0.0.1:0")
    ap.add_argument("--out", type=Path, default=None, help="folder for curve_cost.{md,json} (default: new in /tmp)")
    args = ap.parse_args()
    plain_gbs, curve_gbs = zmq_stream_gbs(curve=False), zmq_stream_gbs(curve=True)
    print(f"ZeroMQ one-way stream, 1 MiB messages: {plain_gbs:.2f} GB/s plain, {curve_gbs:.2f} GB/s CURVE", flush=True)
    rows = []
    for params in args.params:
        for kind in args.kinds:
            rows.append(measure(params, kind, args, curve_gbs))
            r = rows[-1]
            target = f" (target >= {r['target']})" if r["target"] else ""
            line = (
                f"{params:>8} params {kind:<7} CURVE off {r['off']:8.1f}/s  on {r['on']:8.1f}/s  ratio {r['ratio']:.2f}"
            )
            print(line + target, flush=True)
    out = args.out or Path(tempfile.mkdtemp(prefix="taups-curve-cost-"))
    _write(out, rows, args, (plain_gbs, curve_gbs))
    print(f"wrote {out}/curve_cost.md")
    below = [r for r in rows if r["target"] and r["ratio"] < r["target"]]
    for r in below:
        print(f"BELOW TARGET: {r['params']} params {r['kind']}: {r['ratio']:.2f} < {r['target']}")
    return 0


def _write(out: Path, rows: list[dict], args, stream_gbs: tuple[float, float]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "python -m bench.curve_cost " + " ".join(sys.argv[1:]),
            "stream_gbs_plain": stream_gbs[0], "stream_gbs_curve": stream_gbs[1]}  # fmt: skip
    (out / "curve_cost.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    lines = [
        "# CURVE on against off",
        "",
        f"Measured {meta['date']} with `{meta['command']}`; medians of {args.repeats} interleaved trials, "
        f"{args.workers} worker(s), loopback TCP. The machine's ZeroMQ one-way stream of 1 MiB messages in the "
        f"same run: {stream_gbs[0]:.2f} GB/s plain, {stream_gbs[1]:.2f} GB/s with CURVE (the cipher's ceiling). "
        "Cipher ms / update: the push's and the reply's bytes at that stream rate (split between the two "
        "processes' I/O threads, and partly overlapped with the rest of the update), against the plain update's ms.",
        "",
        "| params | push | updates/s, CURVE off | updates/s, CURVE on | on / off | plain ms / update | "
        "cipher ms / update | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['params']} | {r['kind']} | {r['off']:.1f} | {r['on']:.1f} | {r['ratio']:.2f} | "
                     f"{r['plain_ms_per_update']:.2f} | {r['crypto_ms_per_update']:.2f} | "
                     f"{'>= ' + str(r['target']) if r['target'] else ''} |")  # fmt: skip
    (out / "curve_cost.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
