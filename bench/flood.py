"""Fairness under a flood: the legitimate workers' updates/s with and without a flooding peer on the same host.

python -m bench.flood [--params 262144] [--workers 2] [--seconds 5] [--repeats 2] [--out DIR]

The real server (python -m ps) serves bench workers (bench/push_worker.py) pushing dense gradients while a
flooder, started with them, sends as fast as its socket takes messages and reads whatever comes back:
  none            no flooder (the baseline)
  spin            a process that only burns a core (the CPU a flooder takes on a small host, nothing sent)
  garbage         a stranger's undecodable frames
  stranger-pull   a stranger's Pulls (it never joined: each is refused, or dropped once over its budget)
  stranger-hello  a stranger's Hellos for a held rank with another run id
  member-pull     a joined rank that only pulls: each answered Pull costs the server a parameter copy
The server's admission budgets (server.stranger_messages_per_s, server.peer_messages_per_s) drop what is
beyond them unread; the table reports the others' updates/s as a fraction of the baseline and of `spin`
(on 2 cores a busy flooder takes a core from them whatever it sends), and how many of the flooder's messages
the server refused and dropped. Results go to DIR/flood.{md,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from bench.push_run import ROOT, run_push_server
from protocol.wire import codec
from protocol.wire.layout import Layout
from protocol.wire.messages import Hello, Pull

MODES = ["none", "spin", "garbage", "stranger-pull", "stranger-hello", "member-pull"]


def flood(endpoint: str, mode: str, rank: int, params: int) -> None:
    """The flooder's loop: send without blocking, drain without blocking, until terminated."""
    while mode == "spin":
        pass
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    hello = Hello(rank=rank, pid=0, host="flood", device="cpu", run_id="bench", uplink="grad",
                  signature=Layout.from_shapes([("w", (params,))]).signature())  # fmt: skip
    if mode == "member-pull":
        sock.send_multipart(codec.encode(hello))
        sock.recv_multipart()  # the Welcome
    message = {
        "garbage": [b"\x00garbage" * 8],
        "stranger-pull": codec.encode(Pull(rank=0)),
        "stranger-hello": codec.encode(Hello(**{**hello.__dict__, "rank": 0, "run_id": "other"})),
        "member-pull": codec.encode(Pull(rank=rank)),
    }[mode]
    frames = [bytes(f) for f in message]
    while True:
        with contextlib.suppress(zmq.Again):
            sock.send_multipart(frames, flags=zmq.NOBLOCK)
        while sock.poll(0):
            sock.recv_multipart()


def _flooder(mode: str, rank: int, params: int):
    def start(endpoint: str, folder: Path) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "bench.flood", "--flooder", mode, "--server", endpoint,
               "--rank", str(rank), "--params", str(params)]  # fmt: skip
        return subprocess.Popen(cmd, cwd=ROOT)

    return start


def measure(mode: str, args) -> dict:
    trials, counts = [], []
    for _ in range(args.repeats):
        beside = None if mode == "none" else _flooder(mode, args.workers, args.params[0])
        extra = 1 if mode == "member-pull" else 0
        server = {"wait_for_workers": False} if extra else {}
        run = run_push_server(args.params[0], args.workers, args.warmup_s, args.seconds, args.endpoint,
                              server=server, beside=beside, extra_ranks=extra)  # fmt: skip
        s = run["summary"]
        trials.append(run["updates_per_s"])
        counts.append({k: s.get(k, 0) for k in ("messages_throttled", "messages_rejected")})
    return {"mode": mode, "updates_per_s": statistics.median(trials), "trials": trials, "server_counts": counts}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=int, nargs=1, default=[262144])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup-s", type=float, default=1.5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--endpoint", default="tcp://127.0.0.1:0")
    ap.add_argument("--out", type=Path, default=None, help="folder for flood.{md,json} (default: new in /tmp)")
    ap.add_argument("--flooder", choices=MODES[1:], help=argparse.SUPPRESS)  # the flooder process itself
    ap.add_argument("--server", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.flooder:
        flood(args.server, args.flooder, args.rank, args.params[0])
        return 0
    rows = []
    for mode in args.modes:
        rows.append(measure(mode, args))
        base = rows[0]["updates_per_s"] if rows[0]["mode"] == "none" else None
        r = rows[-1]
        share = f" ({r['updates_per_s'] / base:.0%} of no flood)" if base else ""
        print(f"{mode:<15} others' updates/s {r['updates_per_s']:8.1f}{share}  server: {r['server_counts'][-1]}")
    out = args.out or Path(tempfile.mkdtemp(prefix="taups-flood-"))
    _write(out, rows, args)
    print(f"wrote {out}/flood.md")
    return 0


def _write(out: Path, rows: list[dict], args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "python -m bench.flood " + " ".join(sys.argv[1:])}
    (out / "flood.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    base = next((r["updates_per_s"] for r in rows if r["mode"] == "none"), None)
    spin = next((r["updates_per_s"] for r in rows if r["mode"] == "spin"), None)
    lines = [
        "# The other workers' updates/s under a flooding peer",
        "",
        f"Measured {meta['date']} with `{meta['command']}`: {args.workers} bench workers pushing dense "
        f"{args.params[0]}-parameter gradients, medians of {args.repeats} trials, one host, loopback TCP.",
        "",
        "| flooder | others' updates/s | of no flood | of spin | flooder's messages dropped (throttled) | refused |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["server_counts"][-1]
        share = f"{r['updates_per_s'] / base:.0%}" if base else ""
        of_spin = f"{r['updates_per_s'] / spin:.0%}" if spin else ""
        lines.append(f"| {r['mode']} | {r['updates_per_s']:.1f} | {share} | {of_spin} | {c['messages_throttled']} | "
                     f"{c['messages_rejected']} |")  # fmt: skip
    (out / "flood.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
