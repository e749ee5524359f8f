"""How a run ends when it does not end normally (quick tier): the real launcher (AsyncRun) with stand-in
children (tests/fake_child.py) that start in a blink, so only the launcher's stop paths are timed."""

import errno
import functools
import os
import signal
import threading
import time

import pytest

from launch.inproc import make_config
from launch.outcome import RunFailed
from launch.proclog import ProcessLog
from launch.run import AsyncRun
from launch.signals import Stopped, StopSignals
from launch.writes import WriteError
from protocol.runfolder.records import RunSummary, read_record
from tests.fake_child import UPDATES

FULL = OSError(errno.ENOSPC, "No space left on device")


class StandInRun(AsyncRun):
    """AsyncRun whose children are stand-ins; everything but _start is the launcher's own code."""

    def __init__(self, cfg, run_dir, server=("0",), worker=("60", "0"), **kw):
        super().__init__(cfg, run_dir, quiet=True, **kw)
        self.server_args, self.worker_args = list(server), list(worker)

    def _start(self) -> None:
        self.sup.start("server", "tests.fake_child", ["server", str(self.run_dir), *self.server_args])
        self.sup.start("evaluator", "tests.fake_child", ["evaluator", str(self.run_dir)])
        self.sup.start("worker0", "tests.fake_child", ["worker", *self.worker_args])


def _cfg(stop_grace_s=1.0, plots=False):
    return make_config(server={"stop_grace_s": stop_grace_s}, run={"plots": plots})


def _summary(run_dir) -> RunSummary:
    s = read_record(RunSummary, run_dir / "summary.json")
    assert s is not None, "no summary.json"
    return s


def test_a_failed_run_gives_the_server_its_stop_grace_and_keeps_its_results(tmp_path):
    # the server needs 3.5 s to write its results: more than the 3 s after which the launcher used to SIGKILL it
    run = StandInRun(_cfg(stop_grace_s=4.0), tmp_path, server=["3.5"], worker=["0.2", "1"])
    with pytest.raises(RunFailed, match=r"worker0 \(pid \d+\) exited with code 1 during the run"):
        run.execute()
    s = _summary(tmp_path)
    assert s.status == "failed" and s.failure.startswith("worker0 (pid")
    assert s.processes["server"]["exit"] == 3, "the server was killed instead of stopping cleanly"
    assert s.updates == UPDATES and s.stop_reason == "terminated"  # from its server_summary.json
    assert s.final_test_acc == 0.5 and s.processes["evaluator"]["exit"] == 0  # final.safetensors was scored
    assert (tmp_path / "snapshots" / "final.safetensors").exists()


def _signal_when_ready(log, signals: StopSignals, sig: int, timeout_s: float = 60.0) -> None:
    """Note the signal once the stand-in worker said it has its SIGTERM handler (on a loaded machine a fixed
    delay could beat its start, and it would die by the signal instead of leaving with 143)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (log.exists() and "ready" in log.read_text()):
        time.sleep(0.02)
    signals.signum = sig


@pytest.mark.parametrize(
    "sig, status, code",
    [(signal.SIGINT, "interrupted", 130), (signal.SIGTERM, "terminated", 143), (signal.SIGHUP, "terminated", 129)],
)
def test_a_stop_signal_stops_every_child_and_marks_the_summary(tmp_path, sig, status, code):
    signals = StopSignals()  # not entered: the thread plays the handler, once the worker can take a SIGTERM
    threading.Thread(target=_signal_when_ready, args=(tmp_path / "logs" / "worker0.log", signals, sig)).start()
    run = StandInRun(_cfg(), tmp_path, signals=signals)
    with pytest.raises(Stopped) as stopped:
        run.execute()
    assert stopped.value.exit_code == code and stopped.value.status == status
    assert all(c.returncode is not None for c in run.sup.children.values())
    s = _summary(tmp_path)
    assert s.status == status and s.failure == f"stopped by {signal.Signals(sig).name}"
    assert s.processes["worker0"]["exit"] == 143  # asked to leave (SIGTERM), not killed
    assert s.updates == UPDATES and s.final_test_acc == 0.5


def test_stop_signals_are_noted_instead_of_ending_the_launcher_and_then_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGHUP)  # a second signal does not change the first
        with pytest.raises(Stopped) as stopped:
            signals.check()
    assert stopped.value.signum == signal.SIGTERM and stopped.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_signal_the_launcher_was_started_ignoring_stays_ignored():
    """nohup starts the launcher with SIGHUP ignored: closing the terminal must not stop the run."""
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with StopSignals() as signals:
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            signals.check()  # nothing was noted: no Stopped
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # the others are still taken
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


class FullDisk:
    """A file on a full disk: the first write that reaches the disk fails."""

    def __init__(self, *args, **kwargs):
        pass

    def write(self, text):
        raise FULL

    def close(self):
        pass


def _fill_the_disk(monkeypatch):
    """processes.csv, the plots and summary.json all meet a full disk."""
    monkeypatch.setattr("launch.runner.ProcessLog", functools.partial(ProcessLog, opener=FullDisk))
    monkeypatch.setattr("matplotlib.figure.Figure.savefig", lambda *a, **k: (_ for _ in ()).throw(FULL))

    def no_summary(path, record):
        raise WriteError(path, FULL)

    monkeypatch.setattr("launch.runner.write_record_file", no_summary)


def test_a_full_disk_is_named_file_by_file_without_hiding_the_runs_failure(tmp_path, monkeypatch, capsys):
    _fill_the_disk(monkeypatch)
    run = StandInRun(_cfg(plots=True), tmp_path, worker=["0.2", "1"])
    with pytest.raises(RunFailed, match="^worker0 .* exited with code 1") as failed:
        run.execute()
    assert "could not write" not in str(failed.value)  # the run's own failure stays the error
    err = capsys.readouterr().err
    for name in ("processes.csv", "plots/metrics.png", "summary.json"):
        assert f"warning: could not write {tmp_path / name}: No space left on device" in err, (name, err)


def test_a_normal_run_that_cannot_write_its_summary_fails_naming_the_file(tmp_path, monkeypatch):
    _fill_the_disk(monkeypatch)
    run = StandInRun(_cfg(), tmp_path, server=["0", "0.3"], worker=["0.1", "0"])  # ends by itself, exit 0
    with pytest.raises(RunFailed) as failed:
        run.execute()
    message = str(failed.value)
    assert message.startswith("the run ended normally, but its folder is incomplete: ")
    assert f"could not write {tmp_path / 'processes.csv'}: No space left on device" in message
    assert f"could not write {tmp_path / 'summary.json'}: No space left on device" in message


def test_processes_csv_keeps_the_first_write_error_naming_the_file_and_never_raises(tmp_path):
    log = ProcessLog(tmp_path / "processes.csv", opener=FullDisk)
    log.row(0.5, "server", 1, 1.0, 2**20)
    log.close()
    assert log.error == f"could not write {tmp_path / 'processes.csv'}: No space left on device"

    class FailsOnFlush(FullDisk):
        def write(self, text):
            pass

        def close(self):
            raise FULL

    log = ProcessLog(tmp_path / "processes.csv", opener=FailsOnFlush)
    log.row(0.5, "server", 1, 1.0, 2**20)
    log.close()
    assert log.error == f"could not write {tmp_path / 'processes.csv'}: No space left on device"
