"""python -m launch.prepare CONFIG.yaml [key.sub=value ...] --run-dir DIR

Prepares a run for processes started by hand (or by another launcher): validates the experiment as
`python -m launch` does, builds its task once, and writes DIR/config.yaml (the resolved config) and
DIR/model/init.safetensors (the model the server starts with; the run id is DIR's name). Prints the
commands that start the server, the workers and the evaluator on it. Exit codes: 0, or 2 for a bad
config, task or folder (the message names the key or the file).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from launch.advice import say_advice
from launch.handoff import hand_off
from launch.keys import run_keys
from launch.preflight import preflight
from launch.rundir import make_run_dir
from protocol.config.loader import load_experiment, resolved_yaml
from protocol.config.schema import ExperimentConfig
from protocol.errors import ConfigError
from protocol.wire.curve import key_folder
from protocol.wire.endpoints import is_local, shard_endpoint


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launch.prepare", description=__doc__.split("\n\n")[0])
    ap.add_argument("config", help="experiment YAML")
    ap.add_argument("overrides", nargs="*", help="key.sub=value settings applied on top of the file")
    ap.add_argument("--run-dir", required=True, help="the run folder to prepare (new, or empty)")
    args = ap.parse_intermixed_args(argv)  # overrides may come after the flags too
    try:
        cfg = load_experiment(args.config, args.overrides)
        if cfg.sweep:
            raise ConfigError("sweep", "prepares one run: run a sweep with python -m launch")
        preflight(cfg)
        say_advice(cfg)  # settings known to train badly: said, not refused
        run_dir = make_run_dir(cfg.run.runs_dir, cfg.name, args.run_dir)
        (run_dir / "config.yaml").write_text(resolved_yaml(cfg))
        hand_off(cfg, run_dir)
        run_keys(cfg, run_dir)
    except (ConfigError, FileExistsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(commands(cfg, run_dir))
    return 0


def commands(cfg: ExperimentConfig, run_dir: Path) -> str:
    """The commands that start the run's processes on this host (and, for a server reachable from other hosts,
    a worker there), then the one that writes summary.json."""
    config, shards = run_dir / "config.yaml", range(cfg.server.shards)
    lines = [f"prepared {run_dir} (run id {run_dir.name}); start, in this order:"]
    for s in shards:
        shard = f" --shard {s}" if cfg.server.shards > 1 else ""
        lines.append(
            f"  python -m ps --config {config} --run-dir {run_dir}{shard}      # prints TAUPS_SERVER_READY <endpoint>"
        )
    if cfg.server.shards == 1:  # with shards the launcher assembles the snapshots it scores (launch/shards.py)
        lines.append(f"  python -m launch.evaluate --config {config} --run-dir {run_dir}")
    servers = _servers(cfg, "127.0.0.1")
    for ranks in cfg.worker_processes():
        which = f"--rank {ranks[0]}" if len(ranks) == 1 else f"--ranks {ranks[0]}-{ranks[-1]}"
        lines.append(
            f"  python -m worker --config {config} {which} {servers} --run-id {run_dir.name} --run-dir {run_dir}"
        )
    if not is_local(cfg.server.endpoint):
        lines += _other_host(cfg, run_dir)
    lines.append(f"once the server has ended, summary.json and the plots: python -m launch.summary {run_dir}")
    if cfg.server.shards > 1:
        lines.append("(no evaluator by hand with server.shards > 1: python -m launch or launch.node scores shards)")
    return "\n".join(lines)


def _servers(cfg: ExperimentConfig, host: str) -> str:
    """A worker's --server arguments, one per shard in shard order, as seen from `host` (see _reach)."""
    return " ".join(
        f"--server {_reach(shard_endpoint(cfg.server.endpoint, s), s, host)}" for s in range(cfg.server.shards)
    )


def _reach(endpoint: str, shard: int, host: str) -> str:
    """How a worker reaches a server bound at `endpoint`: a wildcard address becomes `host`; a port 0 is only
    known once the server has bound it (its TAUPS_SERVER_READY line)."""
    m = re.fullmatch(r"tcp://([^:]+|\[.*\]):(\d+)", endpoint)
    if m is None:
        return endpoint
    if m[2] == "0":
        return f"<endpoint of shard {shard}>" if shard else "<endpoint>"
    return f"tcp://{host}:{m[2]}" if m[1] in ("*", "0.0.0.0", "[::]") else endpoint


def _other_host(cfg: ExperimentConfig, run_dir: Path) -> list[str]:
    """A worker on another host: the files it needs copied there, then its command (CURVE keys in keys/)."""
    keys = f"{key_folder(cfg.server.keys, run_dir)}/" if cfg.server.curve else ""
    files = f"{run_dir}/config.yaml" + (f", {keys}server.key and {keys}worker-<r>.key*" if keys else "")
    servers = _servers(cfg, "HOST_A")
    return [
        f"a worker on another host: copy {files} into one folder there (keys into its keys/), and in it run",
        f"  python -m worker --config config.yaml --rank <r> {servers} --run-id {run_dir.name}"
        + (" --keys keys" if keys else "")
        + " --run-dir w<r>      # HOST_A: this host's address",
    ]


if __name__ == "__main__":
    sys.exit(main())
