"""Who is heard, and how much: the server's rules for a message whose header has been read and whose tensor
bytes have not (Channel.recv's `admit` hook; docs/security.md, Admission).

- A type the server never accepts (a Reply, a Welcome ...; a Stop unless server.shards > 1, where a worker passes
  one shard's Stop on to the others) is refused from its header alone.
- A Push from a connection that does not hold the rank it names is refused (unknown_rank) unread.
- Every connection has a budget of messages per second (server.peer_messages_per_s; a connection that holds
  no rank gets server.stranger_messages_per_s) and, if set, of tensor bytes per second
  (server.peer_bytes_per_s). A message beyond its budget is dropped unread and unanswered (`throttled`),
  so a peer that floods the server costs it a header each, and ZeroMQ's fair queueing hands the loop the
  other peers' messages in between.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from protocol.config.schema import ServerConfig
from protocol.errors import NOT_JOINED, ProtocolError
from protocol.wire.messages import Heartbeat, Hello, Message, Pull, Push, Stop

ACCEPTED: tuple[type[Message], ...] = (Hello, Push, Pull, Heartbeat)
MAX_TRACKED = 4096  # connections whose budgets are remembered; the longest-idle is forgotten first


class Bucket:
    """A token bucket: `rate` per second, holding at most one second's worth (a burst of `rate`)."""

    __slots__ = ("rate", "tokens", "at")

    def __init__(self, rate: float, now: float):
        self.rate, self.tokens, self.at = rate, rate, now

    def take(self, amount: float, now: float) -> bool:
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True


class Admission:
    def __init__(self, cfg: ServerConfig, is_member: Callable[[bytes, int], bool], clock: Callable[[], float]):
        self.cfg, self.is_member, self.clock = cfg, is_member, clock
        self.accepted = ACCEPTED + ((Stop,) if cfg.shards > 1 else ())
        self._messages: OrderedDict[bytes, Bucket] = OrderedDict()
        self._bytes: OrderedDict[bytes, Bucket] = OrderedDict()

    def __call__(self, identity: bytes | None, cls: type[Message], fields: dict, nbytes: int) -> None:
        """Raises ProtocolError (bad_type, unknown_rank, throttled) to refuse the message unread."""
        if cls not in self.accepted:
            raise ProtocolError("bad_type", f"a server does not accept {cls.TYPE} messages")
        peer = identity or b""
        rank = fields.get("rank")
        member = type(rank) is int and self.is_member(peer, rank)
        if cls is Push and not member:
            raise ProtocolError("unknown_rank", f"rank {rank} {NOT_JOINED}")
        now = self.clock()
        rate = self.cfg.peer_messages_per_s if member else self.cfg.stranger_messages_per_s
        if not _bucket(self._messages, peer, rate, now).take(1, now):
            raise ProtocolError("throttled", f"more than {rate:g} messages/s from this connection")
        if nbytes and self.cfg.peer_bytes_per_s and not self._take_bytes(peer, nbytes, now):
            raise ProtocolError("throttled", f"more than {self.cfg.peer_bytes_per_s:g} bytes/s from this connection")

    def over_budget(self, identity: bytes | None) -> bool:
        """Charge a message that did not decode to its connection's budget; True when it is over it, so a
        flood of garbage is dropped unanswered like any other flood."""
        peer, now = identity or b"", self.clock()
        known = self._messages.get(peer)  # a member's bucket keeps its rate; anyone else is a stranger
        rate = known.rate if known is not None else self.cfg.stranger_messages_per_s
        return not _bucket(self._messages, peer, rate, now).take(1, now)

    def _take_bytes(self, peer: bytes, nbytes: int, now: float) -> bool:
        bucket = _bucket(self._bytes, peer, self.cfg.peer_bytes_per_s, now)
        # a message larger than a second's budget passes when the bucket is full: it must be possible at all
        return bucket.take(min(nbytes, bucket.rate), now)


def _bucket(buckets: OrderedDict[bytes, Bucket], peer: bytes, rate: float, now: float) -> Bucket:
    bucket = buckets.get(peer)
    if bucket is None or bucket.rate != rate:  # new, or its rank joined or left
        bucket = buckets[peer] = Bucket(rate, now)
        if len(buckets) > MAX_TRACKED:
            buckets.popitem(last=False)
    buckets.move_to_end(peer)
    return bucket
