"""TensorBoard event files in RUN/tensorboard/ (`tensorboard --logdir RUN/tensorboard`, or a runs folder).

The launcher's watch loop writes them: it reads status.json and metrics.jsonl every tick anyway, so one process
writes every event and no run process pays for it. Optional: without the tensorboard package a run goes on as
before, and the launcher says once how to get the files; run.tensorboard false turns them off.

Scalars, each at step = the server's version (the `updates` of metrics.jsonl; sync: the step) and wall time =
the run's start + its wall_s (so TensorBoard's relative time is the run's own clock):
  eval/<key>                  every number of a metrics.jsonl line: test_acc, test_loss, train_loss, ...
  train/loss_pushed           the workers' minibatch loss, mean of the most recent applied pushes
  speed/updates_per_s         over the most recent applied pushes
  staleness/mean, /max        over the most recent applied pushes
  comm/uplink_bytes, comm/downlink_bytes, comm/values_clipped      so far
  comm/downlink_gap_max       largest ||x - w_i|| / ||x|| a compressed reply left so far
  ef/drift_max                largest relative float drift of the EF21 mirror so far
The status scalars are written once per new version seen (status.json changes every server.status_every_s).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from launch.writes import WriteError
from protocol.runfolder.records import Status

FOLDER = "tensorboard"
FLUSH_S = 2.0  # a TensorBoard open during the run sees new points within seconds
INSTALL = "pip install 'taups[tensorboard]' (or pip install tensorboard)"
STATUS_SCALARS = {
    "train/loss_pushed": "loss",
    "speed/updates_per_s": "updates_per_s",
    "staleness/mean": "staleness_mean",
    "staleness/max": "staleness_max_recent",
    "comm/uplink_bytes": "uplink_bytes",
    "comm/downlink_bytes": "downlink_bytes",
    "comm/values_clipped": "values_clipped",
    "ef/drift_max": "ef_drift_max",
    "comm/downlink_gap_max": "downlink_gap_max",
}
NOT_SCALARS = {"wall_s", "updates", "final", "eval_s", "train_loss_pushed"}  # the step, clock, flags, or a status'

_told_missing = False  # a sweep runs many points in one launcher: say it once


class EventWriter(Protocol):
    """What a Board writes through: torch.utils.tensorboard's SummaryWriter (a test's stand-in fails)."""

    def add_scalar(self, tag: str, scalar_value: float, global_step: int, walltime: float) -> None: ...

    def close(self) -> None: ...


class NoBoard:
    """What the watch loop writes to when there are no event files to write."""

    error: str | None = None

    def write(self, status: Status | None, metrics: list[dict]) -> None:
        pass

    def close(self) -> None:
        pass


def open_board(run_dir: Path, enabled: bool) -> Board | NoBoard:
    """The run's event-file writer; NoBoard when run.tensorboard is off or tensorboard is not installed."""
    if not enabled:
        return NoBoard()
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it when the tensorboard package is missing
        _tell_missing()
        return NoBoard()
    return Board(run_dir / FOLDER, SummaryWriter)


def _tell_missing() -> None:
    global _told_missing
    if not _told_missing:
        _told_missing = True
        print(f"note: tensorboard is not installed, so no event files are written; {INSTALL}", file=sys.stderr)


class Board:
    """Writes the scalars above into `folder`. A write that fails (a full disk) stops the event files, never
    the run: `error` names the folder, for the run's list of files it could not write."""

    def __init__(self, folder: Path, writer_class: Callable[..., EventWriter]):
        self.folder = folder
        self.error: str | None = None
        self._writer_class = writer_class
        # opened with the first scalar: a run that never starts gets no empty event file
        self._writer: EventWriter | None = None
        self._version = -1  # status.json's version whose scalars were written last
        self._epoch: float | None = None  # Unix time of the run's wall_s 0

    def write(self, status: Status | None, metrics: list[dict]) -> None:
        """The status's scalars if it is of a new version, and every metrics line given."""
        if self.error is not None:
            return
        try:
            if status is not None and status.started and status.version > self._version:
                self._version = status.version
                values = {tag: getattr(status, name) for tag, name in STATUS_SCALARS.items()}
                self._scalars(values, status.version, status.wall_s)
            for line in metrics:
                if _is_number(line.get("updates")) and _is_number(line.get("wall_s")):  # else not the evaluator's
                    values = {f"eval/{key}": value for key, value in line.items() if key not in NOT_SCALARS}
                    self._scalars(values, line["updates"], line["wall_s"])
        except OSError as err:
            self._fail(err)

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            except OSError as err:
                self._fail(err)

    def _scalars(self, values: dict, step: int, wall_s: float) -> None:
        if self._writer is None:
            self._writer = self._writer_class(log_dir=str(self.folder), flush_secs=FLUSH_S)
        if self._epoch is None:
            # wall_s counts from the start of training, which the launcher does not see: the first record read
            # dates it, within a tick and a status.json period
            self._epoch = time.time() - wall_s
        for tag, value in values.items():
            if _is_number(value):  # None: not measured (no loss pushed yet, no accuracy for a regression)
                self._writer.add_scalar(tag, value, global_step=step, walltime=self._epoch + wall_s)

    def _fail(self, err: OSError) -> None:
        if self.error is None:
            self.error = str(WriteError(self.folder, err))
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(OSError):  # it ends its background thread, raising the same error again
                writer.close()


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
