"""The security benchmarks run end to end at a tiny size and write what they promise (bench/curve_cost.py,
bench/flood.py); the numbers themselves belong in docs/performance.md, not in a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--params", "4096", "--seconds", "2", "--warmup-s", "0.5", "--repeats", "1"]


def _bench(module: str, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", module, *TINY, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def test_curve_cost_measures_both_settings_and_writes_the_ratio(tmp_path):
    _bench("bench.curve_cost", "--kinds", "dense", "--out", str(tmp_path))
    (row,) = json.loads((tmp_path / "curve_cost.json").read_text())["rows"]
    assert row["off"] > 0 and row["on"] > 0 and row["ratio"] == pytest.approx(row["on"] / row["off"])
    assert "| 4096 | dense |" in (tmp_path / "curve_cost.md").read_text()


def test_flood_counts_what_the_server_dropped(tmp_path):
    _bench("bench.flood", "--modes", "none", "stranger-pull", "--out", str(tmp_path))
    rows = {r["mode"]: r for r in json.loads((tmp_path / "flood.json").read_text())["rows"]}
    assert rows["none"]["updates_per_s"] > 0 and rows["stranger-pull"]["updates_per_s"] > 0
    flooded = rows["stranger-pull"]["server_counts"][-1]
    assert flooded["messages_throttled"] > 0  # a stranger's flood beyond 100 messages/s is dropped unread
