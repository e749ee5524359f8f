"""Compressed downlink (server.downlink topk; docs/design.md, Compressed downlink): the server's record of each
worker's copy and the worker's copy stay equal bit for bit through lost, passed-over and duplicated answers;
the copy tracks the parameters within the Top-K error; a run moves far fewer bytes down and still learns, on
one server and on shards."""

from __future__ import annotations

import contextlib
import threading

import pytest
import torch

from launch.handoff import initial_model
from protocol.errors import ConfigError
from protocol.wire.channel import Channel
from protocol.wire.messages import Reply, Welcome
from ps.downlink import GAP_EVERY, Downlink
from ps.replies import wire_indices
from tests.helpers import make_config, running_server
from worker import downlink as worker_downlink
from worker.loop import WorkerLoop
from worker.shards import ShardedLoop

D = 5000


def _reply(answer, params: torch.Tensor) -> Reply:
    """The Reply ps/replies.py builds for `answer` (a reset carries the parameters, a delta its tensors)."""
    reply = Reply(True, "applied", 0, 1, 1e-3, copy_id=answer.copy_id, copy_base=answer.copy_base)
    if answer.indices is None:
        reply.params = params.clone()
    else:
        reply.indices, reply.values = wire_indices(answer.indices), answer.values.clone()
    return reply


def _walk(gen: torch.Generator, x: torch.Tensor) -> None:
    x.add_(torch.randn(x.numel(), generator=gen) * 0.01)  # a step of the server's parameters


def test_the_copy_and_the_servers_record_of_it_stay_equal_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    x, mine, named = torch.randn(D, generator=gen), torch.zeros(D), -1
    down = Downlink(D, 0.02)
    for _ in range(60):
        _walk(gen, x)
        named = worker_downlink.take(_reply(down.answer(3, named, x), x), mine, named)
        down.answer(3, named, x)  # the next push names the copy: the server settles its record
        record = down._copies[3]
        assert record.committed == named
        assert torch.equal(record.w, mine)
        record.pending = None  # that answer was never sent: the worker's copy is still `named`
    assert down.resets == 1 and down.deltas > 60
    assert 0 < down.gap_max < 1


def test_a_lost_or_passed_over_answer_leaves_the_record_as_the_worker_has_it():
    gen = torch.Generator().manual_seed(1)
    x, mine = torch.randn(D, generator=gen), torch.zeros(D)
    down = Downlink(D, 0.05)
    named = worker_downlink.take(_reply(down.answer(0, -1, x), x), mine, -1)
    _walk(gen, x)
    lost = down.answer(0, named, x)  # never reaches the worker
    assert lost.indices is not None and lost.copy_base == named
    _walk(gen, x)
    again = down.answer(0, named, x)  # the worker's next push still names its copy: a delta from it, not a reset
    assert again.indices is not None and again.copy_base == named and again.copy_id != lost.copy_id
    named = worker_downlink.take(_reply(again, x), mine, named)
    down.answer(0, named, x)
    assert torch.equal(down._copies[0].w, mine)


def test_a_copy_the_server_cannot_account_for_gets_the_parameters_whole():
    gen = torch.Generator().manual_seed(2)
    x, mine = torch.randn(D, generator=gen), torch.zeros(D)
    down = Downlink(D, 0.05)
    first = down.answer(0, -1, x)
    named = worker_downlink.take(_reply(first, x), mine, -1)
    assert first.indices is None and named == first.copy_id and torch.equal(mine, x)
    down.answer(0, named, x)  # a delta, pending
    second = down.answer(0, named, x)  # a resent push answered twice: the first answer is the one taken
    assert second.indices is not None
    for stray in (named + 1000, -1):  # an id from another answer, or none (a restarted worker)
        assert down.answer(0, stray, x).indices is None
    down.forget(0)  # the rank left
    assert down.answer(0, named, x).indices is None


def test_the_worker_applies_only_a_delta_for_the_copy_it_holds():
    x, mine = torch.arange(8, dtype=torch.float32), torch.zeros(8)
    delta = Reply(True, "applied", 0, 2, 1e-3, copy_id=9, copy_base=4, indices=torch.tensor([1, 5], dtype=torch.int32),
                  values=torch.tensor([0.5, -2.0]))  # fmt: skip
    assert worker_downlink.take(delta, mine, 3) == -1 and torch.equal(mine, torch.zeros(8))
    assert worker_downlink.take(delta, mine, 4) == 9
    assert mine.tolist() == [0, 0.5, 0, 0, 0, -2.0, 0, 0]
    assert worker_downlink.take(Welcome(0, 0, params=x), mine, 9) == -1 and torch.equal(mine, x)
    assert worker_downlink.take(Reply(True, "applied", 0, 2, 1e-3), mine, 9) == -1  # shared memory: untouched


@pytest.mark.parametrize(
    ("indices", "values", "says"),
    [
        (torch.tensor([0, 8]), torch.ones(2), "outside"),
        (torch.tensor([-1]), torch.ones(1), "outside"),
        (torch.tensor([0, 1]), torch.tensor([1.0, float("nan")]), "NaN"),
        (torch.tensor([0.0]), torch.ones(1), "indices"),
        (torch.tensor([0, 1]), torch.ones(3), "values"),
        (torch.tensor([0]), None, "without values"),
        (torch.tensor([0, 3]), torch.tensor([3e38, 1.0]), "overflows"),  # finite, but 3e38 + 3e38 is inf
    ],
)
def test_a_malformed_delta_is_refused_before_the_copy_changes(indices, values, says):
    mine = torch.tensor([3e38, 0, 0, 0, 0, 0, 0, 0])
    bad = Reply(True, "applied", 0, 2, 1e-3, copy_id=2, copy_base=1, indices=indices, values=values)
    with pytest.raises(ValueError, match=says):
        worker_downlink.take(bad, mine, 1)
    assert torch.equal(mine, torch.tensor([3e38, 0, 0, 0, 0, 0, 0, 0]))


