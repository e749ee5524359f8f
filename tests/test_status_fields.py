"""status.json carries the running byte, clipping and EF-drift counters (quick tier): the TensorBoard scalars
and anyone watching a run read them there, before server_summary.json exists."""

import torch

from protocol.runfolder.records import Status, read_record
from sync.collective import Round
from sync.records import SyncRecorder
from tests.helpers import FakeWorker, join_all, make_config, running_server
from tests.test_server import LAYOUT, N


def _cfg(workers=1):
    run = {"max_updates": 100000, "eval_every_s": 1000.0}
    return make_config(workers=workers, run=run, server={"stop_grace_s": 0.5})


def test_the_servers_status_counts_bytes_and_clipped_values_as_they_grow(tmp_path):
    with running_server(_cfg(), run_dir=tmp_path, model=(LAYOUT, torch.zeros(N))) as (server, endpoint, _):
        w = FakeWorker(endpoint, 0, LAYOUT)
        join_all([w])
        w.push(torch.ones(N), meta={"clipped": 3})
        w.push(torch.ones(N), meta={"clipped": 4})
        status, c = server.status(), server.report.counters
        assert status.uplink_bytes == c.uplink_bytes > 0
        assert status.downlink_bytes == c.downlink_bytes > 3 * 4 * N  # the welcome and two replies carry parameters
        assert status.values_clipped == 7
        w.close()
    written = read_record(Status, tmp_path / "status.json")  # the last one, written at the end
    assert written.uplink_bytes == c.uplink_bytes and written.downlink_bytes == c.downlink_bytes
    assert written.values_clipped == 7


def test_the_servers_status_reports_the_aggregators_ef_drift(tmp_path):
    with running_server(_cfg(), model=(LAYOUT, torch.zeros(N))) as (server, _, _):
        assert server.status().ef_drift_max == 0.0
        server.model.agg.drift_max = 0.25  # what a drifting EF21 mirror would have measured
        assert server.status().ef_drift_max == 0.25


def test_the_sync_recorders_status_counts_the_groups_bytes(tmp_path):
    recorder = SyncRecorder(_cfg(2), tmp_path, N, world=2)
    rnd = Round(torch.zeros(N), losses=[1.0, 1.0], sent=[10, 12], received=30, stop_reason="")
    recorder.record(1, wall_s=0.1, lr=0.1, rnd=rnd)
    recorder.record(2, wall_s=0.2, lr=0.1, rnd=rnd)
    status = recorder.status()
    assert (status.uplink_bytes, status.downlink_bytes, status.ef_drift_max) == (44, 120, 0.0)


def test_a_status_json_from_before_these_fields_reads_with_zeros(tmp_path):
    (tmp_path / "status.json").write_text('{"version": 5, "updates": 5, "started": true}')
    status = read_record(Status, tmp_path / "status.json")
    assert (status.version, status.uplink_bytes, status.values_clipped, status.ef_drift_max) == (5, 0, 0, 0.0)
