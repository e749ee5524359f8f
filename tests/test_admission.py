"""Admission (ps/admission.py; docs/security.md, Admission): what the server refuses from a header alone, and
the per-connection budgets that keep one flooding peer from being served at the others' expense."""

from __future__ import annotations

import time

import pytest
import torch
import zmq

from protocol.config.schema import ServerConfig
from protocol.errors import ProtocolError
from protocol.wire import codec
from protocol.wire.layout import Layout
from protocol.wire.messages import Heartbeat, Hello, Pull, Push, Reply, Welcome
from ps.admission import Admission
from tests.helpers import FakeWorker, make_config, running_server

LAYOUT = Layout.from_shapes([("w", (8,))])


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _admission(members=frozenset(), **server):
    cfg = ServerConfig(**{"stranger_messages_per_s": 10.0, "peer_messages_per_s": 100.0, **server})
    clock = Clock()
    return Admission(cfg, lambda peer, rank: (peer, rank) in members, clock), clock


def _code(admit, peer, cls, fields=None, nbytes=0):
    try:
        admit(peer, cls, fields or {}, nbytes)
    except ProtocolError as err:
        return err.code
    return "ok"


@pytest.mark.parametrize("cls", [Reply, Welcome])
def test_a_type_the_server_never_takes_is_refused_from_its_header(cls):
    admit, _ = _admission()
    assert _code(admit, b"a", cls, nbytes=1 << 30) == "bad_type"


def test_a_push_is_read_only_from_the_connection_that_holds_its_rank():
    admit, _ = _admission(members={(b"a", 0)})
    assert _code(admit, b"a", Push, {"rank": 0}) == "ok"
    assert _code(admit, b"b", Push, {"rank": 0}) == "unknown_rank"  # another connection naming rank 0
    assert _code(admit, b"a", Push, {"rank": 1}) == "unknown_rank"
    assert _code(admit, b"a", Push, {"rank": "0"}) == "unknown_rank"  # a rank that is not an int


def test_a_stranger_gets_its_own_budget_and_a_member_a_larger_one():
    admit, clock = _admission(members={(b"m", 0)})
    stranger = [_code(admit, b"s", Pull, {"rank": 0}) for _ in range(50)]
    member = [_code(admit, b"m", Pull, {"rank": 0}) for _ in range(50)]
    assert stranger.count("ok") == 10 and set(stranger[10:]) == {"throttled"}
    assert member.count("ok") == 50
    clock.now += 0.5  # half a second refills half the budget
    assert [_code(admit, b"s", Hello, {"rank": 3}) for _ in range(10)].count("ok") == 5


def test_undecodable_messages_are_charged_to_the_same_budget():
    admit, _ = _admission()
    over = [admit.over_budget(b"s") for _ in range(30)]
    assert over.count(False) == 10 and all(over[10:])
    assert _code(admit, b"s", Pull, {"rank": 0}) == "throttled"  # garbage spent what a Pull would need


def test_the_byte_budget_holds_a_member_to_its_rate_but_lets_one_large_push_through():
    admit, clock = _admission(members={(b"m", 0)}, peer_bytes_per_s=1 << 20)
    assert _code(admit, b"m", Push, {"rank": 0}, nbytes=8 << 20) == "ok"  # larger than a second's budget
    assert _code(admit, b"m", Push, {"rank": 0}, nbytes=1 << 10) == "throttled"
    clock.now += 1.0
    assert _code(admit, b"m", Push, {"rank": 0}, nbytes=1 << 10) == "ok"


def test_a_flooding_stranger_is_dropped_unanswered_while_a_member_is_served(tmp_path):
    cfg = make_config(workers=1, optimizer={"name": "sgd", "lr": 0.1},
                      run={"max_updates": 100000, "eval_every_s": 1000.0},
                      server={"stop_grace_s": 0.5, "stranger_messages_per_s": 20.0})  # fmt: skip
    with running_server(cfg, run_dir=tmp_path, model=(LAYOUT, torch.zeros(8))) as (server, endpoint, _):
        member = FakeWorker(endpoint, 0, LAYOUT)
        member.hello()
        ctx = zmq.Context()
        flooder = ctx.socket(zmq.DEALER)
        flooder.setsockopt(zmq.LINGER, 0)
        flooder.connect(endpoint)
        pull, beat = (codec.encode(m) for m in (Pull(rank=0), Heartbeat(rank=0, version=0)))
        kinds = [[bytes(f) for f in pull], [b"\x00garbage"], [bytes(f) for f in beat]]
        for i in range(600):
            flooder.send_multipart(kinds[i % 3])
            if i % 100 == 0:
                assert member.push(torch.ones(8)).applied  # served throughout
        deadline, answers = time.monotonic() + 3.0, 0
        while time.monotonic() < deadline and server.report.counters.messages_throttled + answers < 600:
            while flooder.poll(50):
                flooder.recv_multipart()
                answers += 1
        flooder.close()
        ctx.destroy(linger=0)
        throttled = server.report.counters.messages_throttled
        member.close()
    assert answers + throttled == 600, (answers, throttled)
    assert answers <= 20 + 20 * 3.5 and throttled >= 500, (answers, throttled)  # a burst of 20, then 20/s
    assert server.version == 6


def test_a_push_refused_from_its_header_is_answered_with_its_seq():
    """A worker matches answers to its push by seq: a restarted server's unknown_rank must name it, or the
    worker never learns that it has to join again."""
    cfg = make_config(workers=1, optimizer={"name": "sgd", "lr": 0.1}, server={"stop_grace_s": 0.5})
    with running_server(cfg, model=(LAYOUT, torch.zeros(8))) as (_, endpoint, _):
        stranger = FakeWorker(endpoint, 0, LAYOUT)
        stranger.seq = 7
        answer = stranger.push(torch.ones(8), advance=False)
        assert answer.code == "unknown_rank" and answer.seq == 7 and answer.rank == 0
        stranger.close()
