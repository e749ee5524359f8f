"""Server shards (server.shards; docs/design.md, Shards): how ranges are cut, how a push is cut, and that a
sharded run with one worker is bitwise the run of one server (the optimizers and EF21 are coordinate-wise),
in process and through the launcher; EF21's drift stays at rounding; each shard resumes its own checkpoint."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from launch.handoff import initial_model
from launch.preflight import check_shards
from launch.shards import merge_summaries
from protocol.config.schema import CompressionConfig
from protocol.errors import ConfigError
from protocol.runfolder.records import ServerSummary
from protocol.runfolder.snapshot import read_snapshot
from protocol.wire.channel import Channel
from protocol.wire.encoding import (
    decode_into,
    encode_dense,
    encode_natural,
    encode_qsgd,
    encode_sign,
    encode_sparse,
    slice_payload,
)
from protocol.wire.layout import SHARD_ALIGN, Layout, shard_ranges
from protocol.wire.messages import Reject, Stop
from ps.checkpoint import CheckpointMismatch
from tests.helpers import FakeWorker, join_all, make_config, running_server
from worker.compressors import make_compressor
from worker.ef import make_uplink
from worker.loop import WorkerLoop
from worker.shards import ShardedLoop

ROOT = Path(__file__).resolve().parent.parent
STEPS = 60


@pytest.mark.parametrize("total", [1, 63, 64, 650, 1000, 4097, 100_003])
@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_ranges_cover_the_vector_in_aligned_balanced_pieces(total, k):
    ranges = shard_ranges(total, k)
    assert len(ranges) == k and ranges[0][0] == 0 and ranges[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, in order
    assert all((lo % SHARD_ALIGN == 0 or lo == total) and lo <= hi for lo, hi in ranges)
    sizes = [hi - lo for lo, hi in ranges]
    if total >= k * SHARD_ALIGN:  # else some shard is empty (the launcher refuses that: check_shards)
        assert all(abs(size - total / k) <= SHARD_ALIGN for size in sizes), sizes  # balanced to one block


def _payloads(d: int) -> dict:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(d, generator=g)
    idx = torch.sort(torch.randperm(d, generator=g)[: d // 10]).values
    powers = torch.where(x < 0, -1.0, 1.0) * 2.0 ** torch.randint(-4, 4, (d,), generator=g).float()
    out = {"dense": encode_dense(x), "dense-bf16": encode_dense(x, "bfloat16"), "natural": encode_natural(powers)}
    out |= {f"sparse-{c}": encode_sparse(idx, x[idx], d, "float16", c) for c in ("int32", "delta16", "bitmap")}
    out |= {"qsgd": encode_qsgd(torch.randint(-8, 9, (d,), generator=g), 2.5, 8), "sign": encode_sign(x < 0, 0.3)}
    return out


@pytest.mark.parametrize("name", list(_payloads(8)))
def test_a_shard_decodes_exactly_its_range_of_the_push(name):
    d = 1000
    payload = _payloads(d)[name]
    whole = decode_into(payload, d, torch.empty(d)).clone()
    for lo, hi in shard_ranges(d, 3):
        part = slice_payload(payload, lo, hi)
        assert part.encoding == payload.encoding and part.numel == hi - lo
        assert torch.equal(decode_into(part, hi - lo, torch.empty(hi - lo)), whole[lo:hi]), (name, lo, hi)
    with pytest.raises(ValueError):
        slice_payload(payload, 3, 10)  # not at a whole byte of sign bits


def _config(shards: int, optimizer: dict, compression: dict | None = None, workers: int = 1):
    return make_config(
        workers=workers,
        seed=5,
        task={"dataset": "digits", "model": "mlp", "hidden": [24], "batch_size": 16},
        optimizer=optimizer,
        compression=compression or {},
        run={"max_updates": STEPS, "eval_every_s": 1000},
        server={"stop_grace_s": 2, "shards": shards},
    )


def _train(cfg, run_dir: Path | None = None, workers: int = 1):
    """Every shard's server in a thread, `workers` ranks on threads; (parameters, shard summaries, reports)."""
    model = initial_model(cfg, run_id="")
    n = cfg.server.shards
    with contextlib.ExitStack() as stack:
        dirs = [None if run_dir is None else run_dir / f"shard-{s}" for s in range(n)]
        servers = [stack.enter_context(running_server(cfg, d, model=model, shard=s)) for s, d in enumerate(dirs)]
        reports = _run_workers(cfg, [endpoint for _, endpoint, _ in servers], workers)
        _until(lambda: all(result for _, _, result in servers))  # each shard ends on its own, or told
        params = torch.cat([server.params.clone() for server, _, _ in servers])
    return params, [result for _, _, result in servers], reports