def test_a_delta_leaves_at_most_the_topk_error_of_what_the_copy_lacked():
    gen = torch.Generator().manual_seed(3)
    x, w = torch.randn(D, generator=gen), torch.zeros(D)
    down = Downlink(D, 0.1)
    reset = down.answer(0, -1, w)  # the copy: all zeros
    c = down.answer(0, reset.copy_id, x)  # the push names it: committed, and a delta of x - 0
    kept = torch.zeros(D).index_add_(0, c.indices, c.values)
    assert c.indices.numel() == down.k and torch.equal(kept[c.indices], x[c.indices])
    left = (x - kept).norm() ** 2
    assert left <= (1 - down.k / D) * x.norm() ** 2  # Top-K is contractive: ||x - C(x)||^2 <= (1 - k/d)||x||^2
    assert GAP_EVERY >= 1 and down.gap_max == pytest.approx(float(left.sqrt() / x.norm()), rel=1e-4)


@pytest.mark.parametrize("bad", ["0", "1", "1.5", "-0.1"])
def test_a_ratio_that_compresses_nothing_is_refused_naming_the_key(bad):
    with pytest.raises(ConfigError, match="server.downlink_ratio"):
        make_config(server={"downlink": "topk", "downlink_ratio": float(bad)}).server.check()


def _config(shards: int, downlink: str, workers: int = 1):
    return make_config(
        workers=workers,
        seed=7,
        task={"dataset": "digits", "model": "mlp", "hidden": [24], "batch_size": 16},
        optimizer={"name": "amsgrad", "lr": 3e-3},
        run={"max_updates": 80, "eval_every_s": 1000},
        server={"stop_grace_s": 2, "shards": shards, "downlink": downlink, "downlink_ratio": 0.05, "transport": "zmq"},
    )


def _train(cfg, workers: int):
    """Every shard's server and `workers` ranks on threads; (servers, loops, server results)."""
    model = initial_model(cfg, run_id="")
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(running_server(cfg, model=model, shard=s)) for s in range(cfg.server.shards)]
        chans = [[Channel("dealer") for _ in servers] for _ in range(workers)]
        for row in chans:
            for chan, (_, endpoint, _) in zip(row, servers):
                chan.connect(endpoint)
        loops = [
            ShardedLoop(cfg, r, row) if len(row) > 1 else WorkerLoop(cfg, r, row[0]) for r, row in enumerate(chans)
        ]
        threads = [threading.Thread(target=loop.run) for loop in loops]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        for chan in [c for row in chans for c in row]:
            chan.close()
        assert not any(t.is_alive() for t in threads), "a worker did not end"
    assert all(loop.stats.stop_reason == "max_updates" for loop in loops), [lp.stats.stop_reason for lp in loops]
    return [s for s, _, _ in servers], loops, [r for _, _, r in servers]


@pytest.mark.parametrize("shards", [1, 2])
def test_in_a_run_every_workers_copy_is_the_servers_record_plus_its_last_delta(shards):
    servers, loops, results = _train(_config(shards, "topk", workers=3), workers=3)
    for server in servers:
        d = server.model.downlink
        assert d is not None and d.deltas > 20 and d.resets >= 3
        lo, n = server.model.lo, server.model.numel
        for loop in loops:
            copy, held = d._copies[loop.rank], _held(loop, server.model.shard)
            expected = copy.w.clone()  # the copy the server's record is of (or, after a reset, what it sent)
            last = copy.pending
            if last is not None and held == last.copy_id:  # the last answer, taken (a reset: the record is it)
                if last.indices is not None:
                    expected.index_add_(0, last.indices, last.values)
            else:  # not taken (a Stop from another shard came with it): the copy is the one the record is of
                assert held == copy.committed
            assert torch.equal(loop.host_params[lo : lo + n], expected)
    assert all(r["downlink"] == "topk" and r["downlink_deltas"] > 0 for r in results)


def _held(loop, shard: int) -> int:
    """The id of the copy a worker holds of a shard's range."""
    return loop.shards[shard].copy_id if isinstance(loop, ShardedLoop) else loop.copy_id


def test_a_compressed_downlink_sends_far_fewer_bytes_and_still_learns():
    _, _, dense = _train(_config(1, "dense", workers=2), workers=2)
    servers, _, topk = _train(_config(1, "topk", workers=2), workers=2)
    assert topk[0]["downlink_bytes"] * 5 < dense[0]["downlink_bytes"]
    assert topk[0]["updates"] == dense[0]["updates"] == 80
    assert 0 < topk[0]["downlink_gap_max"] < 1
    assert not torch.equal(servers[0].params, initial_model(_config(1, "topk"), "").params)


@pytest.mark.parametrize(
    ("sections", "says"),
    [
        ({"mode": "sync", "server": {"downlink": "topk"}}, "sync"),
        ({"server": {"downlink": "topk", "transport": "shm"}}, "shared memory"),
        ({"server": {"downlink": "sparse"}}, "server.downlink"),
    ],
)
def test_a_downlink_that_would_compress_nothing_is_refused_naming_the_key(sections, says):
    with pytest.raises(ConfigError, match="server.downlink") as err:
        make_config(**sections).check()
    assert says in str(err.value)
