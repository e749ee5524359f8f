"""How many server shards your model needs on your hosts, from the cost model (bench/cost_model.py;
docs/performance.md, Choosing the number of shards). Nothing is measured: you give the hosts' figures.

python -m bench.shard_plan --params 100e6 --workers 64 --link-gbit 25 --mem-gbs 20 --compute-ms 100

Prints the predicted updates/s and the binding resource for S = 1, 2, 4, ... and the fewest shards within 5% of
the best. Hosts of their own are assumed (one shard per host, workers on other hosts); --mem-gbs is one core's
memory bandwidth as the AMSGrad step sees it (bench/results/shard_push.md reports this machine's).
"""

from __future__ import annotations

import argparse
import sys

from bench import cost_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.shard_plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=float, required=True, help="parameters of the model (float32)")
    ap.add_argument("--workers", type=int, required=True)
    ap.add_argument("--link-gbit", type=float, required=True, help="each host's network link, Gb/s each way")
    ap.add_argument("--mem-gbs", type=float, required=True, help="one core's memory bandwidth, GB/s")
    ap.add_argument("--compute-ms", type=float, default=0.0, help="a worker's forward + backward, ms")
    ap.add_argument("--max-shards", type=int, default=256)
    args = ap.parse_args(argv)
    for name in ("params", "workers", "link_gbit", "mem_gbs", "max_shards"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0")
    if args.compute_ms < 0:
        ap.error("--compute-ms must be >= 0")
    costs = cost_model.network_costs(args.mem_gbs, args.link_gbit, args.compute_ms / 1e3)
    params = int(args.params)
    s = 1
    while s <= args.max_shards:
        x, bound = cost_model.predict(params, args.workers, s, costs)
        print(f"S = {s:>4}: {x:10.1f} updates/s, bound by the {bound}")
        s *= 2
    need = cost_model.shards_needed(params, args.workers, costs, args.max_shards)
    x, bound = cost_model.predict(params, args.workers, need, costs)
    print(f"shards needed: {need} ({x:.1f} updates/s, bound by the {bound}; more shards gain under 5%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
