"""run.eval_every_updates (quick tier): the server and the sync recorder offer a snapshot each time the version
crosses a multiple of N, besides the run.eval_every_s cadence. Tested where snapshots are offered (the Reporter,
a real server in a thread, the sync recorder): metrics lines would need the evaluator process."""

import torch

from protocol.runfolder.snapshot import read_snapshot
from ps.reporting import Reporter
from sync.collective import Round
from sync.records import SyncRecorder
from tests.helpers import FakeWorker, join_all, make_config, running_server
from tests.test_server import LAYOUT, N


def _cfg(every: int, workers: int = 1):
    # eval_every_s this long: the only time-driven snapshot is the first one, at the start of training
    run = {"max_updates": 100000, "eval_every_s": 1000.0, "eval_every_updates": every}
    return make_config(workers=workers, run=run, optimizer={"name": "sgd", "lr": 0.1}, server={"stop_grace_s": 0.5})


def _record_offers(reporter: Reporter) -> list[int]:
    """The versions of the snapshots offered to the Snapshotter. Each write is waited for, so that none is
    skipped for a write still running and `written` counts every offer."""
    versions: list[int] = []
    snapshots = reporter.snapshots
    offer = snapshots.offer

    def offer_and_wait(params, meta, buffers=None):
        versions.append(meta["version"])
        written = offer(params, meta, buffers)
        snapshots.wait()
        return written

    snapshots.offer = offer_and_wait
    return versions


def _due_versions(reporter: Reporter, versions: list[int]) -> list[int]:
    return [v for v in versions if reporter.snapshot_due(0.0, True, v)]


def test_the_reporter_makes_a_snapshot_due_at_each_multiple_crossed(tmp_path):
    reporter = Reporter(_cfg(5), tmp_path, N)
    assert _due_versions(reporter, [0, 1, 4, 5, 5, 6, 9, 10, 11]) == [0, 5, 10]  # 0: the time cadence's first
    # crossing several multiples between two looks (a grouped step, a slow tick) makes one snapshot, of now
    assert _due_versions(reporter, [13, 27, 29, 30]) == [27, 30]
    assert not reporter.snapshot_due(0.0, False, 35)  # nothing before training starts


def test_without_eval_every_updates_only_the_time_cadence_makes_snapshots(tmp_path):
    reporter = Reporter(_cfg(0), tmp_path, N)
    assert _due_versions(reporter, list(range(50))) == [0]
    assert reporter.snapshot_due(1000.0, True, 50)  # eval_every_s later


def test_the_server_offers_snapshots_at_multiples_of_eval_every_updates(tmp_path):
    with running_server(_cfg(5), run_dir=tmp_path, model=(LAYOUT, torch.zeros(N))) as (server, endpoint, _):
        offered = _record_offers(server.report)  # before any Hello: training has not started
        w = FakeWorker(endpoint, 0, LAYOUT)
        join_all([w])
        for _ in range(23):
            assert w.push(torch.ones(N)).applied
        w.close()
    assert offered == [0, 5, 10, 15, 20]
    snapshots = server.report.snapshots
    assert (snapshots.written, snapshots.skipped) == (5, 0)
    assert read_snapshot(tmp_path / "snapshots" / "latest.safetensors").meta["version"] == 20
    assert read_snapshot(tmp_path / "snapshots" / "final.safetensors").meta["version"] == 23


def test_the_sync_recorder_offers_snapshots_at_multiples_of_eval_every_updates(tmp_path):
    recorder = SyncRecorder(_cfg(4, workers=2), tmp_path, N, world=2)
    offered = _record_offers(recorder.report)
    for step in range(1, 14):
        rnd = Round(torch.zeros(N), losses=[1.0, 1.0], sent=[10, 10], received=20, stop_reason="")
        recorder.record(step, wall_s=0.01 * step, lr=0.1, rnd=rnd)
        recorder.tick(0.01 * step, torch.full((N,), float(step)))
    assert offered == [1, 4, 8, 12]  # 1: the time cadence's first, at the first step
    _, params, _ = read_snapshot(tmp_path / "snapshots" / "latest.safetensors")
    assert torch.equal(params, torch.full((N,), 12.0))
