"""python -m launch.keys create DIR --workers N | list DIR

CURVE keys for runs started by hand or across hosts (server.auth: curve; docs/security.md). `create`
writes the server's key pair and one pair per worker rank into DIR (made 0700; secret files 0600;
existing pairs are kept); `list` shows each key, its public half and whether its file is private. The
server's host needs server.key_secret and every worker-<rank>.key; a worker's host needs its own
worker-<rank>.key_secret and server.key. Runs started by `python -m launch` without server.keys get new
keys of their own in RUN/keys. Exit codes: 0, 2 for a bad folder or key file.
"""

from __future__ import annotations

import argparse
import stat
import sys
from pathlib import Path

from protocol.config.schema import ExperimentConfig
from protocol.wire.curve import KeyFileError, create_keys, read_public, read_secret

MAX_WORKERS = 1 << 16


def run_keys(cfg: ExperimentConfig, run_dir: Path) -> Path | None:
    """New keys for this run in RUN/keys when it uses CURVE without server.keys; the folder, or None."""
    if cfg.mode != "async" or not cfg.server.curve or cfg.server.keys:
        return None
    folder = run_dir / "keys"
    create_keys(folder, cfg.workers)
    return folder


def describe(folder: Path) -> list[str]:
    """One line per key file in `folder`: name, public key, and what is wrong with it, if anything."""
    lines = []
    for path in sorted(folder.glob("*.key")) + sorted(folder.glob("*.key_secret")):
        name = path.name.rsplit(".", 1)[0]
        try:
            public = read_secret(folder, name).public if path.suffix == ".key_secret" else read_public(folder, name)
            note = f"public {public.decode()}"
        except KeyFileError as err:
            note = f"REFUSED: {err}"
        mode = stat.S_IMODE(path.stat().st_mode)
        lines.append(f"{path.name:<24} {mode:04o}  {note}")
    return lines or [f"no key files in {folder}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m launch.keys", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    make = sub.add_parser("create", help="key pairs for the server and worker ranks 0..N-1")
    make.add_argument("folder", type=Path)
    make.add_argument("--workers", type=int, required=True, help="number of worker ranks")
    show = sub.add_parser("list", help="the keys in a folder, and any that would be refused")
    show.add_argument("folder", type=Path)
    args = ap.parse_args(argv)
    try:
        if args.command == "create":
            if not 1 <= args.workers <= MAX_WORKERS:
                raise KeyFileError(f"--workers must be in [1, {MAX_WORKERS}], got {args.workers}")
            written = create_keys(args.folder, args.workers)
            print(f"{len(written)} key files written to {args.folder} ({2 * (args.workers + 1) - len(written)} kept)")
        else:
            if not args.folder.is_dir():
                raise KeyFileError(f"{args.folder} is not a folder")
            print("\n".join(describe(args.folder)))
    except (KeyFileError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
