"""Shared-memory parameters and pushes in real runs of `python -m launch` (docs/design.md, Shared-memory
parameters; Shared-memory pushes): the same training as over ZeroMQ, bitwise the same with one worker (dense
and EF21, whose reset and dense deltas go through the push slot), the worker's fallback to a pull, config
errors naming server.transport, and no segment or push slot left in /dev/shm, a killed server's included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from protocol.config.schema import ExperimentConfig, ServerConfig
from protocol.runfolder.records import WorkerReport
from protocol.runfolder.snapshot import read_snapshot
from protocol.wire import shm
from worker.shm_params import ShmParams

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not shm.supported(), reason="shared-memory parameters need x86-64 and /dev/shm")


def launch(args: list[str], run_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "launch", *args, "--run-dir", str(run_dir), "--quiet"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def segments(run_dir: Path) -> list[str]:
    return sorted(p.name for p in shm.SHM_DIR.glob(shm.prefix(run_dir.name) + "*"))


def worker_reports(run_dir: Path, workers: int) -> list[dict]:
    return [json.loads((run_dir / f"worker-{r}.json").read_text()) for r in range(workers)]


def _run(tmp_path: Path, transport: str, *more: str) -> tuple[Path, dict]:
    run = tmp_path / transport
    out = launch(["configs/tiny.yaml", f"server.transport={transport}", *more], run)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    assert segments(run) == []
    return run, json.loads((run / "summary.json").read_text())


@pytest.mark.slow
def test_a_run_over_shared_memory_trains_as_one_over_zeromq(tmp_path):
    shm_run, shm_summary = _run(tmp_path, "shm")
    zmq_run, zmq_summary = _run(tmp_path, "zmq")
    for r in worker_reports(shm_run, 3):
        assert r["shm_fallbacks"] == 0 and r["params_from_shm"] >= r["pushes"] - 1 > 0, r  # the last got Stop
    assert all(r["params_from_shm"] == 0 for r in worker_reports(zmq_run, 3))
    assert shm_summary["updates"] == zmq_summary["updates"] == 300
    assert shm_summary["final_test_acc"] > 0.8 and zmq_summary["final_test_acc"] > 0.8
    assert abs(shm_summary["final_test_acc"] - zmq_summary["final_test_acc"]) < 0.05
    # the parameters no longer travel down: a reply is a header (~100 bytes), not 650 floats
    assert shm_summary["downlink_bytes"] < zmq_summary["downlink_bytes"] / 4


@pytest.mark.slow
def test_one_worker_ends_with_bitwise_the_same_parameters_over_either_path(tmp_path):
    more = ("workers=1", "run.max_updates=200")
    finals = {}
    for transport in ("shm", "zmq"):
        run, summary = _run(tmp_path, transport, *more)
        assert summary["updates"] == 200
        finals[transport] = read_snapshot(run / "snapshots" / "final.safetensors")[1]
        (report,) = worker_reports(run, 1)
        assert (report["params_from_shm"] > 0) == (transport == "shm"), report
        assert report["pushes_via_shm"] == (report["pushes"] if transport == "shm" else 0), report
        assert report["pushes_computed_in_slot"] == report["pushes_via_shm"], report  # no copy into the slot
    assert torch.equal(finals["shm"], finals["zmq"])


@pytest.mark.slow
def test_ef21_through_the_push_slot_keeps_the_mirror_exact_and_trains_bitwise_as_over_zeromq(tmp_path):
    """EF21 with the identity compressor: the dense reset and every dense delta through the slot. Were the
    server's g_i a view of the slot, the worker's next write would change it, and the mirror check (meta
    g_sq) and the final parameters would show it."""
    more = ("workers=1", "run.max_updates=150", "compression.method=ef21", "compression.resync_every=10")
    finals = {}
    for transport in ("shm", "zmq"):
        run, summary = _run(tmp_path, transport, *more)
        server = json.loads((run / "server_summary.json").read_text())
        assert summary["updates"] == 150 and server["ef_drift_max"] < 1e-6, server
        finals[transport] = read_snapshot(run / "snapshots" / "final.safetensors")[1]
        (report,) = worker_reports(run, 1)
        assert report["pushes_via_shm"] == (report["pushes"] if transport == "shm" else 0), report
    assert torch.equal(finals["shm"], finals["zmq"])


@pytest.mark.slow
def test_the_launcher_removes_the_segment_of_a_killed_server(tmp_path):
    run = tmp_path / tmp_path.name  # segments are named by the run folder's name: other tests' runs are "run"
    cmd = [sys.executable, "-m", "launch", "configs/tiny.yaml", "run.max_updates=100000000", "run.max_seconds=300"]
    proc = subprocess.Popen([*cmd, "--run-dir", str(run), "--quiet"], cwd=ROOT, text=True, stdout=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while len(segments(run)) < 4 and time.monotonic() < deadline:  # the parameters and 3 push slots
            time.sleep(0.1)
        (name,) = [n for n in segments(run) if "-push" not in n]
        assert len(segments(run)) == 4, segments(run)
        os.kill(int(name.split("@")[1].split("-")[0]), signal.SIGKILL)  # the server: it cannot unlink
        assert proc.wait(timeout=120) == 1
    finally:
        proc.kill()
    assert segments(run) == []


@pytest.mark.slow
def test_the_launcher_leaves_the_live_segment_of_another_run_of_the_same_folder_name(tmp_path):
    """The run id is the run folder's name, so two runs at a/run and b/run share the segment prefix: the sweep at
    the end of one must not unlink the other's segment while its server (here a stand-in process) lives."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    decoy = shm.SHM_DIR / f"{shm.prefix('run')}{other.pid}-0badc0de"
    try:
        decoy.write_bytes(b"")
        out = launch(["configs/tiny.yaml", "workers=1", "run.max_updates=20", "run.plots=false"], tmp_path / "run")
        assert out.returncode == 0, out.stderr[-3000:]
        assert decoy.exists(), "the launcher removed the segment of a live server of another run"
    finally:
        other.kill()
        other.wait()
        decoy.unlink(missing_ok=True)


