"""python -m launch.prepare CONFIG.yaml [key.sub=value ...] --run-dir DIR

Prepares a run for processes started by hand (or by another launcher): validates the experiment as
`python -m launch` does, builds its task once, and writes DIR/config.yaml (the resolved config) and
DIR/model/init.safetensors (the model the server starts with; the run id is DIR's name). Prints the
commands that start the server, the workers and the evaluator on it. Exit codes: 0, or 2 for a bad
config, task or folder (the message names the key or the file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from launch.handoff import hand_off
from launch.keys import run_keys
from launch.preflight import preflight
from launch.rundir import make_run_dir
from protocol.config.loader import load_experiment, resolved_yaml
from protocol.config.schema import ExperimentConfig
from protocol.errors import ConfigError


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
    config = run_dir / "config.yaml"
    lines = [
        f"prepared {run_dir} (run id {run_dir.name}); start, in this order:",
        f"  python -m ps --config {config} --run-dir {run_dir}      # prints TAUPS_SERVER_READY <endpoint>",
        f"  python -m launch.evaluate --config {config} --run-dir {run_dir}",
    ]
    for ranks in cfg.worker_processes():
        which = f"--rank {ranks[0]}" if len(ranks) == 1 else f"--ranks {ranks[0]}-{ranks[-1]}"
        lines.append(
            f"  python -m worker --config {config} {which} --server <endpoint> --run-id {run_dir.name} "
            f"--run-dir {run_dir}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