def _until(done, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "a shard did not end"
        time.sleep(0.01)


def _run_workers(cfg, endpoints: list[str], workers: int) -> list:
    chans = [[Channel("dealer") for _ in endpoints] for _ in range(workers)]
    for row in chans:
        for chan, endpoint in zip(row, endpoints):
            chan.connect(endpoint)
    loops = [ShardedLoop(cfg, r, row) if len(row) > 1 else WorkerLoop(cfg, r, row[0]) for r, row in enumerate(chans)]
    reports: list = [None] * workers
    threads = [threading.Thread(target=lambda i=i: reports.__setitem__(i, loops[i].run())) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for row in chans:
        for chan in row:
            chan.close()
    assert all(r is not None for r in reports), "a worker did not end"
    return reports


OPTIMIZERS = [{"name": "amsgrad", "lr": 3e-3}, {"name": "sgd", "lr": 0.05, "momentum": 0.9}]


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=["amsgrad", "sgd-momentum"])
@pytest.mark.parametrize("shards", [2, 3])
def test_one_worker_on_shards_is_bitwise_one_server(optimizer, shards):
    alone, _, _ = _train(_config(1, optimizer))
    sharded, results, reports = _train(_config(shards, optimizer))
    assert [r["updates"] for r in results] == [STEPS] * shards
    assert reports[0].applied == STEPS and reports[0].stop_reason == "max_updates"
    assert torch.equal(alone, sharded)
    assert not torch.equal(alone, initial_model(_config(1, optimizer), "").params)  # it trained


EF21 = [
    {"method": "ef21", "compressor": "topk", "ratio": 0.05, "resync_every": 7},
    {"method": "ef21-sgdm", "compressor": "topk", "ratio": 0.05, "eta": 0.2, "resync_every": 7},
]


@pytest.mark.parametrize("compression", EF21, ids=["ef21", "ef21-sgdm"])
def test_ef21_on_shards_selects_globally_and_keeps_the_mirror_exact(compression):
    opt = OPTIMIZERS[0]
    alone, single, _ = _train(_config(1, opt, compression))
    sharded, results, _ = _train(_config(2, opt, compression))
    assert torch.equal(alone, sharded)  # global Top-K on the worker, each shard keeps g_i of its range
    assert single[0]["ef_drift_max"] < 1e-5
    assert all(r["ef_drift_max"] < 1e-5 for r in results), [r["ef_drift_max"] for r in results]
    _, results, reports = _train(_config(2, opt, compression, workers=3), workers=3)  # asynchronous, interleaved
    assert all(r["ef_drift_max"] < 1e-5 for r in results), [r["ef_drift_max"] for r in results]
    assert all(rep.stop_reason == "max_updates" for rep in reports)
    assert max(r["updates"] for r in results) == STEPS  # one shard reached it; the Stop ended the others


def test_each_shard_resumes_its_own_checkpoint_and_refuses_another_shards(tmp_path):
    cfg = _config(2, OPTIMIZERS[0])
    params, results, _ = _train(cfg, tmp_path)
    model = initial_model(cfg, run_id="")
    for shard in (0, 1):
        with running_server(cfg, tmp_path / f"shard-{shard}", model=model, shard=shard, resume=True) as (s, _, _):
            assert s.version == STEPS
            lo, hi = shard_ranges(model.layout.total, 2)[shard]
            assert torch.equal(s.params, params[lo:hi])
    wrong = tmp_path / "wrong"
    (wrong / "checkpoints").mkdir(parents=True)
    for f in (tmp_path / "shard-0" / "checkpoints").iterdir():
        (wrong / "checkpoints" / f.name).write_bytes(f.read_bytes())
    with pytest.raises(CheckpointMismatch), running_server(cfg, wrong, model=model, shard=1, resume=True):
        pass


def test_merged_summary_counts_an_update_once_every_shard_applied_it():
    a = ServerSummary(updates=100, wall_s=2.0, num_params=384, ef_drift_max=1e-7, pushes_applied=100,
                      uplink_bytes=1000, downlink_bytes=2000)  # fmt: skip
    b = ServerSummary(updates=97, wall_s=2.0, num_params=266, ef_drift_max=3e-7, write_errors=["x: full"],
                      uplink_bytes=700, downlink_bytes=1400)  # fmt: skip
    merged = merge_summaries([a, b])
    assert merged is not None
    assert merged.updates == 97 and merged.shard_spread == 3 and merged.num_params == 650
    assert (merged.uplink_bytes, merged.downlink_bytes) == (1700, 3400)  # every shard's part of the traffic
    assert merged.pushes_applied == 100 and [s["uplink_bytes"] for s in merged.shards] == [1000, 700]
    assert merged.ef_drift_max == 3e-7 and merged.write_errors == ["shard 1: x: full"]
    assert [s["updates_per_s"] for s in merged.shards] == [50.0, 48.5]
    assert merge_summaries([a, None]).write_errors == ["shard 1: no server_summary.json"]


def test_shards_that_would_own_nothing_are_refused_before_the_run():
    layout = Layout.from_shapes([("w", (100,))])
    check_shards(make_config(server={"shards": 2}), layout)
    with pytest.raises(ConfigError) as err:
        check_shards(make_config(server={"shards": 3}), layout)
    assert err.value.key == "server.shards"


def _launch(tmp_path: Path, name: str, *overrides: str) -> Path:
    run = tmp_path / name
    args = ["configs/tiny.yaml", "workers=1", "run.max_updates=120", "run.plots=false", "run.tensorboard=false"]
    done = subprocess.run([sys.executable, "-m", "launch", *args, *overrides, "--quiet", "--run-dir", str(run)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return run


@pytest.mark.slow
def test_the_launcher_runs_two_shards_bitwise_as_one_server(tmp_path):
    one = _launch(tmp_path, "one")
    two = _launch(tmp_path, "two", "server.shards=2")
    a, b = (read_snapshot(run / "snapshots" / "final.safetensors") for run in (one, two))
    assert torch.equal(a.params, b.params) and b.meta["shard_versions"] == [120, 120]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["updates"] == 120 and summary["shard_spread"] == 0
    assert [s["updates"] for s in summary["shards"]] == [120, 120]
    assert all(s["updates_per_s"] > 0 and s["time_split_s"] for s in summary["shards"])
    for s in (0, 1):  # each shard's own files, and its endpoint
        assert (two / f"server-{s}.json").exists()
        for f in ("status.json", "updates.csv", "server_summary.json", "snapshots/final.safetensors"):
            assert (two / f"shard-{s}" / f).exists(), f
        assert list((two / f"shard-{s}" / "checkpoints").glob("ckpt-*.safetensors"))
    rows = (two / "updates.csv").read_text().splitlines()
    assert len(rows) == 1 + 121  # shard 0's rows: 120 applied, and the push answered with Stop
    assert json.loads((two / "metrics.jsonl").read_text().splitlines()[-1])["final"] is True
    processes = summary["processes"]
    assert {"server0", "server1"} <= set(processes) and "server" not in processes


def test_a_shard_ends_the_run_on_a_joined_workers_stop_and_answers_it():
    layout = Layout.from_shapes([("w", (256,))])
    cfg = make_config(workers=2, run={"max_updates": 1000}, server={"shards": 2, "stop_grace_s": 1})
    with running_server(cfg, model=(layout, torch.zeros(256)), shard=1) as (server, endpoint, result):
        workers = [FakeWorker(endpoint, r, layout) for r in range(2)]
        stranger = FakeWorker(endpoint, 5, layout)
        try:
            welcomes = join_all(workers)
            assert [w.settings["shard"] for w in welcomes] == [[1, 128, 256]] * 2  # the range the worker checks
            assert workers[0].push(torch.ones(128)).applied
            refused = stranger.request(Stop(reason="max_updates", version=0))
            assert isinstance(refused, Reject) and refused.code == "unknown_rank" and server.stop_reason is None
            answer = workers[1].request(Stop(reason="max_updates", version=1))
            assert isinstance(answer, Stop) and server.stop_reason == "max_updates"
            assert isinstance(workers[0].push(torch.ones(128)), Stop)  # the other worker is told at its next push
            _until(lambda: bool(result))
        finally:
            for w in (*workers, stranger):
                w.close()
    assert result["stop_reason"] == "max_updates" and result["updates"] == 1


def test_one_server_refuses_a_workers_stop():
    layout = Layout.from_shapes([("w", (64,))])
    cfg = make_config(workers=1)
    with running_server(cfg, model=(layout, torch.zeros(64))) as (server, endpoint, _):
        worker = FakeWorker(endpoint, 0, layout)
        try:
            worker.hello()
            refused = worker.request(Stop(reason="max_updates", version=0))
            assert isinstance(refused, Reject) and refused.code == "bad_type" and server.stop_reason is None
        finally:
            worker.close()


def _uplink(method: str, d: int):
    cfg = CompressionConfig(method=method, compressor="topk", k=3)
    return make_uplink(cfg, d, make_compressor(cfg, Layout.from_shapes([("x", (d,))]), 0), torch.device("cpu"))


def test_error_feedback_follows_each_shards_verdict_over_its_range():
    d, parts = 8, [(0, 4, True), (4, 8, False)]
    grad = torch.tensor([5.0, 0.1, 0.2, 4.0, 3.0, 0.3, 0.1, 0.2])
    up = _uplink("ef21", d)
    kind, reset = up.prepare(grad)
    up.commit_parts(parts)  # shard 1 did not apply the reset: g_i moves on shard 0's range only, and resets again
    assert kind == "reset" and torch.equal(up.g, torch.cat([grad[:4], torch.zeros(4)]))
    assert up.prepare(grad)[0] == "reset"
    up.commit_parts([(0, 4, True), (4, 8, True)])
    kind, delta = up.prepare(grad * 2)  # top-3 of grad: coordinates 0, 3 and 4, one of them in shard 1's range
    sent = decode_into(delta, d, torch.empty(d)).clone()
    up.commit_parts(parts)
    assert kind == "delta" and torch.equal(up.g, grad + torch.cat([sent[:4], torch.zeros(4)]))
    ef14 = _uplink("ef14", d)
    _, payload = ef14.prepare(grad)
    sent = decode_into(payload, d, torch.empty(d)).clone()
    ef14.commit_parts(parts)  # the residual keeps all of shard 1's part, and loses what shard 0 applied
    assert torch.equal(ef14.e, torch.cat([grad[:4] - sent[:4], grad[4:]]))


def test_a_shard_without_a_summary_counts_with_its_last_status(tmp_path):
    """A shard killed for good writes no server_summary.json: the merged one must not take shard 0's figures for
    the whole run (num_params of one range, updates the other shard never reached)."""
    from launch.shards import ShardFiles
    from launch.writes import write_record_file
    from protocol.runfolder.model_init import FILE, write_model_init

    model = initial_model(make_config(), "run")
    write_model_init(tmp_path / FILE, model)
    (lo0, hi0), (lo1, hi1) = model.layout.shard_ranges(2)
    (tmp_path / "shard-0").mkdir()
    write_record_file(tmp_path / "shard-0" / "server_summary.json", ServerSummary(updates=267, num_params=hi0))
    (tmp_path / "shard-1").mkdir()
    (tmp_path / "shard-1" / "status.json").write_text(json.dumps({"version": 255, "updates": 255}))
    ShardFiles(tmp_path, 2).finish()
    merged = json.loads((tmp_path / "server_summary.json").read_text())
    assert merged["num_params"] == model.layout.total and merged["updates"] == 255, merged
    assert merged["shards"][1] == {"shard": 1, "missing": True, "num_params": hi1 - lo1, "updates": 255}
    assert merged["write_errors"] == ["shard 1: no server_summary.json"] and merged["shard_spread"] is None
