"""Everything the server sends goes out here, and nothing here ever waits on a peer.

A peer whose queue is full (it does not read) or that has gone misses the message; the message is
counted as dropped and the loop goes on serving the others. Parameters that keep changing are sent as
a copy: small ones through ZeroMQ's own buffers, large ones as pooled snapshots sent zero-copy.
"""

from __future__ import annotations

import torch
import zmq

from protocol.config.schema import ExperimentConfig
from protocol.runfolder.counters import Counters
from protocol.wire.buffers import SendPool
from protocol.wire.channel import Channel, PeerBusy
from protocol.wire.curve import ServerKeys
from protocol.wire.faults import injector
from protocol.wire.messages import Heartbeat, Message, Reply, Welcome

COPY_BELOW_BYTES = 4 << 20  # measured: copying is 3x faster than tracked zero-copy at 1 MiB, 2x slower at 16 MiB
# Messages ZeroMQ queues for one peer before a send to it fails at once. A worker has at most a reply and a
# few heartbeats outstanding (more sit in the kernel's socket buffers); a peer that does not read fills
# this and misses everything after. ZeroMQ returns queue credit in batches, so this keeps a margin.
PEER_QUEUE = 16
# Zero-copy parameter snapshots one peer may hold in flight: a worker needs one (its reply), and a peer
# that does not read must not take the pool's buffers from the others.
SNAPSHOTS_PER_PEER = 2


def server_channel(cfg: ExperimentConfig, keys: ServerKeys | None = None) -> Channel:
    """The server's ROUTER channel as the config says (frame size, message cap, per-peer queues, faults), with
    CURVE and a count of refused handshakes when given the server's keys."""
    s = cfg.server
    chan = Channel(
        "router",
        chunk_bytes=s.chunk_bytes,
        max_message_bytes=s.max_message_bytes,
        send_timeout_s=s.send_timeout_s,
        send_hwm=PEER_QUEUE,
        recv_hwm=PEER_QUEUE,
        faults=injector(cfg, -1),
        curve=keys,
    )
    if keys is not None:
        chan.watch_handshakes()
    return chan


class Outbox:
    def __init__(self, chan: Channel, counters: Counters):
        self.chan = chan
        self.counters = counters  # downlink_bytes grows with every message sent
        self.dropped = 0  # messages a full queue could not take, or skipped for want of a send buffer
        self._in_flight: dict[bytes, list[zmq.MessageTracker]] = {}  # per peer: snapshots ZeroMQ still holds

    def send(
        self, identity: bytes | None, msg: Message, track: bool = False, copy: bool = False
    ) -> zmq.MessageTracker | None:
        """Send now or never; returns the tracker of a tracked send that went out, else None."""
        if identity is None:
            return None
        try:
            sent = self.chan.send(msg, to=identity, track=track, copy=copy)
        except PeerBusy:
            self.dropped += 1
            return None
        except ConnectionError:
            return None  # the peer left; the launcher notices a dead worker, not the server
        self.counters.downlink_bytes += sent.nbytes
        return sent.tracker

    def send_params(self, identity: bytes, msg: Reply | Welcome, source: torch.Tensor, pool: SendPool) -> None:
        """The next push modifies the parameters in place, so the bytes on the wire must be a copy: up to
        COPY_BELOW_BYTES ZeroMQ copies them; above, a pooled snapshot goes out zero-copy and is reused once
        ZeroMQ releases it. With every snapshot in flight (peers that do not read) the message is dropped."""
        if source.numel() * source.element_size() <= COPY_BELOW_BYTES:
            msg.params = source
            self.send(identity, msg, copy=True)
            return
        held = [t for t in self._in_flight.get(identity, []) if not t.done]
        buf = pool.snapshot(source) if len(held) < SNAPSHOTS_PER_PEER else None
        if buf is None:
            self.dropped += 1
            return
        msg.params = buf
        tracker: zmq.MessageTracker | None = self.send(identity, msg, track=True)
        if tracker is None:
            pool.unused(buf)
        else:
            pool.sent(buf, tracker)
            held.append(tracker)
        self._in_flight[identity] = held

    def reachable(self, identity: bytes, version: int) -> bool:
        """Whether a connection is still there: ZeroMQ refuses a send to a closed one at once."""
        try:
            self.chan.send(Heartbeat(rank=-1, version=version), to=identity)
        except ConnectionError:
            return False
        except PeerBusy:
            return True  # there, but not reading
        return True
