"""Server checkpoints: the whole durable state round-trips, files are atomic and checked, the newest whole
one is resumed, another config's is refused, and a resumed server ends bitwise where an uninterrupted one
does."""

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from launch.handoff import hand_off
from protocol.config.loader import resolved_yaml
from protocol.runfolder.records import ServerSummary, read_record
from protocol.runfolder.snapshot import read_snapshot
from protocol.wire.layout import Layout
from ps.checkpoint import Checkpointer, CheckpointMismatch, load_latest
from ps.state import capture, restore
from tests.helpers import FakeWorker, make_config, running_server, served
from worker.loop import WorkerLoop, worker_channel

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = Layout.from_shapes([("w", (6, 5)), ("b", (5,))])
N = LAYOUT.total


def _cfg(**kw):
    return make_config(
        workers=kw.pop("workers", 2),
        optimizer=kw.pop("optimizer", {"name": "sgd", "lr": 0.1, "momentum": 0.9, "momentum_mode": "shifted"}),
        compression=kw.pop("compression", {"method": "ef21", "compressor": "topk", "ratio": 0.2}),
        staleness=kw.pop("staleness", {"lr_rule": "inverse", "lr_from": "mean", "ssp": 3}),
        run={"max_updates": 10**6, "eval_every_s": 1000},
        server={"stop_grace_s": 0.5},
        **kw,
    )


def _ef21_pushes(ws: list[FakeWorker], rounds: int, gen: torch.Generator) -> None:
    """A dense reset from every worker, then `rounds` rounds of sparse deltas, round robin (SSP holds a
    worker that runs ahead)."""
    for w in ws:
        assert w.push(torch.randn(N, generator=gen), kind="reset").TYPE == "reply"
    for _ in range(rounds):
        for w in ws:
            delta = torch.zeros(N)
            idx = torch.randperm(N, generator=gen)[:5]
            delta[idx] = torch.randn(5, generator=gen)
            assert w.push(delta, kind="delta").TYPE == "reply"


def test_the_durable_state_round_trips_into_a_fresh_server():
    """EF21 g_i and g, shifted-momentum buffers, the SSP clocks, the lr rule's window, every rank's sequence
    and the counters: a fresh server restored from a capture captures the same again."""
    cfg, gen = _cfg(), torch.Generator().manual_seed(0)
    model = served(LAYOUT, torch.randn(N, generator=torch.Generator().manual_seed(1)))
    with running_server(cfg, model=model) as (server, endpoint, _):
        ws = [FakeWorker(endpoint, r, LAYOUT) for r in range(2)]
        for w in ws:
            w.send_hello(uplink="ef21")
        for w in ws:
            w.recv_welcome()
        _ef21_pushes(ws, 4, gen)
        state = capture(server)
        with running_server(cfg, model=model) as (fresh, _, _):
            restore(fresh, state)
            again = capture(fresh)
    timeless = lambda facts: {k: v for k, v in facts.items() if k != "wall_s"}  # (the fresh one never started)
    assert state.version == again.version == 10 and timeless(again.facts) == timeless(state.facts)
    assert state.tensors.keys() == again.tensors.keys()
    assert {"agg/g", "agg/g_i/0", "agg/g_i/1", "opt/momentum_0", "opt/momentum_1"} <= state.tensors.keys()
    assert all(torch.equal(state.tensors[k], again.tensors[k]) for k in state.tensors)
    assert state.facts["gate"]["clock"] == {"0": 5, "1": 5} and state.facts["members"]["1"]["last_seq"] == 4


