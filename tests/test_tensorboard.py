"""TensorBoard event files in RUN/tensorboard/ (quick tier; the real launcher run is in test_launch_watch.py):
the writer driven in-process and read back with TensorBoard's own EventAccumulator, the launcher's watch loop
with stand-in children, a missing tensorboard package, a full disk, and reading metrics.jsonl as it grows."""

import errno
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import launch.tensorboard
from launch.inproc import make_config
from launch.tail import JsonLinesTail
from launch.tensorboard import NoBoard, open_board
from protocol.runfolder.records import Status
from tests.fake_child import UPDATES
from tests.test_run_end import StandInRun

STATUS_TAGS = [
    "comm/downlink_bytes",
    "comm/downlink_gap_max",
    "comm/uplink_bytes",
    "comm/values_clipped",
    "ef/drift_max",
    "speed/updates_per_s",
    "staleness/max",
    "staleness/mean",
    "train/loss_pushed",
]


def read_scalars(folder) -> dict[str, list]:
    """tag -> [(step, wall_time, value)], as TensorBoard loads them."""
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.wall_time, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _status(version: int, wall_s: float, **fields) -> Status:
    return Status(version=version, updates=version, wall_s=wall_s, started=True, **fields)


def _metric(updates: int, wall_s: float, acc: float) -> dict:
    line = {"wall_s": wall_s, "updates": updates, "train_loss": 2.0 - acc, "test_loss": 2.1 - acc, "test_acc": acc}
    return {**line, "train_loss_pushed": 1.0, "eval_s": 0.01}


def test_status_and_metrics_become_scalars_at_their_versions_and_wall_times(tmp_path):
    board = open_board(tmp_path, enabled=True)
    board.write(Status(workers_joined=1, workers=2), [])  # waiting for workers: nothing to draw yet
    board.write(_status(0, 0.0, loss=None, staleness_mean=None), [])
    board.write(_status(10, 1.5, loss=0.9, updates_per_s=8.0, staleness_mean=0.5, staleness_max_recent=1), [])
    board.write(_status(10, 2.0, loss=0.1), [_metric(10, 1.6, 0.5)])  # same version: its scalars once only
    busy = dict(loss=0.7, staleness_mean=1.5, staleness_max_recent=3, uplink_bytes=4000, downlink_bytes=9000)
    board.write(_status(30, 4.0, values_clipped=2, ef_drift_max=1e-7, **busy), [_metric(30, 4.2, 0.8)])
    board.close()
    scalars = read_scalars(tmp_path / "tensorboard")
    assert sorted(scalars) == sorted(STATUS_TAGS + ["eval/test_acc", "eval/test_loss", "eval/train_loss"])
    assert [(s, v) for s, _, v in scalars["eval/test_acc"]] == [(10, 0.5), (30, pytest.approx(0.8))]
    assert [s for s, _, _ in scalars["eval/train_loss"]] == [10, 30]
    assert [(s, v) for s, _, v in scalars["train/loss_pushed"]] == [(10, pytest.approx(0.9)), (30, pytest.approx(0.7))]
    assert [s for s, _, _ in scalars["comm/uplink_bytes"]] == [0, 10, 30]
    assert [v for _, _, v in scalars["staleness/max"]] == [1, 3]
    assert scalars["comm/values_clipped"][-1][2] == 2 and scalars["ef/drift_max"][-1][2] == pytest.approx(1e-7)
    # wall time = the run's start + wall_s: TensorBoard's relative time axis is the run's own clock
    t0 = scalars["comm/uplink_bytes"][0][1]
    assert [t - t0 for _, t, _ in scalars["comm/uplink_bytes"]] == pytest.approx([0.0, 1.5, 4.0], abs=1e-3)
    assert [t - t0 for _, t, _ in scalars["eval/test_acc"]] == pytest.approx([1.6, 4.2], abs=1e-3)


def test_a_run_that_never_started_leaves_no_event_file(tmp_path):
    board = open_board(tmp_path, enabled=True)
    board.write(None, [])
    board.write(Status(workers_joined=0, workers=2), [])
    board.close()
    assert not (tmp_path / "tensorboard").exists()


def test_the_watch_loop_writes_the_runs_event_files(tmp_path):
    # stand-in server and evaluator: status.json at version 0, then the final metrics line at UPDATES
    run = StandInRun(make_config(run={"plots": False}), tmp_path, server=["0", "0.3"], worker=["0.1", "0"])
    run.execute()
    scalars = read_scalars(tmp_path / "tensorboard")
    assert [(s, v) for s, _, v in scalars["eval/test_acc"]] == [(UPDATES, 0.5)]
    assert [s for s, _, _ in scalars["comm/uplink_bytes"]] == [0]


def test_run_tensorboard_false_writes_no_event_files(tmp_path):
    cfg = make_config(run={"plots": False, "tensorboard": False})
    run = StandInRun(cfg, tmp_path, server=["0", "0.3"], worker=["0.1", "0"])
    run.execute()
    assert (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "tensorboard").exists()


def test_without_tensorboard_a_run_goes_on_and_says_once_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    monkeypatch.setattr(launch.tensorboard, "_told_missing", False)
    boards = [open_board(tmp_path / str(i), enabled=True) for i in range(2)]  # two points of a sweep
    assert all(isinstance(b, NoBoard) for b in boards)
    boards[0].write(_status(5, 1.0), [_metric(5, 1.0, 0.5)])
    err = capsys.readouterr().err
    assert err.count("tensorboard is not installed") == 1 and "pip install 'taups[tensorboard]'" in err
    assert not (tmp_path / "0").exists()


class FullDiskWriter:
    """A SummaryWriter on a full disk: the folder opens, the first scalar fails."""

    def __init__(self, log_dir, flush_secs):
        pass

    def add_scalar(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_stops_the_event_files_naming_the_folder_and_never_the_run(tmp_path):
    board = launch.tensorboard.Board(tmp_path / "tensorboard", FullDiskWriter)
    board.write(_status(5, 1.0), [])
    board.write(_status(6, 1.1), [_metric(6, 1.1, 0.5)])  # nothing more is tried
    board.close()
    assert board.error == f"could not write {tmp_path / 'tensorboard'}: No space left on device"


def test_the_tail_returns_whole_new_lines_only(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = JsonLinesTail(path)
    assert tail.read_new() == [] and tail.last is None  # no file yet
    path.write_text('{"updates": 1}\n{"updates": 2}\n{"upda')
    assert tail.read_new() == [{"updates": 1}, {"updates": 2}]
    with open(path, "a") as f:
        f.write('tes": 3}\nnot json\n')
    assert tail.read_new() == [{"updates": 3}] and tail.last == {"updates": 3}  # the torn line was waited for
    assert tail.read_new() == [] and tail.last == {"updates": 3}
