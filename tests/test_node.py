"""python -m launch.node refuses what cannot work before it waits on anyone (docs/design.md, Runs across hosts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = {"RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}


def _node(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "launch.node", "configs/tiny.yaml", *args]
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, env={**base, **(env or {})}, capture_output=True, text=True, timeout=60)


def test_without_torchrun_it_says_which_variables_are_missing():
    done = _node()
    assert done.returncode == 2 and "RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT not set" in done.stderr


@pytest.mark.parametrize(("override", "key"), [("workers=2", "workers"), ("mode=sync", "mode"),
                                               ("server.interface=0.0.0.0", "server.interface")])  # fmt: skip
def test_a_config_that_does_not_fit_the_placement_exits_2_naming_the_key(override, key):
    done = _node(override, env=TORCHRUN)  # no store listens on port 1: the check comes first
    assert done.returncode == 2 and f"'{key}'" in done.stderr, done.stderr


def test_an_unreachable_store_is_named(tmp_path):
    done = _node("server.connect_timeout_s=2", "--run-dir", str(tmp_path / "r"), env=TORCHRUN)
    assert done.returncode in (1, 2) and "127.0.0.1:1" in done.stderr, done.stderr
