"""The launcher's progress line (quick tier): percent done and ETA against run.max_updates or run.max_seconds,
whichever comes first; a tqdm bar on a terminal, one plain line per change anywhere else."""

import io

import pytest

from launch.eta import Estimate, Limits, estimate, version_rate
from launch.progress import Progress, format_line
from protocol.runfolder.records import Status


def _status(version=100, wall_s=10.0, rate=10.0, updates=None, **fields) -> Status:
    updates = version if updates is None else updates
    return Status(version=version, updates=updates, updates_per_s=rate, wall_s=wall_s, started=True, **fields)


def test_max_updates_nearer_sets_percent_and_eta_from_the_current_rate():
    # 200 updates left at 10/s: 20 s; the clock's limit is 590 s away
    assert estimate(_status(), Limits(300, 600.0)) == Estimate(pytest.approx(1 / 3), pytest.approx(20.0), "updates")


def test_max_seconds_nearer_sets_percent_and_eta_from_the_elapsed_time():
    # 900 updates left at 1/s: 900 s; the clock stops the run in 10 s
    assert estimate(_status(rate=1.0, wall_s=50.0), Limits(1000, 60.0)) == Estimate(50 / 60, 10.0, "seconds")


def test_before_a_rate_is_known_only_the_clock_estimates():
    assert estimate(_status(version=0, rate=0.0, wall_s=3.0), Limits(300, 30.0)) == Estimate(0.1, 27.0, "seconds")


def test_at_and_past_a_limit_the_estimate_is_done_not_negative():
    assert estimate(_status(version=300), Limits(300, 600.0)) == Estimate(1.0, 0.0, "updates")
    assert estimate(_status(rate=0.0, wall_s=61.0), Limits(1000, 60.0)) == Estimate(1.0, 0.0, "seconds")


def test_grouped_steps_count_versions_not_pushes():
    # staleness.apply_every 2: 200 applied pushes made version 100; 20 pushes/s are 10 versions/s
    status = _status(version=100, updates=200, rate=20.0)
    assert version_rate(status) == 10.0
    assert estimate(status, Limits(300, 600.0)).eta_s == pytest.approx(20.0)


def test_the_line_shows_percent_eta_and_which_limit_is_nearer():
    line = format_line(_status(loss=0.5, staleness_mean=1.5, staleness_max=4), None, Limits(300, 600.0))
    assert line.startswith("[   10.0s]   33%  ETA 00:20  updates 100/300  (10.0/s)  loss 0.5000")
    assert "staleness mean 1.5 max 4" in line
    line = format_line(_status(rate=1.0, wall_s=50.0), {"updates": 40, "test_acc": 0.9}, Limits(10000, 3700.0))
    assert "  1%  ETA 1:00:50 (max_seconds)  updates 100/10000" in line and line.endswith("test_acc 0.9000 @40")
    assert "33%" not in format_line(_status(), None, Limits(300, 600.0), percent=False)


def test_the_starting_waiting_and_stopping_messages_stay():
    limits = Limits(300, 600.0)
    assert format_line(None, None, limits, starting="starting the workers...") == "starting the workers..."
    assert format_line(Status(workers_joined=2, workers=3), None, limits) == "waiting for workers to join: 2/3"
    stopping = format_line(_status(300, stopping="max_updates"), None, limits)
    assert "100%  stopping (max_updates)  updates 300/300" in stopping


class Terminal(io.StringIO):
    def isatty(self):
        return True


def _show_a_run(stream) -> str:
    progress = Progress(Limits(300, 600.0), every_s=0.0, stream=stream)
    for status in (None, Status(workers_joined=1, workers=3), _status(100), _status(150, wall_s=15.0)):
        progress.show(status, None)
    progress.done()
    progress.done()  # after a failure, then at the end: once is enough
    return stream.getvalue()


def test_a_log_gets_one_plain_line_per_change_with_percent_and_eta():
    lines = _show_a_run(io.StringIO()).split("\n")
    assert "\r" not in "".join(lines) and lines[-1] == ""
    assert lines[:2] == ["starting the server...", "waiting for workers to join: 1/3"]
    assert lines[2].startswith("[   10.0s]   33%  ETA 00:20  updates 100/300")
    assert lines[3].startswith("[   15.0s]   50%  ETA 00:15  updates 150/300")


def test_a_terminal_gets_a_tqdm_bar_redrawn_in_place_and_ended_once(monkeypatch):
    monkeypatch.setenv("COLUMNS", "150")  # the terminal's width, as shutil.get_terminal_size reads it first
    out = _show_a_run(Terminal())
    draws = out.split("\r")
    assert any(d.startswith("starting the server...") for d in draws)
    assert any(d.startswith("waiting for workers to join: 1/3") for d in draws)
    assert any(d.startswith(" 33%|") and "| [   10.0s]  ETA 00:20  updates 100/300" in d for d in draws)
    assert draws[-1].startswith(" 50%|") and draws[-1].endswith("\n") and out.count("\n") == 1


def test_a_log_gets_the_stopping_line_once_with_the_final_evaluation():
    stream = io.StringIO()
    progress = Progress(Limits(300, 600.0), every_s=0.0, stream=stream)
    progress.show(_status(150, wall_s=15.0), None)
    progress.show(_status(300, stopping="max_updates"), {"updates": 280, "test_acc": 0.9})
    progress.show(_status(300, stopping="max_updates"), {"updates": 300, "test_acc": 0.95}, force=True)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and "stopping (max_updates)" in lines[1] and "0.95" in lines[1], lines