@pytest.mark.parametrize(
    "args, says",
    [
        (["server.transport=pipes"], "server.transport"),
        (["server.transport=shm", "staleness.delay=uniform", "staleness.delay_versions=3"], "server.transport"),
    ],
)
def test_a_bad_transport_exits_2_naming_the_key(tmp_path, args, says):
    out = launch(["configs/tiny.yaml", *args], tmp_path / "run", timeout=120)
    assert out.returncode == 2 and says in out.stderr, out.stderr


def _cfg(transport: str) -> ExperimentConfig:
    return ExperimentConfig(server=ServerConfig(transport=transport))


def test_a_worker_pulls_when_the_segment_has_no_consistent_version():
    writer = shm.SegmentWriter("fallback", 16)
    stats = WorkerReport()
    params = torch.zeros(16)
    worker = ShmParams(_cfg("auto"), 0, stats)
    assert worker.attach({"shm": writer.advert().to_wire()}, 16) is None and worker.active
    writer.publish(3, np.full(16, 3, np.float32))
    assert worker.load(params, 3, pull=lambda: pytest.fail("read, no pull")) == 3 and (params == 3).all()
    assert worker.load(params, 4, pull=lambda: 99) == 99  # version 4 is not there: pulled over ZeroMQ
    assert (stats.params_from_shm, stats.shm_fallbacks) == (1, 1)
    worker.close()
    writer.close()


def test_a_worker_without_a_usable_segment_stays_on_zeromq_unless_shm_is_required():
    stats = WorkerReport()
    bogus = {"shm": {"name": "taups-none@1-ab", "host": shm.host_id(), "numel": 16, "nonce": "00"}}
    for settings in ({}, bogus):
        assert ShmParams(_cfg("auto"), 0, stats).attach(settings, 16) is None
        assert "server.transport is shm" in (ShmParams(_cfg("shm"), 0, stats).attach(settings, 16) or "")
    writer = shm.SegmentWriter("zmq-only", 16)
    zmq_only = ShmParams(_cfg("zmq"), 0, stats)
    assert zmq_only.attach({"shm": writer.advert().to_wire()}, 16) is None and not zmq_only.active
    writer.close()


def _served_push(transport: str, delay: str = "none") -> tuple[dict, list, torch.Tensor]:
    """One worker joins an in-process server and pushes twice asking for shared memory; the Welcome's settings,
    each reply's (version, params, what the segment held) and the server's parameters at the end."""
    from launch.inproc import FakeWorker, make_config, running_server
    from protocol.wire.layout import Layout

    staleness = {"delay": delay, "delay_versions": 2} if delay != "none" else {}
    cfg = make_config(
        workers=1, server={"transport": transport, "stop_grace_s": 0.5}, staleness=staleness, run={"max_updates": 100}
    )
    layout = Layout.from_shapes([("w", (1000,))])
    with running_server(cfg, model=(layout, torch.zeros(1000))) as (server, endpoint, _):
        w = FakeWorker(endpoint, 0, layout)
        welcome = w.hello()
        reader = (
            shm.SegmentReader(shm.Advert.from_wire(welcome.settings["shm"]), 1000)
            if "shm" in welcome.settings
            else None
        )
        seen = []
        for _ in range(2):
            reply = w.push(torch.ones(1000), shm=True)
            held = torch.empty(1000)
            got = reader.read_into(held.numpy(), reply.version) if reader is not None else None
            seen.append((reply.version, reply.params, got, held))
        final = server.params.clone()
        w.close()
    return welcome.settings, seen, final


