"""Who is in the run: ranks, the connection that holds each, joining, liveness and who was told to stop.

One module owns membership; the loop asks it. A rank is held by one connection at a time: a Hello for
a rank whose holder is still connected is refused (`rank_in_use`), so a second process started with a
live rank cannot take it over; once the holder is gone (its connection closed, or silent for
server.worker_timeout_s) the rank may be taken again, and the new holder continues the rank's
sequence numbers. Messages go out through the server's Outbox, which never waits on a peer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from protocol.config.schema import ExperimentConfig
from protocol.errors import NOT_JOINED, ProtocolError
from protocol.wire.curve import worker_name
from protocol.wire.layout import Layout
from protocol.wire.messages import Heartbeat, Hello, Stop, Welcome
from ps.model import ServedModel
from ps.outbox import Outbox
from ps.replies import Outcome


@dataclass
class Member:
    rank: int
    identity: bytes  # the ZeroMQ routing id of the connection that holds the rank
    pid: int
    host: str
    device: str
    last_seen: float  # clock() of its last message
    last_seq: int = -1
    pushes: int = 0
    applied: int = 0
    last_outcome: Outcome | None = None  # the answer to its last push, to answer a resend of it again
    user: str = ""  # on a CURVE server, the name of the key its connection authenticated with (worker-<rank>)

    def report(self) -> dict[str, object]:
        """What server_summary.json says of this worker."""
        return {
            "pid": self.pid,
            "host": self.host,
            "device": self.device,
            "pushes": self.pushes,
            "applied": self.applied,
        }


class Membership:
    def __init__(self, cfg: ExperimentConfig, clock: Callable[[], float], out: Outbox):
        self.cfg = cfg
        self.clock = clock
        self.out = out
        self.members: dict[int, Member] = {}
        self.pending: list[int] = []  # joined, waiting for the start (server.wait_for_workers)
        self.stopped: set[int] = set()  # told to stop

    def check_hello(self, hello: Hello, model: ServedModel, run_id: str, uplink: str) -> None:
        """ProtocolError naming why this Hello is refused: another run, rank, model or uplink."""
        cfg = self.cfg
        if run_id and hello.run_id != run_id:
            raise ProtocolError("bad_run", f"this server serves run {run_id!r}, not {hello.run_id!r}")
        if not 0 <= hello.rank < cfg.workers:
            raise ProtocolError("unknown_rank", f"rank {hello.rank} is outside 0..{cfg.workers - 1}")
        if Layout.from_signature(hello.signature) != model.layout:
            raise ProtocolError("bad_shape", f"rank {hello.rank}'s model does not match the served layout")
        if Layout.from_signature(hello.buffer_signature, empty=True) != model.buffer_layout:
            raise ProtocolError("bad_shape", f"rank {hello.rank}'s model buffers do not match the served ones")
        if hello.uplink != uplink:
            raise ProtocolError(
                "bad_encoding",
                f"rank {hello.rank} pushes '{hello.uplink}', server expects '{uplink}' "
                f"(compression.method {cfg.compression.method})",
            )

    def check_key(self, rank: int, user: str, curve: bool) -> None:
        """On a CURVE server a connection joins only as the rank its key names (worker-<rank>)."""
        if curve and user != worker_name(rank):
            raise ProtocolError(
                "wrong_key", f"this connection authenticated as {user or 'an unnamed key'!r}, not {worker_name(rank)}"
            )

    def check_free(self, rank: int, identity: bytes, reachable: Callable[[bytes], bool]) -> None:
        """Raises rank_in_use when another connection holds the rank and is still there."""
        old = self.members.get(rank)
        if old is None or old.identity in (identity, b""):  # b"": restored from a checkpoint, not connected
            return
        silent = self.clock() - old.last_seen > self.cfg.server.worker_timeout_s
        if not silent and reachable(old.identity):
            raise ProtocolError(
                "rank_in_use",
                f"rank {rank} is held by a live connection (pid {old.pid} on {old.host}); start another rank, "
                "or stop that process first",
            )

    def join(self, hello: Hello, identity: bytes, user: str = "") -> Member:
        """Admit the Hello's connection as the rank's holder; a rejoin continues the rank's sequence."""
        old = self.members.get(hello.rank)
        member = Member(hello.rank, identity, hello.pid, hello.host, hello.device, last_seen=self.clock(), user=user)
        if old is not None:
            member.last_seq, member.pushes, member.applied = old.last_seq, old.pushes, old.applied
        self.members[hello.rank] = member
        self.stopped.discard(hello.rank)
        return member

    def sender(self, rank: int, identity: bytes, user: str = "") -> Member:
        """The member that sent a message as `rank` from `identity`, or unknown_rank. On a CURVE server the
        connection's key (`user`) must be the one it joined with too: a peer may choose its own routing id,
        so the id alone would let another rank's key take over a connection id that has gone."""
        member = self.members.get(rank)
        if member is None or member.identity != identity or member.user != user:
            raise ProtocolError("unknown_rank", f"rank {rank} {NOT_JOINED}")
        member.last_seen = self.clock()
        return member

    def holds(self, identity: bytes, rank: int) -> bool:
        """Whether the connection `identity` holds `rank` (joined as it, and not replaced since)."""
        member = self.members.get(rank)
        return member is not None and member.identity == identity

    def rank_of(self, identity: bytes, user: str = "") -> int | None:
        return next((r for r, m in self.members.items() if m.identity == identity and m.user == user), None)

    def wait_for_start(self, rank: int) -> bool:
        """Queue a rank that joined before the start; True when the run may start now."""
        self.pending = [r for r in self.pending if r != rank] + [rank]
        return not self.cfg.server.wait_for_workers or len(self.members) == self.cfg.workers

    def state(self) -> dict:
        """Each rank's sequence and counters (a checkpoint; the connections themselves are not state: after a
        restart every worker joins again and continues its sequence)."""
        keys = ("pid", "host", "device", "last_seq", "pushes", "applied")
        return {str(r): {k: getattr(m, k) for k in keys} for r, m in self.members.items()}

    def load_state(self, facts: dict) -> None:
        self.members = {
            int(r): Member(
                int(r), b"", f["pid"], f["host"], f["device"], self.clock(), f["last_seq"], f["pushes"], f["applied"]
            )  # fmt: skip
            for r, f in facts.items()
        }

    def silent(self, busy: set[int]) -> list[int]:
        """Connected ranks silent for server.worker_timeout_s that the server is not holding (`busy`): gone."""
        limit = self.clock() - self.cfg.server.worker_timeout_s
        return [r for r, m in self.members.items() if m.identity and r not in busy and m.last_seen < limit]

    def leave(self, rank: int) -> None:
        """The rank's holder is gone; the rank keeps its sequence for whoever joins as it next."""
        self.members[rank].identity = b""
        self.pending = [r for r in self.pending if r != rank]

    def live(self) -> int:
        return sum(1 for m in self.members.values() if m.identity)

    def told_everyone(self) -> bool:
        return all(rank in self.stopped for rank, m in self.members.items() if m.identity)

    def identity(self, rank: int) -> bytes:
        return self.members[rank].identity

    def welcome(self, member: Member, model: ServedModel, uplink: str) -> None:
        settings: dict[str, object] = {"workers": self.cfg.workers, "optimizer": self.cfg.optimizer.name}
        settings["uplink"] = uplink
        if model.shared is not None:  # the parameter segment, and this rank's push slot beside it
            settings.update(model.shared.advert())
            settings.update(model.shared.push_advert(member.rank, member.identity))
        if self.cfg.server.shards > 1:  # the worker checks it cut the same ranges
            settings["shard"] = [model.shard, model.lo, model.lo + model.numel]
        welcome = Welcome(model.version, member.last_seq + 1, model.layout.to_wire(), settings)
        self.out.send_params(member.identity, welcome, model.params, model.pool)

    def welcome_pending(self, model: ServedModel, uplink: str) -> None:
        """The start: every waiting worker gets the same parameters."""
        for rank in self.pending:
            self.welcome(self.members[rank], model, uplink)
        self.pending.clear()

    def heartbeat(self, ranks: list[int], version: int) -> None:
        for rank in ranks:
            self.out.send(self.members[rank].identity, Heartbeat(rank=-1, version=version))

    def tell_stop(self, identity: bytes, rank: int, reason: str, version: int) -> None:
        self.out.send(identity, Stop(reason=reason, version=version))
        self.stopped.add(rank)
