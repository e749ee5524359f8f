"""The worker's side of the conversation with the server: each request answered, resent, or given up on.

A request (a Hello or a Push) waits for its own answer: a Welcome for a Hello, the Reply or Reject that
names the push's sequence number, or a Stop. Anything else that arrives is stale (an answer to a request
resent earlier, or duplicated by the network) and ignored; the server's heartbeats say it is alive and
holding the answer back (SSP, a barrier), and extend the wait. When nothing at all has come for
server.resend_s, the request is sent again: the server answers a resent push with the outcome it already
had (never applying it twice), and a restarted server answers it with `unknown_rank`, which makes the
worker join again. Past server.reply_timeout_s of silence the worker gives up, after one last look at its
socket (a reply that arrived while the process was paused still counts).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from protocol.config.schema import ExperimentConfig
from protocol.errors import NOT_JOINED
from protocol.runfolder.records import WorkerReport
from protocol.wire import codec
from protocol.wire.channel import Channel, ReceiveError
from protocol.wire.messages import Heartbeat, Hello, Message, Push, Reject, Reply, Stop, Welcome

CANCEL_POLL_S = 0.5  # while waiting, look this often whether the hosting process wants the worker gone


class LinkError(RuntimeError):
    """The server cannot be reached, stopped answering, or sent something undecodable."""


def answers(msg: Message) -> Callable[[Message], bool]:
    """Which incoming messages answer `msg`: a push's own Reply or Reject (by sequence number), a Welcome
    or a Reject (but a stale NOT_JOINED one) for a Hello, a Reply or Reject for a pull; a Stop answers anything."""
    if isinstance(msg, Push):
        seq = msg.seq
        return lambda m: isinstance(m, Stop) or (isinstance(m, (Reply, Reject)) and m.seq == seq)
    if isinstance(msg, Hello):  # a Reject saying NOT_JOINED never answers it: it answers an earlier pull or
        # resent push to a server since restarted (an out-of-range rank is refused unknown_rank otherwise worded)
        return lambda m: (
            isinstance(m, (Welcome, Stop))
            or (isinstance(m, Reject) and m.seq == -1 and not (m.code == "unknown_rank" and NOT_JOINED in m.message))
        )
    return lambda m: isinstance(m, Stop) or (isinstance(m, (Reply, Reject)) and m.seq == -1)


class ServerLink:
    def __init__(
        self,
        cfg: ExperimentConfig,
        chan: Channel,
        alloc: codec.Allocator,
        stats: WorkerReport,
        check_cancel: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cfg, self.chan, self.alloc, self.stats = cfg, chan, alloc, stats
        self.check_cancel, self.clock = check_cancel, clock
        self.resends = 0
        self._request: tuple[Message, float] | None = None  # the request sent and when, until answered

    def exchange(self, msg: Message, timeout_s: float | None = None) -> Message:
        """Send `msg` and return its answer. Raises TimeoutError (a Hello nobody answered) or LinkError."""
        self.send(msg)
        return self.collect(timeout_s)

    def send(self, msg: Message) -> None:
        """Send a request whose answer collect() waits for (a worker with server shards sends to every shard
        before it waits for any)."""
        self._request = (msg, self.clock())
        self._send(msg)

    def collect(self, timeout_s: float | None = None) -> Message:
        """The answer to the request send() sent, waiting at most `timeout_s` of silence (heartbeats extend it)
        counted from the send. Raises TimeoutError (a Hello nobody answered) or LinkError."""
        assert self._request is not None, "collect() without a request sent"
        msg, t0 = self._request
        timeout = timeout_s or self.cfg.server.reply_timeout_s
        matches = answers(msg)
        deadline, quiet_since = t0 + timeout, t0
        while True:
            remaining = deadline - self.clock()
            got = self._recv(min(max(remaining, 0.0), CANCEL_POLL_S))
            if got is None:
                self._check_handshake()
                if remaining <= 0:
                    raise TimeoutError if isinstance(msg, Hello) else LinkError(self._silent(timeout))
                if self.clock() - quiet_since >= self.cfg.server.resend_s:
                    self._send(msg)  # lost, or the server restarted: it answers again, never applies twice
                    self.resends, quiet_since = self.resends + 1, self.clock()
                self.check_cancel()
                continue
            quiet_since = self.clock()
            if isinstance(got, Heartbeat):
                deadline = self.clock() + timeout
            elif matches(got):
                self.stats.wait_s += self.clock() - t0
                self._request = None
                return got

    def _check_handshake(self) -> None:
        """A CURVE handshake the server refused: this rank's key is not in its key folder (or the server key
        is another one). ZeroMQ would retry forever; the worker says why at once."""
        if self.chan.curve and self.chan.handshake_failures():
            raise LinkError(
                f"the server at {self.chan.endpoint} refused this worker's CURVE handshake: its key is not one the "
                "server accepts, or server.key is not the server's (see docs/security.md)"
            )

    def _send(self, msg: Message) -> None:
        try:
            self.chan.send(msg)
        except TimeoutError:
            self._check_handshake()  # a refused CURVE handshake drops the pipe: the send then has no peer
            raise LinkError(f"could not send to the server at {self.chan.endpoint}") from None

    def _recv(self, timeout_s: float) -> Message | None:
        try:
            return self.chan.recv(timeout_s, alloc=self.alloc).msg
        except TimeoutError:
            return None
        except ReceiveError as err:
            raise LinkError(f"undecodable reply from the server: {err}") from None

    def _silent(self, timeout: float) -> str:
        return f"no reply from the server within {timeout:.0f}s (server gone?)"
