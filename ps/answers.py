"""The server's answers to every message but a Push (whose path is the loop's own, ps/server.py): a Hello
(joining the run), a Pull, a Heartbeat, a worker's Stop (server.shards > 1 only: another shard ended the run),
and a message that could not be read or was refused unread."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from protocol.errors import ProtocolError
from protocol.wire.channel import Received, ReceiveError
from protocol.wire.messages import Heartbeat, Hello, Message, Pull, Reject, Stop
from ps.replies import PULLED

if TYPE_CHECKING:
    from ps.server import ParameterServer


def handlers(server: ParameterServer) -> dict[type[Message], Callable[[Received], None]]:
    """The loop's handler of each message type but Push."""
    table: dict[type[Message], Callable[[Received], None]] = {
        Hello: lambda got: on_hello(server, got),
        Pull: lambda got: on_pull(server, got),
        Heartbeat: lambda got: on_beat(server, got),
    }
    if server.cfg.server.shards > 1:
        table[Stop] = lambda got: on_worker_stop(server, got)
    return table


def on_hello(server: ParameterServer, got: Received) -> None:
    """Join the rank (or refuse it); welcome it now in a running run, else when the run starts."""
    hello, identity = got.msg, got.identity
    assert isinstance(hello, Hello) and identity is not None
    if server.stop_reason is not None:
        return server.tell_stop(identity, hello.rank)
    members = server.members
    try:
        members.check_hello(hello, server.model, server.run_id, server.uplink)
        members.check_key(hello.rank, got.user, server.chan.curve)
        members.check_free(hello.rank, identity, server.reachable)
    except ProtocolError as err:
        server.report.counters.messages_rejected += 1
        return server.send(identity, Reject(err.code, err.message, rank=hello.rank))
    member = members.join(hello, identity, got.user)
    server.held.pop(hello.rank, None)  # a reply held for the rank's old connection: that connection is gone
    server.gate.forget(hello.rank)
    server.model.forget_buffers(hello.rank)
    if server.t_start is not None:
        server.gate.join(hello.rank)
        server.model.set_group(min(server.cfg.staleness.apply_every, members.live()))
        members.welcome(member, server.model, server.uplink)
    elif members.wait_for_start(hello.rank):
        server.start_training()


def on_pull(server: ParameterServer, got: Received) -> None:
    pull, identity = got.msg, got.identity
    assert isinstance(pull, Pull) and identity is not None
    if server.stop_reason is not None:
        return server.tell_stop(identity, pull.rank)
    try:
        server.members.sender(pull.rank, identity, got.user)
    except ProtocolError as err:
        server.report.counters.messages_rejected += 1
        return server.send(identity, Reject(err.code, err.message, rank=pull.rank))
    server.reply(identity, PULLED)


def on_worker_stop(server: ParameterServer, got: Received) -> None:
    """A joined worker was told Stop by another shard and leaves: this shard ends the run for the same reason
    (docs/design.md, Shards) and answers with its own Stop, which the worker awaits before it closes its
    socket. A stranger's Stop is refused."""
    stop = got.msg
    assert isinstance(stop, Stop)
    rank = server.members.rank_of(got.identity or b"", got.user)
    if rank is None:
        server.report.counters.messages_rejected += 1
        return server.send(got.identity, Reject("unknown_rank", "only a joined worker may pass a Stop on"))
    server.request_stop(stop.reason or "stopped")
    server.tell_stop(got.identity or b"", rank)


def on_beat(server: ParameterServer, got: Received) -> None:
    rank = server.members.rank_of(got.identity or b"", got.user)
    if rank is not None:
        server.members.members[rank].last_seen = server.clock()
    server.send(got.identity, Heartbeat(rank=-1, version=server.version))


def on_bad_message(server: ParameterServer, err: ReceiveError) -> None:
    throttled = err.code == "throttled" or (err.identity is not None and server.admit.over_budget(err.identity))
    if throttled:  # unanswered: an answer is what a flood would cost the loop
        server.report.counters.messages_throttled += 1
        return
    server.report.counters.messages_rejected += 1
    if err.identity is not None:  # the rank and seq it named, so a worker knows which request this answers
        rank, seq = (err.header.get(k, -1) for k in ("rank", "seq"))
        rank, seq = (v if type(v) is int else -1 for v in (rank, seq))
        server.send(err.identity, Reject(err.code, err.message, rank=rank, seq=seq))