def test_the_server_answers_a_shm_push_with_the_version_only_and_publishes_it_first():
    settings, seen, final = _served_push("auto")
    assert settings["shm"]["numel"] == 1000
    for version, params, got, _ in seen:
        assert params is None and got == version  # the reply names a version the segment already holds
    assert seen[-1][0] == 2 and torch.equal(seen[-1][3], final)
    mine = [settings[key]["name"] for key in ("shm", "shm_push") if key in settings]
    assert mine and not any((shm.SHM_DIR / name).exists() for name in mine)  # the server unlinked them at its end


def test_without_a_segment_the_server_sends_the_parameters_whatever_the_push_asked():
    for transport, delay in (("zmq", "none"), ("auto", "uniform")):  # the artificial delay needs the wire
        settings, seen, _ = _served_push(transport, delay)
        assert "shm" not in settings
        assert all(params is not None and params.numel() == 1000 for _, params, _, _ in seen)


def test_a_full_dev_shm_leaves_the_server_on_zeromq(monkeypatch):
    """A container's small /dev/shm: the pages are reserved when the segment is made, so ENOSPC shows there (and
    the server goes on over ZeroMQ), never as a SIGBUS at the first publish."""
    from ps.shared_params import SharedParams

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    shared = SharedParams(_cfg("auto"), "full-shm", 1 << 20)
    assert shared.advert() == {} and not shared.active
    assert not shared.publish(1, torch.zeros(1 << 20))
    assert segments(Path("full-shm")) == []


def test_a_step_is_streamed_after_its_version_is_named_and_a_reader_follows_it_to_the_exact_step():
    """The reply names the version before the step is taken (ps/model.py, finish_step); a reader asking for it
    follows the chunks as they are written and ends with bitwise the parameters one whole step gives."""
    from protocol.wire.layout import Layout
    from ps.aggregate import Staged
    from ps.model import ServedModel
    from ps.optim import CHUNK, make_optimizer
    from tests.helpers import make_config, served

    n = 3 * CHUNK + 640  # three whole chunks and a short one
    cfg = make_config(workers=1, server={"transport": "auto"})
    model = ServedModel.create(cfg, served(Layout.from_shapes([("w", (n,))]), torch.zeros(n)))
    reader = shm.SegmentReader(shm.Advert.from_wire(model.shared.advert()["shm"]), n)
    g = torch.randn(n, generator=torch.Generator().manual_seed(0))
    expected = torch.zeros(n)
    make_optimizer(expected, cfg.optimizer).step(g, 1e-3)
    try:
        assert model.apply(0, Staged("grad", dense=g), 1e-3, stream=True) and model.version == 1
        assert model.shm_version() == 1 and torch.equal(model.params, torch.zeros(n))  # named, not yet taken
        got, copied = {}, torch.empty(n)
        follower = threading.Thread(target=lambda: got.update(v=reader.read_into(copied.numpy(), 1, wait_s=60)))
        follower.start()
        time.sleep(0.2)  # the reader is waiting on the write's progress
        model.settle()
        follower.join(timeout=60)
        assert got["v"] == 1
        assert torch.equal(model.params, expected) and torch.equal(copied, expected)
        assert model.shm_version() == 1 and model.shared.writer.published == 1  # published once, not again
    finally:
        reader.close()
        model.shared.close()


def test_a_step_for_a_worker_that_does_not_read_the_segment_is_taken_whole_and_not_written_there():
    """Streaming pays only when the pusher reads the segment: a push over ZeroMQ steps at once and the segment
    is written only when a reply names a version in it."""
    from protocol.wire.layout import Layout
    from ps.aggregate import Staged
    from ps.model import ServedModel
    from tests.helpers import make_config, served

    cfg = make_config(workers=1, server={"transport": "auto"})
    model = ServedModel.create(cfg, served(Layout.from_shapes([("w", (256,))]), torch.zeros(256)))
    model.shared.advert()
    try:
        assert model.apply(0, Staged("grad", dense=torch.ones(256)), 1e-3)
        assert not torch.equal(model.params, torch.zeros(256))  # stepped already
        assert model.shared.writer.published == -1 and model.shared.writer.writing is None
    finally:
        model.shared.close()


def test_a_stale_unknown_rank_reject_does_not_answer_a_hello():
    """A pull (or resent push) to a server that then restarted is answered unknown_rank, possibly twice; the
    worker joins again, and the second of those Rejects must not be taken for the answer to its Hello (the
    worker checked its rank against the config before it said Hello)."""
    from protocol.wire.messages import Hello, Pull, Reject, Welcome
    from worker.link import answers

    hello = Hello(rank=1, pid=1, host="h", device="cpu", run_id="r", uplink="grad", signature="s")
    for_hello, for_pull = answers(hello), answers(Pull(rank=1))
    stale = Reject("unknown_rank", "rank 1 has not joined from this connection")
    assert for_pull(stale) and not for_hello(stale)
    assert for_hello(Reject("unknown_rank", "rank 7 is outside 0..3"))  # the Hello's own refusal still answers it
    assert for_hello(Reject("bad_run", "another run")) and for_hello(Welcome(0, 0, [], {}))
