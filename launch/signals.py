"""SIGINT, SIGTERM and SIGHUP to the launcher: noted by a handler, acted on by the run at a safe point.

The children run in their own sessions, so a Ctrl-C in the terminal, `kill`, `timeout`, a docker or systemd
stop, a CI cancel or a closed terminal reach only the launcher. Dying there would leave every child training
until max_seconds; instead the handler only records the signal (raising from a handler could land in the
middle of a file write or of the teardown itself), and the run checks it on every tick and wait, then stops
its children in order and leaves its summary marked interrupted or terminated.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(BaseException):
    """The launcher was asked to stop by a signal. A BaseException, like KeyboardInterrupt: code that
    catches Exception (a sweep point's bug guard) must not swallow it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(self.describe())

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what a shell reports for a process killed by the signal: 130, 143, 129

    @property
    def status(self) -> str:
        """summary.json's status: Ctrl-C is an interruption, anything else a termination from outside."""
        return "interrupted" if self.signum == signal.SIGINT else "terminated"

    def describe(self) -> str:
        return f"stopped by {self.name}"


class StopSignals:
    """Context manager: while entered (main thread only), the stop signals are recorded instead of killing
    the process or raising KeyboardInterrupt; `check()` raises Stopped once one arrived. A signal the launcher
    was started with ignored stays ignored: `nohup python -m launch ...` keeps training when its terminal
    closes.

    Entered outside the main thread (where Python allows no handlers) it installs nothing; setting `signum`
    by hand simulates a signal, which is how quick tests drive the stop path."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) is signal.SIG_IGN:
                    continue  # ignored on purpose (nohup: SIGHUP; a shell's background job: SIGINT): left so
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _record(self, signum: int, frame: object) -> None:
        if self.signum is None:  # the first one decides the exit code; repeats change nothing
            self.signum = signum

    def received(self) -> Stopped | None:
        return Stopped(self.signum) if self.signum is not None else None

    def check(self) -> None:
        stopped = self.received()
        if stopped is not None:
            raise stopped
