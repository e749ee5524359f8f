"""Several worker ranks in one OS process (worker.per_process): one thread per rank.

Each rank is a complete worker -- its own WorkerLoop, task (model and flat buffers), DEALER socket, sampling
and compressor streams seeded by its rank -- exactly as if it had its own process; only the interpreter, the
torch thread pool, the ZeroMQ context and a loaded data set are shared. The loops are built one after
another in the calling thread (a task seeds torch's global generator to build the initial model, so they
must not race), then each runs on a thread named worker<rank>. On 2 cores this lets 100 workers of a tiny
model run without 100 interpreters each importing torch; the GIL serialises their Python, which for tiny
models is where the time goes anyway.

The host ends when every rank has ended. A rank that fails (exit code 1) makes the host cancel the others,
which leave at their next step or within CANCEL_POLL_S of waiting; so does a cancel() from a signal
handler. The process's exit code is the first failure's, else 143 after a cancel, else 0.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from dataclasses import dataclass

import torch

from protocol.config.schema import ExperimentConfig
from protocol.runfolder.records import WorkerReport
from protocol.wire.channel import Channel
from protocol.wire.curve import WorkerKeys
from worker.loop import Cancelled, WorkerError, WorkerLoop, worker_channel
from worker.shards import make_loop
from worker.tasks import Task, build_spec
from worker.tasks.task import another_rank

log = logging.getLogger("worker")
EXIT_CANCELLED = 143  # as a process killed by SIGTERM reports it
CANCEL_GRACE_S = 2.5  # after a cancel, how long the ranks get to leave (the launcher kills after 3 s)


@dataclass
class RankResult:
    rank: int
    code: int  # 0 stopped by the server, 1 failed, EXIT_CANCELLED asked to leave
    error: str = ""
    stats: WorkerReport | None = None
    still_running: bool = False  # did not leave within CANCEL_GRACE_S of a cancel


class RankHost:
    def __init__(
        self,
        cfg: ExperimentConfig,
        ranks: list[int],
        endpoints: str | list[str],  # one per server shard, in shard order
        run_id: str = "",
        keys: dict[int, WorkerKeys] | None = None,
    ):
        self.cfg = cfg
        endpoints = [endpoints] if isinstance(endpoints, str) else endpoints
        self.cancel_event = threading.Event()
        self._done: queue.Queue[RankResult] = queue.Queue()
        self.results: list[RankResult] = []
        self._deadline: float | None = None
        self.threads: list[threading.Thread] = []
        self.channels: list[Channel] = []
        self.loops: list[WorkerLoop] = []
        spec = build_spec(cfg)  # the factory runs once; every rank gets its own model, all share the data
        specs = [spec, *(another_rank(spec) for _ in ranks[1:])]  # copied before any Task flattens one
        for rank, rank_spec in zip(ranks, specs):
            task = Task(cfg, device=cfg.device_of(rank, torch.cuda.device_count()), spec=rank_spec)
            chans = [worker_channel(cfg, rank, (keys or {}).get(rank)) for _ in endpoints]  # one per server shard
            for chan, endpoint in zip(chans, endpoints):
                chan.connect(endpoint)
            self.channels += chans
            self.loops.append(make_loop(cfg, rank, chans, task, run_id, self.cancel_event))

    def cancel(self) -> None:
        """Ask every rank to leave; safe from a signal handler (it only sets an event)."""
        self.cancel_event.set()

    def start(self) -> None:
        self.threads = [
            threading.Thread(target=self._run_rank, args=(loop,), name=f"worker{loop.rank}", daemon=True)
            for loop in self.loops
        ]
        for t in self.threads:
            t.start()

    def wait(self) -> list[RankResult]:
        """Wait until every rank has ended; returns their results in the order they ended.

        May be called again after an interruption (KeyboardInterrupt) to go on waiting. A rank still running
        CANCEL_GRACE_S after a cancel is reported with still_running and left behind (its thread is a
        daemon): the caller should then exit the process rather than wait for it."""
        while len(self.results) < len(self.loops):
            if self._deadline is None and self.cancel_event.is_set():
                self._deadline = time.monotonic() + CANCEL_GRACE_S
            if self._deadline is not None and time.monotonic() > self._deadline:
                ended = {r.rank for r in self.results}
                self.results += [
                    RankResult(loop.rank, EXIT_CANCELLED, "did not leave in time", still_running=True)
                    for loop in self.loops
                    if loop.rank not in ended
                ]
                break
            try:
                result = self._done.get(timeout=0.2)  # short waits: signal handlers run in between
            except queue.Empty:
                continue
            self.results.append(result)
            if result.code not in (0, EXIT_CANCELLED):
                self.cancel()  # one rank failed: the process fails, the others need not go on
        return self.results

    def close(self) -> None:
        for chan in self.channels:
            chan.close()

    def _run_rank(self, loop: WorkerLoop) -> None:
        try:
            result = RankResult(loop.rank, 0, stats=loop.run())
        except Cancelled:
            result = RankResult(loop.rank, EXIT_CANCELLED, "cancelled", loop.stats)
        except WorkerError as err:
            result = RankResult(loop.rank, 1, str(err), loop.stats)
        except Exception as err:  # a bug: say where, and let the process fail naming this rank
            log.error("rank %d crashed:\n%s", loop.rank, traceback.format_exc())
            result = RankResult(loop.rank, 1, f"{type(err).__name__}: {err}", loop.stats)
        self._done.put(result)


def exit_code(results: list[RankResult]) -> int:
    """The first failure's code, else EXIT_CANCELLED if any rank was cancelled, else 0."""
    failed = [r.code for r in results if r.code not in (0, EXIT_CANCELLED)]
    if failed:
        return failed[0]
    return EXIT_CANCELLED if any(r.code == EXIT_CANCELLED for r in results) else 0
