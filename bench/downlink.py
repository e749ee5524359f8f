"""Compressed downlink (server.downlink topk; docs/design.md, Compressed downlink) against dense replies: bytes
sent down and accuracy of whole runs, and what a reply costs the server.

python -m bench.downlink [--config configs/quickstart.yaml] [--ratios 0.1 0.01] [--repeats 1]
                         [--params 262144 4194304] [--replies 20] [--out DIR] [--set key=value ...]

runs     the launcher on --config (parameters over ZeroMQ: server.transport zmq), once with dense replies and
         once per ratio with server.downlink topk, --repeats times each, interleaved; from each run's
         summary.json: test accuracy, downlink bytes per update, downlink_gap_max, updates/s.
replies  in this process, one server thread: the time to prepare a reply of --params parameters, dense (the
         snapshot copy the outbox makes of parameters above 4 MiB: python's ZeroMQ then sends it zero-copy)
         against Downlink.answer (Top-K of x - w_i), the parameters moving between replies as an AMSGrad step
         moves them (every coordinate, by about lr); the bytes of each; and the link speed below which the
         compressed reply takes less time on the server's link than it adds on its loop.
Results go to DIR/downlink.{md,json} (default: a new folder in /tmp; --out bench/results updates the checked-in
ones); nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ps.downlink import Downlink

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 600.0
LR = 1e-3  # how far an AMSGrad step moves each coordinate, about


def main() -> int:
    args = _parse_args()
    torch.set_num_threads(1)
    replies = [_reply_cost(n, r, args.replies) for n in args.params for r in args.ratios]
    for row in replies:
        print(_reply_line(row), flush=True)
    runs = _runs(args)
    for row in runs:
        print(_run_line(row), flush=True)
    out = args.out or Path(tempfile.mkdtemp(prefix="taups-downlink-"))
    _write(out, args, runs, replies)
    print(f"wrote {out}/downlink.md")
    return 0


def _parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "quickstart.yaml")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.01])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--params", type=int, nargs="*", default=[262144, 4194304])
    ap.add_argument("--replies", type=int, default=20, help="timed replies per size and ratio")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides, as python -m launch takes")
    ap.add_argument("--out", type=Path, default=None)
    return ap.parse_args()


# -- what a reply costs --------------------------------------------------------------------------------------


def _reply_cost(numel: int, ratio: float, replies: int) -> dict:
    """Median ms to prepare one dense and one compressed reply of numel parameters; their bytes."""
    gen = torch.Generator().manual_seed(0)
    steps = [torch.randn(numel, generator=gen) * LR for _ in range(4)]
    x, snapshot, down = torch.randn(numel, generator=gen), torch.empty(numel), Downlink(numel, ratio)
    named = down.answer(0, -1, x).copy_id
    dense_ms, topk_ms, sent = [], [], 0
    for i in range(replies + 2):  # the first two touch fresh pages
        x.add_(steps[i % 4])
        t0 = time.perf_counter()
        snapshot.copy_(x)
        t1 = time.perf_counter()
        answer = down.answer(0, named, x)
        t2 = time.perf_counter()
        named = answer.copy_id
        if i >= 2:
            dense_ms.append(1e3 * (t1 - t0))
            topk_ms.append(1e3 * (t2 - t1))
            sent = 8 * answer.indices.numel() if answer.indices is not None else 4 * numel
    dense_b, extra_ms = 4 * numel, statistics.median(topk_ms) - statistics.median(dense_ms)
    gbit = 8 * (dense_b - sent) / (extra_ms * 1e6) if extra_ms > 0 else None
    return {"params": numel, "ratio": ratio, "dense_ms": statistics.median(dense_ms),
            "topk_ms": statistics.median(topk_ms), "dense_bytes": dense_b, "topk_bytes": sent,
            "break_even_gbit_s": gbit, "gap_max": down.gap_max}  # fmt: skip


def _reply_line(r: dict) -> str:
    even = f"{r['break_even_gbit_s']:.1f} Gb/s" if r["break_even_gbit_s"] else "always"
    return (
        f"{r['params']:>9} params, ratio {r['ratio']}: dense reply {r['dense_ms']:.2f} ms {r['dense_bytes']} B, "
        f"topk {r['topk_ms']:.2f} ms {r['topk_bytes']} B; topk saves link time below {even}"
    )


# -- whole runs ----------------------------------------------------------------------------------------------


def _runs(args: argparse.Namespace) -> list[dict]:
    settings = [("dense", None)] + [("topk", r) for r in args.ratios]
    got: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for kind, ratio in settings:
            label = kind if ratio is None else f"topk {ratio}"
            got.setdefault(label, []).append(_one_run(args, kind, ratio))
    return [_median_row(label, rows) for label, rows in got.items()]


def _one_run(args: argparse.Namespace, kind: str, ratio: float | None) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="taups-downlink-run-")) / "run"
    sets = ["server.transport=zmq", f"server.downlink={kind}", *([f"server.downlink_ratio={ratio}"] if ratio else [])]
    cmd = [sys.executable, "-m", "launch", str(args.config), *sets, *args.set, "--run-dir", str(run_dir), "--quiet"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    s = json.loads((run_dir / "summary.json").read_text())
    return {"test_acc": s["final_test_acc"], "updates": s["updates"], "updates_per_s": s["updates_per_s"],
            "downlink_bytes_per_update": s["downlink_bytes"] / max(1, s["updates"]),
            "gap_max": s.get("downlink_gap_max")}  # fmt: skip


def _median_row(label: str, rows: list[dict]) -> dict:
    med = {k: statistics.median(r[k] for r in rows) for k in ("test_acc", "updates_per_s", "downlink_bytes_per_update")}
    gaps = [r["gap_max"] for r in rows if r["gap_max"] is not None]
    return {"downlink": label, **med, "gap_max": max(gaps) if gaps else None, "runs": rows}


def _run_line(r: dict) -> str:
    gap = f", gap max {r['gap_max']:.3f}" if r["gap_max"] is not None else ""
    return (
        f"{r['downlink']:>10}: test_acc {r['test_acc']:.4f}, {r['downlink_bytes_per_update']:.0f} B down per "
        f"update, {r['updates_per_s']:.0f} updates/s{gap}"
    )


# -- results -------------------------------------------------------------------------------------------------


def _write(out: Path, args: argparse.Namespace, runs: list[dict], replies: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": "python -m bench.downlink " + " ".join(sys.argv[1:])}
    (out / "downlink.json").write_text(json.dumps({**meta, "runs": runs, "replies": replies}, indent=1))
    dense = next(r for r in runs if r["downlink"] == "dense")["downlink_bytes_per_update"]
    lines = [
        "# Compressed downlink against dense replies",
        "",
        f"Measured {meta['date']} with `{meta['command']}` (config {args.config.name}, parameters over ZeroMQ).",
        "",
        "| downlink | test acc | bytes down per update | fewer bytes | updates/s | gap max |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        gap = f"{r['gap_max']:.3f}" if r["gap_max"] is not None else ""
        lines.append(f"| {r['downlink']} | {r['test_acc']:.4f} | {r['downlink_bytes_per_update']:.0f} | "
                     f"{dense / r['downlink_bytes_per_update']:.1f}x | {r['updates_per_s']:.0f} | {gap} |")  # fmt: skip
    lines += ["", "One reply on the server's loop (one thread), medians:", "",
              "| params | ratio | dense ms | topk ms | dense bytes | topk bytes | topk saves link time below |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in replies:
        even = f"{r['break_even_gbit_s']:.1f} Gb/s" if r["break_even_gbit_s"] else "any speed"
        lines.append(f"| {r['params']} | {r['ratio']} | {r['dense_ms']:.2f} | {r['topk_ms']:.2f} | "
                     f"{r['dense_bytes']} | {r['topk_bytes']} | {even} |")  # fmt: skip
    (out / "downlink.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