def test_checkpoint_files_are_checked_and_the_newest_whole_one_is_resumed(tmp_path, caplog):
    cfg = _cfg()
    with running_server(cfg, model=(LAYOUT, torch.zeros(N))) as (server, endpoint, _):
        writer = Checkpointer(tmp_path, keep=2, identity={"layout": LAYOUT.signature()})
        w = FakeWorker(endpoint, 0, LAYOUT)
        w.hello(uplink="ef21")
        gen = torch.Generator().manual_seed(3)
        w.push(torch.randn(N, generator=gen), kind="reset")
        for _ in range(3):
            delta = torch.randn(N, generator=gen)
            w.push(delta, kind="delta")
            assert writer.offer(capture(server)) or writer.wait() is None
            writer.wait()
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == [
            "ckpt-0000000003.json",
            "ckpt-0000000003.safetensors",
            "ckpt-0000000004.json",
            "ckpt-0000000004.safetensors",
        ]  # fmt: skip  (keep 2)
        newest = tmp_path / "ckpt-0000000004.safetensors"
        newest.write_bytes(newest.read_bytes()[:-100])  # truncated
        with caplog.at_level(logging.WARNING, logger="ps"):
            state, path = load_latest(tmp_path, {"layout": LAYOUT.signature()})
        assert path.name == "ckpt-0000000003.json" and state.version == 3
        assert any("ckpt-0000000004" in r.message and "checksum" in r.message for r in caplog.records)
        with pytest.raises(CheckpointMismatch, match="layout") as info:
            load_latest(tmp_path, {"layout": Layout.from_shapes([("w", (3,))]).signature()})
        assert info.value.key == "layout"
        assert load_latest(tmp_path / "none", {}) is None


# -- a real server process, killed and resumed ------------------------------------------------------------------
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _server(run_dir: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ps", "--config", str(run_dir / "config.yaml"), "--run-dir", str(run_dir), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        preexec_fn=_die_with_parent,  # a failed assertion, or a killed pytest, must not leave a server running
    )
    line = ""
    while not line.startswith("TAUPS_SERVER_READY"):
        line = proc.stdout.readline()
        assert line or proc.poll() is None, "the server exited before it was ready"
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # drain its log
    return proc, line.split()[1]


def _deterministic(**run):
    return make_config(
        workers=1,
        seed=4,
        task={"model": "logreg", "batch_size": 0},  # full-batch gradients: the same at the same parameters
        optimizer={"name": "amsgrad", "lr": 0.01},
        run={"max_updates": 150, "eval_every_s": 1000, **run},
        checkpoint={"every_s": 0, "every_updates": 40},
        server={"resend_s": 0.3, "reply_timeout_s": 60, "stop_grace_s": 2},
    )


def _prepare(cfg, run_dir: Path) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(resolved_yaml(cfg))
    hand_off(cfg, run_dir)


def _worker(cfg, run_dir: Path, endpoint: str) -> tuple[threading.Thread, dict]:
    out: dict = {}
    chan = worker_channel(cfg, 0)
    chan.connect(endpoint)
    loop = WorkerLoop(cfg, 0, chan, run_id=run_dir.name)
    thread = threading.Thread(target=lambda: out.update(stats=loop.run(), loop=loop), daemon=True)
    thread.start()
    return thread, out


def _final(run_dir: Path) -> torch.Tensor:
    return read_snapshot(run_dir / "snapshots" / "final.safetensors").params


@pytest.mark.timeout(240)
def test_a_server_killed_and_resumed_ends_bitwise_where_an_uninterrupted_run_ends(tmp_path):
    cfg = _deterministic()
    plain, crashed = tmp_path / "plain", tmp_path / "crashed"
    for run_dir in (plain, crashed):
        _prepare(cfg, run_dir)
    proc, endpoint = _server(plain)
    thread, _ = _worker(cfg, plain, endpoint)
    thread.join(120)
    assert proc.wait(60) == 0

    proc, endpoint = _server(crashed)
    thread, out = _worker(cfg, crashed, endpoint)
    while not (crashed / "checkpoints" / "ckpt-0000000040.json").exists():
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    killed_at = read_record(ServerSummary, crashed / "server_summary.json")
    assert killed_at is None  # it never got to write one
    proc, _ = _server(crashed, "--resume", "--endpoint", endpoint)
    thread.join(120)
    assert proc.wait(60) == 0 and out["stats"].stop_reason == "max_updates"
    assert torch.equal(_final(crashed), _final(plain))  # bitwise
    summary = read_record(ServerSummary, crashed / "server_summary.json")
    assert summary.server_restarts == 1 and summary.updates == 150
    assert summary.pushes_received == summary.pushes_applied + summary.pushes_rejected
    rows = [r.split(",") for r in (crashed / "updates.csv").read_text().splitlines()[1:]]
    applied = [int(r[0]) for r in rows if r[6] == "1"]
    assert applied == list(range(1, 151))  # every update once: the rows past the checkpoint were cut back
    assert out["loop"].rejoins == 1
    manifest = json.loads(sorted((crashed / "checkpoints").glob("*.json"))[-1].read_text())
    assert manifest["version"] == 150 and manifest["facts"]["restarts"] == 1
