"""What every mode of a run shares: supervision, the progress line, psutil samples (processes.csv), TensorBoard
event files (launch/tensorboard.py), naming a failure, stop signals, the 'finish after failure' path, plots and
summary.json. The modes are in run.py.

execute(): train (start the processes; watch them: any child dying -> a failure naming it, SIGINT/SIGTERM/SIGHUP
    to the launcher -> a stop; the evaluator scores the final snapshot) -> if that did not end normally, finish
    after failure (launch/shutdown.py: the children stop in order, each with the time it needs to leave its
    results) -> conclude (processes.csv and event files closed, plots, summary.json with status and failure) ->
    return the summary, or raise RunFailed / Stopped. A write the launcher cannot do is named, never raised over
    the outcome.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from launch.eta import Limits
from launch.outcome import Outcome, RunFailed
from launch.proclog import ProcessLog
from launch.progress import Progress
from launch.restarts import Restarts
from launch.shutdown import Stage, let_evaluator_finish, stop_in_order
from launch.signals import Stopped, StopSignals
from launch.summary import build_summary
from launch.supervisor import Child, Supervisor
from launch.tail import JsonLinesTail
from launch.tensorboard import open_board
from launch.writes import WriteError, write_record_file
from protocol.config.schema import ExperimentConfig
from protocol.runfolder.records import RunSummary, Status, read_record
from protocol.wire.shm import remove_segments

TICK_S = 0.2
FINISH_TIMEOUT_S = 60.0  # evaluator scoring the final snapshot


class Run:
    """What every mode shares: supervision, progress, psutil samples, naming a failure, the stop after a
    failure or a signal, summary and plots."""

    starting = "starting..."  # the progress line before the first status.json

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, quiet: bool = False, signals: StopSignals | None = None):
        self.cfg = cfg
        self.run_dir = run_dir
        self.config_path = run_dir / "config.yaml"
        self.signals = signals or StopSignals()  # not entered: nothing installed, check() never raises
        self.sup = Supervisor(run_dir / "logs", fork_server=cfg.run.fork_server, check_stop=self.signals.check)
        limits = Limits(cfg.run.max_updates, cfg.run.max_seconds)
        self.progress = Progress(limits, cfg.run.progress_every_s, starting=self.starting)
        self.quiet = quiet
        self.proc_log = ProcessLog(run_dir / "processes.csv")
        self.metrics = JsonLinesTail(run_dir / "metrics.jsonl")
        self.board = open_board(run_dir, cfg.run.tensorboard)  # says once when tensorboard is not installed
        self.write_errors: list[str] = []  # the launcher's own failed writes, each naming its file
        self._exit_seen: dict[str, int] = {}  # child name -> watch tick at which it was first seen exited
        self.restarts = Restarts(cfg.run.max_restarts)
        self.t0 = time.monotonic()

    def execute(self) -> RunSummary:
        """Run to the end and return summary.json's content. A failed or stopped run still finishes its run
        folder, then raises RunFailed or Stopped; so does a run whose own files could not be written."""
        try:
            outcome = self._train()
            if not outcome.ok:
                # run.max_restarts would decide here: restart the dead child and watch on, or finish.
                self._finish_after_failure(outcome)
            summary = self._conclude(outcome)
        finally:
            self.sup.terminate_all()  # a bug in the launcher itself must not leave children behind
            self.sup.close()
            # shared memory a killed server could not unlink; only a dead writer's: the run id is the folder's
            # name, so another live run in a folder of the same name (a/run, b/run) has the same prefix
            remove_segments(self.run_dir.name, only_dead=True)
        self._report_write_errors(outcome)
        outcome.raise_unless_ok()
        return summary

    def _train(self) -> Outcome:
        try:
            self.sup.warm()  # the fork server imports torch while _start builds and writes the model
            self._start()
            self._watch()
            self._stop_workers()
            self._finish_evaluation()
        except (RunFailed, WriteError) as err:
            return Outcome.failed(str(err))
        except Stopped as stopped:
            return Outcome.by_signal(stopped)
        except KeyboardInterrupt:  # run without StopSignals entered (e.g. run_experiment from Python)
            return Outcome.by_signal(Stopped(signal.SIGINT))
        return Outcome()

    def _finish_after_failure(self, outcome: Outcome) -> None:
        """Stop every child in order, giving each the time to leave its results, then let the evaluator
        score the final snapshot if one was written. Signals arriving meanwhile are only noted."""
        self._end_progress()
        why = outcome.failure if outcome.stopped else "the run failed"
        self._say(f"{why}: stopping every process in order")
        stop_in_order(self.sup, self._stop_order(), self._say)
        self._after_stop()
        let_evaluator_finish(self.sup, self.run_dir, FINISH_TIMEOUT_S, self._say)

    def _conclude(self, outcome: Outcome) -> RunSummary:
        """processes.csv and the event files closed, plots (if run.plots), then summary.json, which lists the
        writes that failed."""
        self.proc_log.close()
        self._close_board()
        self._end_progress()
        if self.proc_log.error:
            self.write_errors.append(self.proc_log.error)
        if self.cfg.run.plots:
            self._draw_plots(outcome)
        summary = build_summary(self.run_dir, self.cfg, self.sup.process_summary(), outcome, self.write_errors)
        summary.restarts = dict(self.restarts.counts)
        try:
            write_record_file(self.run_dir / "summary.json", summary)
        except WriteError as err:
            self.write_errors.append(str(err))
        return summary

    def _draw_plots(self, outcome: Outcome) -> None:
        from launch.plots import plot_run  # matplotlib only now: its import is not on the way to the first update

        try:
            plot_run(self.run_dir)
        except WriteError as err:
            self.write_errors.append(str(err))
        except Exception as err:
            if outcome.ok:
                raise
            # whatever a failed run left half-written must not turn its error into a plotting traceback
            self._say(f"warning: plots not drawn: {type(err).__name__}: {err}")

    def _report_write_errors(self, outcome: Outcome) -> None:
        """A run that ended normally but could not leave its files fails, naming them; after a failure or a
        signal they are warnings printed before the launcher's last line, which stays the run's own error."""
        if not self.write_errors:
            return
        if outcome.ok:
            raise RunFailed("the run ended normally, but its folder is incomplete: " + "; ".join(self.write_errors))
        for err in self.write_errors:
            print(f"warning: {err}", file=sys.stderr, flush=True)

    def _say(self, text: str) -> None:
        """A line about the stop on stderr (even with --quiet: it explains why the launcher is still busy)."""
        print(text, file=sys.stderr, flush=True)

    def _end_progress(self) -> None:
        if not self.quiet:
            self.progress.done()

    # -- what each mode defines ------------------------------------------------------------------------------
    def _start(self) -> None:
        raise NotImplementedError

    def _training_over(self) -> bool:
        raise NotImplementedError

    def _hard_limit_s(self) -> float:
        raise NotImplementedError

    def _stop_workers(self) -> None:
        """After training: make sure no worker is left running."""

    def _stop_order(self) -> list[Stage]:
        """After a failure or a signal: the children to stop, stage by stage, each stage with its grace."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------------------
    def _start_evaluator(self) -> None:
        self.sup.start(
            "evaluator", "launch.evaluate", ["--config", str(self.config_path), "--run-dir", str(self.run_dir)]
        )

    def _watch(self) -> None:
        hard_limit, tick = self._hard_limit_s(), 0
        while True:
            self.signals.check()
            self._sample()
            tick += 1
            for child in self.sup.exited():
                self._exit_seen.setdefault(child.name, tick)
            dead = [c for c in self.sup.exited() if c.returncode != 0 and not self.restarts.waiting(c.name)]
            failed = [c for c in dead if not self._schedule_restart(c)]
            if failed:
                self._fail(self._first_cause(failed), "during the run", failed)
            for name in self.restarts.ready(time.monotonic()):
                self._restart(name)
            if self._training_over():
                return
            if time.monotonic() - self.t0 > hard_limit:
                raise RunFailed(f"the run did not end within {hard_limit:.0f}s (max_seconds + grace); stopped it")
            time.sleep(TICK_S)

    def _schedule_restart(self, child: Child) -> bool:
        """run.max_restarts: a dead child is restarted after a backoff, unless its restarts are used up. One the
        fork server's death ended is not: every role went with it, and a worker restarted while the server still
        stops (it got SIGTERM too) would be told Stop, exit 0 and count as done, leaving a run that trains on
        with no worker and ends 'ok'."""
        restartable = self._restartable(child.name) and not child.orphaned
        delay = self.restarts.take(child.name, time.monotonic()) if restartable else None
        if delay is None:
            return False
        n, limit = self.restarts.counts[child.name], self.cfg.run.max_restarts
        self._say(
            f"{child.name} (pid {child.pid}) {child.describe_exit()}; restarting it in {delay:g}s ({n} of {limit})"
        )
        return True

    def _restart(self, name: str) -> None:
        module, args, env = self.sup.children[name].command
        self.sup.start(name, module, self._restart_args(name, args), env, append=True)

    def _restartable(self, name: str) -> bool:
        return False

    def _after_stop(self) -> None:
        """After a failure, once every child has stopped: what the mode puts together from their files."""

    def _restart_args(self, name: str, args: list[str]) -> list[str]:
        return args

    def _first_cause(self, failed: list[Child]) -> Child:
        """The child whose failure started it: one killed by a signal, else the first seen to exit.

        In a process group one dead rank makes its peers fail too; the peers are consequences."""
        return min(failed, key=lambda c: (not c.killed, self._exit_seen.get(c.name, 0)))

    def _wait(self, names: list[str], timeout_s: float) -> bool:
        """Supervisor.wait in ticks, so that a stop signal is acted on within one."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.signals.check()
            if self.sup.wait(names, min(TICK_S, max(0.0, deadline - time.monotonic()))):
                return True
            if time.monotonic() >= deadline:
                return False

    def _finish_evaluation(self) -> None:
        if not self._wait(["evaluator"], FINISH_TIMEOUT_S):
            raise RunFailed(f"the evaluator did not score the final snapshot within {FINISH_TIMEOUT_S:.0f}s")
        evaluator = self.sup.children["evaluator"]
        if evaluator.returncode != 0:
            self._fail(evaluator, "while scoring the final snapshot")
        self._sample(force_progress=True)

    def _sample(self, force_progress: bool = False) -> None:
        wall = time.monotonic() - self.t0
        for name, pid, cpu, rss in self.sup.sample():
            self.proc_log.row(wall, name, pid, cpu, rss)
        status = read_record(Status, self.run_dir / "status.json")
        self.board.write(status, self.metrics.read_new())
        if not self.quiet:
            self.progress.show(status, self.metrics.last, force=force_progress)

    def _close_board(self) -> None:
        """What the run wrote since the last tick (after a failure, the evaluator's last line), then close."""
        self.board.write(read_record(Status, self.run_dir / "status.json"), self.metrics.read_new())
        self.board.close()
        if self.board.error:
            self.write_errors.append(self.board.error)

    def _fail(self, child: Child, when: str, failed: list[Child] | None = None) -> None:
        also = [f"{c.name} {c.describe_exit()}" for c in failed or [] if c is not child]
        then = f"\n(after it: {'; '.join(also)})" if also else ""
        raise RunFailed(
            f"{child.name} (pid {child.pid}) {child.describe_exit()} {when}; "
            f"last lines of {child.log_path}:\n{child.log_tail()}{then}"
        )

    def _workers(self) -> list[str]:
        return [n for n in self.sup.children if n.startswith("worker")]
