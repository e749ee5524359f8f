"""How many server shards your model needs on your hosts, from the cost model (bench/cost_model.py;
docs/performance.md, Choosing the number of shards). Nothing is measured: you give the hosts' figures.

python -m bench.shard_plan --params 100e6 --workers 64 --link-gbit 25 --mem-gbs 20 --compute-ms 100

Prints the predicted updates/s and the binding resource for S = 1, 2, 4, ... and the fewest shards within 5% of
the best, up to what a run can have (server.shards <= 64, every shard at least 64 parameters). Hosts of their
own are assumed (one shard per host, workers on other hosts); --mem-gbs is one core's memory bandwidth as the
AMSGrad step sees it (bench/results/shard_push.md reports this machine's).
"""

from __future__ import annotations

import argparse
import math
import sys

from bench import cost_model
from protocol.config.schema import MAX_SHARDS
from protocol.wire.layout import SHARD_ALIGN


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.shard_plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=float, required=True, help="parameters of the model (float32)")
    ap.add_argument("--workers", type=int, required=True, help="worker processes, each on a host of its own")
    ap.add_argument("--link-gbit", type=float, required=True, help="each host's network link, Gb/s each way")
    ap.add_argument("--mem-gbs", type=float, required=True, help="one core's memory bandwidth, GB/s")
    ap.add_argument("--compute-ms", type=float, default=0.0, help="a worker's forward + backward, ms")
    ap.add_argument("--max-shards", type=int, default=MAX_SHARDS, help="the most shards to consider")
    args = ap.parse_args(argv)
    _check(ap, args)
    costs = cost_model.network_costs(args.mem_gbs, args.link_gbit, args.compute_ms / 1e3)
    params = int(args.params)
    # what a run can have: server.shards <= MAX_SHARDS, and every shard owns a block of SHARD_ALIGN parameters
    most = max(1, min(args.max_shards, MAX_SHARDS, params // SHARD_ALIGN))
    print(_assumptions(params, costs))
    s = 1
    while s <= most:
        x, bound = cost_model.predict(params, args.workers, s, costs)
        print(f"S = {s:>4}: {x:10.1f} updates/s, bound by the {bound}")
        s *= 2
    need = cost_model.shards_needed(params, args.workers, costs, most)
    x, bound = cost_model.predict(params, args.workers, need, costs)
    head = f"shards needed: {need} ({x:.1f} updates/s, bound by the {bound})"
    print(f"{head}: the fewest S within 5% of the most any S gives")
    return 0


def _assumptions(params: int, c: cost_model.Costs) -> str:
    """What the figures below assume, and a worker's cycle (the 'workers' bound is workers / cycle)."""
    wire_ms = 1e3 * cost_model.BYTES_PER_PARAM * params / c.link_Bps
    return (
        "every shard and every worker on a host of its own (launch.node does not spread shards over hosts yet:\n"
        "it starts them all on the head, where they share its cores and link; on one host keep S = 1 unless cores\n"
        f"are free, docs/performance.md); a worker's cycle: {1e3 * c.compute_s:.1f} ms compute +\n"
        f"{wire_ms:.1f} ms push + {wire_ms:.1f} ms reply on its link + the step on its slice of each shard"
    )


def _check(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exits 2 (ap.error) naming the first figure that is not a finite number in its range."""
    for name in ("params", "workers", "link_gbit", "mem_gbs", "compute_ms", "max_shards"):
        value, flag = getattr(args, name), f"--{name.replace('_', '-')}"
        if not math.isfinite(value):
            ap.error(f"{flag} must be a finite number, got {value}")
        if value < 0 or (value == 0 and name != "compute_ms"):
            ap.error(f"{flag} must be {'>= 0' if name == 'compute_ms' else '> 0'}")
    if args.params >= 2**63:
        ap.error("--params must be below 2^63")


if __name__ == "__main__":
    sys.exit(main())
