"""Several worker ranks in one process (worker.per_process, worker/host.py): grouping, the --ranks argument,
and real WorkerLoops on threads against an in-process server (finishing, cancelling, one rank failing)."""

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launch.inproc import make_config, running_server
from launch.run import worker_process
from protocol.errors import ConfigError
from worker.__main__ import parse_ranks, ready_run_dir, spans
from worker.host import CANCEL_GRACE_S, EXIT_CANCELLED, RankHost, RankResult, exit_code

ROOT = Path(__file__).resolve().parent.parent


def quadratic(workers: int, updates: int, **more):
    return make_config(
        workers=workers,
        task={"dataset": "synthetic", "batch_size": 1, "synthetic": {"kind": "quadratic", "dim": 20, "noise": 1.0}},
        optimizer={"name": "sgd", "lr": 0.05},
        run={"max_updates": updates},
        compression={"method": "ef21-sgdm", "compressor": "topk", "k": 1},
        server={"stop_grace_s": 2, "join_timeout_s": 30},
        **more,
    )


@pytest.mark.parametrize(
    "workers,k,blocks",
    [
        (6, 3, [(0, 3), (3, 6)]),
        (100, 34, [(0, 33), (33, 66), (66, 100)]),  # ceil(100/34) = 3 processes, as even as possible
        (10, 4, [(0, 3), (3, 6), (6, 10)]),
        (3, 1, [(0, 1), (1, 2), (2, 3)]),
        (2, 8, [(0, 2)]),  # more per process than workers: one process
    ],
)
def test_worker_processes_are_even_blocks_of_at_most_per_process(workers, k, blocks):
    cfg = make_config(workers=workers, worker={"per_process": k})
    got = cfg.worker_processes()
    assert [(r.start, r.stop) for r in got] == blocks
    assert all(len(r) <= k for r in got) and len(got) == -(-workers // k)


def test_process_names_and_rank_arguments():
    assert worker_process(range(3, 4)) == ("worker3", ["--rank", "3"])
    assert worker_process(range(33, 66)) == ("workers33-65", ["--ranks", "33-65"])
    assert parse_ranks("33-65") == list(range(33, 66)) and parse_ranks("7") == [7]
    for bad in ("5-3", "a-b", "1-", "-2"):
        with pytest.raises(ConfigError):
            parse_ranks(bad)
    assert spans([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"


def test_exit_code_is_the_first_failure_then_cancelled_then_zero():
    assert exit_code([RankResult(0, 0), RankResult(1, 0)]) == 0
    assert exit_code([RankResult(0, 0), RankResult(1, EXIT_CANCELLED)]) == EXIT_CANCELLED
    assert exit_code([RankResult(0, EXIT_CANCELLED), RankResult(2, 1), RankResult(1, 2)]) == 1


def test_worker_refuses_bad_ranks_before_starting(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "--config",
            str(ROOT / "configs" / "tiny.yaml"),
            "--ranks",
            "1-3",
            "--server",
            "tcp://127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 2 and "--ranks" in out.stderr and "3 is outside 0..2" in out.stderr


def test_the_run_dir_is_made_at_the_start_and_one_that_cannot_be_is_refused_then(tmp_path):
    """A hand-started worker's --run-dir need not exist (worker-<rank>.json used to fail at the very end)."""
    ready_run_dir(tmp_path / "w0" / "nested")
    assert (tmp_path / "w0" / "nested").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        ready_run_dir(tmp_path / "file")
    out = subprocess.run(
        [sys.executable, "-m", "worker", "--config", str(ROOT / "configs" / "tiny.yaml"), "--rank", "0"]
        + ["--server", "tcp://127.0.0.1:9", "--run-dir", str(tmp_path / "file")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 2 and str(tmp_path / "file") in out.stderr, out.stderr


def test_three_ranks_on_threads_train_to_the_end_with_consistent_counts():
    cfg = quadratic(3, 60, staleness={"apply_every": 3, "barrier": True})
    with running_server(cfg) as (server, endpoint, result):
        host = RankHost(cfg, [0, 1, 2], endpoint)
        host.start()
        results = host.wait()
        host.close()
        deadline = time.monotonic() + 10
        while not result and time.monotonic() < deadline:
            time.sleep(0.05)
    assert sorted(r.rank for r in results) == [0, 1, 2] and exit_code(results) == 0
    assert {t.name for t in host.threads} == {"worker0", "worker1", "worker2"}
    assert result["updates"] == 60 and result["pushes_applied"] == 180  # one push per rank per round
    assert all(r.stats.applied == 60 for r in results)
    assert {r.stats.stop_reason for r in results} == {"max_updates"}


def test_cancel_makes_every_rank_leave_promptly():
    cfg = quadratic(2, 10**9)
    with running_server(cfg) as (server, endpoint, _):
        host = RankHost(cfg, [0, 1], endpoint)
        host.start()
        while server.version < 20:
            time.sleep(0.01)
        t0 = time.monotonic()
        threading.Timer(0, host.cancel).start()
        results = host.wait()
        host.close()
    assert time.monotonic() - t0 < CANCEL_GRACE_S
    assert [r.code for r in results] == [EXIT_CANCELLED] * 2 and exit_code(results) == EXIT_CANCELLED
    assert not any(r.still_running for r in results)


def test_one_failing_rank_stops_the_others_and_names_itself():
    cfg = quadratic(2, 100)
    with running_server(cfg) as (_, endpoint, _):
        host = RankHost(cfg, [0, 1], endpoint)
        host.loops[1].rank = 7  # the server refuses it: unknown_rank; rank 0 waits for a peer that never joins
        host.start()
        results = host.wait()
        host.close()
    by_rank = {r.rank: r for r in results}
    assert by_rank[7].code == 1 and "unknown_rank" in by_rank[7].error
    assert by_rank[0].code == EXIT_CANCELLED
    assert exit_code(results) == 1
