"""ZeroMQ transport: ROUTER (server) and DEALER (worker) channels that move codec messages.

Sends are zero-copy (the frames alias the message's tensors); receives write tensor frames straight
into caller-provided buffers with `recv_into`, so the hot path allocates nothing per message.
Every blocking operation takes a timeout; sockets close with linger 0.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from typing import NamedTuple

import torch
import zmq

from protocol.errors import ProtocolError
from protocol.wire import codec
from protocol.wire.curve import Gatekeeper, ServerKeys, WorkerKeys
from protocol.wire.faults import FaultInjector
from protocol.wire.messages import Message

DEFAULT_MAX_MESSAGE_BYTES = 1 << 31
# Handshakes that failed: a key the server's ZAP gate refused, a peer without CURVE, a wrong server key.
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


# A peer must complete the ZeroMQ (and CURVE) handshake within this long or the server drops its connection
# (ZeroMQ's default: 30 s): idle connections are how a stranger would hold the server's file descriptors.
HANDSHAKE_MS = 5000


class Received(NamedTuple):
    """One decoded message: who sent it (ROUTER; None on a DEALER), the message, the bytes that crossed
    the socket for it (header + tensor frames, identity frame excluded), and on a CURVE server the name of
    the key the sender's connection authenticated with (worker-<rank>; '' without CURVE)."""

    identity: bytes | None
    msg: Message
    nbytes: int
    user: str = ""


class Sent(NamedTuple):
    """One sent message: its bytes on the wire (header + tensor frames) and, for a tracked zero-copy send,
    the tracker that says when ZeroMQ has released the tensor memory."""

    nbytes: int
    tracker: zmq.MessageTracker | None


class PeerBusy(TimeoutError):
    """A ROUTER peer's queue is full (it does not read): the message was not sent. Nothing was queued."""


# CURVE sends each frame inside a MESSAGE command (its name, an 8-byte nonce, a flags byte and a 16-byte MAC
# around the payload), and ZeroMQ applies MAXMSGSIZE to that wrapped frame: without room for it, every full
# chunk would drop the connection.
FRAME_OVERHEAD = 256


def frame_limit(chunk_bytes: int, max_message_bytes: int) -> int:
    """The largest frame a peer may send: one chunk of a tensor, or a header (with room to spare, so that
    a header a little over MAX_HEADER_BYTES is answered with a Reject rather than a dropped connection),
    plus what CURVE wraps around it."""
    return min(max_message_bytes, max(chunk_bytes, 2 * codec.MAX_HEADER_BYTES)) + FRAME_OVERHEAD


# Called with (identity, message type, header fields, declared tensor bytes) once a message's header is read and
# before any tensor byte is: raising ProtocolError refuses the message, whose frames are then dropped unread.
Admit = Callable[[bytes | None, type[Message], dict, int], None]


class ReceiveError(ProtocolError):
    """A message that arrived but could not be decoded; `identity` says who sent it (ROUTER)."""

    def __init__(self, err: ProtocolError, identity: bytes | None, header: dict | None = None):
        super().__init__(err.code, err.message)
        self.identity = identity
        self.header = header or {}


class Channel:
    def __init__(
        self,
        kind: str,
        *,
        chunk_bytes: int = codec.DEFAULT_CHUNK_BYTES,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        send_timeout_s: float = 30.0,
        send_hwm: int = 1000,
        recv_hwm: int = 1000,
        context: zmq.Context | None = None,
        faults: FaultInjector | None = None,
        curve: ServerKeys | WorkerKeys | None = None,
    ):
        if kind not in ("router", "dealer"):
            raise ValueError(f"kind must be 'router' or 'dealer', got {kind!r}")
        self.kind = kind
        self.chunk_bytes = chunk_bytes
        self.max_message_bytes = max_message_bytes
        self._gate: Gatekeeper | None = None
        self._own_ctx = isinstance(curve, ServerKeys) and context is None  # the ZAP gate is per context
        self._ctx = zmq.Context() if self._own_ctx else (context or zmq.Context.instance())
        self.sock = self._ctx.socket(zmq.ROUTER if kind == "router" else zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self._monitor: zmq.Socket | None = None
        self.curve = curve is not None
        if curve is not None:
            self._secure(curve)
        self._limit(send_timeout_s, send_hwm, recv_hwm)
        self._header_buf = bytearray(codec.MAX_HEADER_BYTES + 1)
        self._header_len = 0
        self.faults = faults if faults is not None and faults.active else None  # deliberate message faults
        self.endpoint: str | None = None
        self.bytes_sent = 0  # header + tensor frames, identity frames excluded
        self.bytes_received = 0

    def _limit(self, send_timeout_s: float, send_hwm: int, recv_hwm: int) -> None:
        """The socket's bounds: frame size, queues, handshake time, and how long a send may wait."""
        # ZeroMQ holds a whole multipart message before handing over its first frame, bounding only each
        # frame (MAXMSGSIZE; a larger one drops the connection before it is buffered). Every legal frame is a
        # header or a chunk of at most chunk_bytes, so that is the bound; the message's total is checked on
        # its header before any tensor byte is read.
        self.sock.setsockopt(zmq.MAXMSGSIZE, frame_limit(self.chunk_bytes, self.max_message_bytes))
        self.sock.setsockopt(zmq.SNDHWM, send_hwm)
        # Whole messages ZeroMQ queues from one peer before it stops reading that peer's connection.
        self.sock.setsockopt(zmq.RCVHWM, recv_hwm)
        router = self.kind == "router"
        if router:  # a connection that says nothing holds a file descriptor: not for long
            self.sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        # A ROUTER (the server's one loop) never waits on a peer: a send that its queue cannot take now fails
        # at once (PeerBusy). A DEALER (a worker, one peer) waits up to send_timeout_s.
        self.sock.setsockopt(zmq.SNDTIMEO, 0 if router else int(send_timeout_s * 1000))
        if router:
            self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)

    # -- connection ------------------------------------------------------------------------------
    def _secure(self, keys: ServerKeys | WorkerKeys) -> None:
        """CURVE on this socket: a server with its pair and a ZAP gate holding the allowlist, a worker with
        its pair and the server's public key. Before bind/connect, as ZeroMQ requires."""
        self.sock.curve_secretkey = keys.pair.secret
        self.sock.curve_publickey = keys.pair.public
        if isinstance(keys, ServerKeys):
            self._gate = Gatekeeper(self._ctx, keys.allow)
            self._gate.start()
            self.sock.curve_server = True
        else:
            self.sock.curve_serverkey = keys.server_public

    def watch_handshakes(self) -> None:
        """Count failed handshakes from now on (handshake_failures)."""
        if self._monitor is None:
            self._monitor = self.sock.get_monitor_socket(HANDSHAKE_FAILED)

    def handshake_failures(self) -> int:
        """Handshakes that failed since the last call (a refused key, a peer without CURVE); never waits."""
        n = 0
        while self._monitor is not None and self._monitor.poll(0):
            self._monitor.recv_multipart()
            n += 1
        return n

    def bind(self, endpoint: str) -> str:
        """Bind and return the actual address (port 0 or '*' picks a free port). An ipc socket file is made
        readable and writable by its owner alone: other users of the host cannot connect to it."""
        old = os.umask(0o077) if endpoint.startswith("ipc://") else None
        self._ipv6(endpoint)
        try:
            self.sock.bind(re.sub(r":0$", ":*", endpoint))
        finally:
            if old is not None:
                os.umask(old)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        if self.endpoint.startswith("ipc://"):
            os.chmod(self.endpoint[len("ipc://") :], 0o600)
        return self.endpoint

    def connect(self, endpoint: str) -> None:
        self._ipv6(endpoint)
        self.sock.connect(endpoint)
        self.endpoint = endpoint

    def _ipv6(self, endpoint: str) -> None:
        """tcp://[v6 address]:port needs ZeroMQ's IPv6 switch; left off otherwise, so an IPv4 bind keeps
        reporting a plain IPv4 address."""
        if endpoint.startswith("tcp://["):
            self.sock.setsockopt(zmq.IPV6, 1)

    def close(self) -> None:
        if self._monitor is not None:
            self.sock.disable_monitor()
            self._monitor.close(linger=0)
        self.sock.close(linger=0)
        if self._gate is not None:
            self._gate.stop()
        if self._own_ctx:
            self._ctx.term()
        if self.kind == "router" and self.endpoint and self.endpoint.startswith("ipc://"):
            path = self.endpoint[len("ipc://") :]
            if os.path.exists(path):
                os.unlink(path)

    # -- send ------------------------------------------------------------------------------------
    def send(self, msg: Message, to: bytes | None = None, track: bool = False, copy: bool = False) -> Sent:
        """Send zero-copy. With track=True the returned tracker says when the tensor memory is free again.

        copy=True copies the tensors into ZeroMQ's own buffers before returning (the caller may then
        modify them at once); for messages up to a few MiB that is cheaper than tracking a snapshot.

        Raises TimeoutError when a DEALER's peer does not take the message within the send timeout,
        PeerBusy (a TimeoutError) at once when a ROUTER peer's queue is full, and ConnectionError when a
        ROUTER no longer knows the peer. A message that raised was not sent, not even in part.
        """
        frames = codec.encode(msg, self.chunk_bytes)
        nbytes = sum(len(f) for f in frames)
        if self.kind == "router":
            if to is None:
                raise ValueError("a ROUTER channel needs the peer identity to send")
            frames = [to, *frames]
        if self.faults is not None:
            return self._send_faulty(msg, frames, nbytes, to)
        if track:
            frames = [zmq.Frame(f, track=True, copy=False) for f in frames]
        try:
            tracker = self.sock.send_multipart(frames, copy=copy and not track, track=track)
        except zmq.Again:
            if self.kind == "router":
                raise PeerBusy(f"peer {to!r} does not take {msg.TYPE} messages now (its queue is full)") from None
            raise TimeoutError(f"send of {msg.TYPE} timed out") from None
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                raise ConnectionError(f"peer {to!r} is gone") from None
            raise
        self.bytes_sent += nbytes
        if track:
            tracker = zmq.MessageTracker(*[f for f in frames if isinstance(f, zmq.Frame)])
        return Sent(nbytes, tracker)

    def _send_faulty(self, msg: Message, frames: list, nbytes: int, to: bytes | None) -> Sent:
        """Through the fault injector: copies of the frames, sent now, twice, later, or not at all."""
        assert self.faults is not None
        for message in self.faults.route([bytes(f) for f in frames]):
            self._send_raw(message, msg.TYPE, to)
        self.bytes_sent += nbytes
        return Sent(nbytes, None)

    def _send_raw(self, frames: list[bytes], what: str, to: bytes | None) -> None:
        try:
            self.sock.send_multipart(frames, copy=True)
        except zmq.Again:
            if self.kind == "router":
                raise PeerBusy(f"peer {to!r} does not take {what} messages now (its queue is full)") from None
            raise TimeoutError(f"send of {what} timed out") from None
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                raise ConnectionError(f"peer {to!r} is gone") from None
            raise

    # -- receive ---------------------------------------------------------------------------------
    def poll(self, timeout_s: float) -> bool:
        if self.faults is not None:
            for message in self.faults.due():  # delayed messages go out whenever the channel is used
                with contextlib.suppress(TimeoutError, ConnectionError):  # a peer gone or full: lost too
                    self._send_raw(message, "delayed", message[0] if self.kind == "router" else None)
        return bool(self.sock.poll(max(0, int(timeout_s * 1000)), zmq.POLLIN))

    def recv(self, timeout_s: float, alloc: codec.Allocator | None = None, admit: Admit | None = None) -> Received:
        """Receive one message. Raises TimeoutError, or ReceiveError after draining a bad message.

        `admit` sees the sender and the header before any tensor byte is read, and may refuse the message.

        Anything a peer can send decodes or raises ReceiveError: no input reaches the caller as another
        exception (a failed tensor view of a hostile shape, say, is a refused message, not a crash)."""
        if not self.poll(timeout_s):
            raise TimeoutError(f"no message within {timeout_s:.1f}s")
        identity, user = self._recv_identity()
        header: dict = {}
        try:
            if identity is not None and not self.sock.get(zmq.RCVMORE):
                raise ProtocolError("truncated", "message has no header frame")
            cls, fields, specs = self._recv_header()
            header = fields
            total = sum(s.nbytes for s in specs)
            if total > self.max_message_bytes:
                raise ProtocolError("oversized", f"{total} tensor bytes exceed {self.max_message_bytes}")
            if admit is not None:
                admit(identity, cls, fields, total)
            alloc = alloc or codec.fresh_allocator(self.max_message_bytes)
            tensors = {s.name: self._recv_tensor(cls, s, alloc) for s in specs}
            if self.sock.get(zmq.RCVMORE):
                raise ProtocolError("extra_frames", f"{cls.TYPE} has more frames than its header declares")
            nbytes = self._header_len + total
            self.bytes_received += nbytes
            return Received(identity, codec.build(cls, fields, tensors), nbytes, user)
        except ProtocolError as err:
            self._drain()
            raise ReceiveError(err, identity, header) from None
        except (TypeError, ValueError, RuntimeError, OverflowError, MemoryError) as err:  # a check that missed
            self._drain()
            raise ReceiveError(ProtocolError("bad_message", f"{type(err).__name__}: {err}"), identity, header) from None

    def _recv_identity(self) -> tuple[bytes | None, str]:
        """A ROUTER's first frame names the peer; on a CURVE server it also carries the key's name."""
        if self.kind != "router":
            return None, ""
        if not self.curve:
            return self.sock.recv(), ""
        frame = self.sock.recv(copy=False)
        try:
            user = str(frame.get("User-Id"))  # a string property (get's type also covers the int ones)
        except zmq.ZMQError:  # a connection whose key has no name
            user = ""
        return frame.bytes, user

    def _recv_header(self) -> tuple[type[Message], dict, list[codec.TensorSpec]]:
        n = self.sock.recv_into(self._header_buf)
        self._header_len = n
        if n > codec.MAX_HEADER_BYTES:
            raise ProtocolError("oversized", f"header of {n} bytes exceeds {codec.MAX_HEADER_BYTES}")
        return codec.decode_header(bytes(self._header_buf[:n]))

    def _recv_tensor(self, cls: type[Message], spec: codec.TensorSpec, alloc: codec.Allocator) -> torch.Tensor:
        dest = alloc(cls, spec)
        if dest.dtype != codec.DTYPES[spec.dtype] or dest.numel() != spec.numel or not dest.is_contiguous():
            raise ProtocolError("bad_tensor", f"{cls.TYPE}.{spec.name}: allocator returned a mismatched buffer")
        view, offset = codec.byte_view(dest), 0
        for _ in range(spec.nframes):
            if not self.sock.get(zmq.RCVMORE):
                raise ProtocolError("truncated", f"{cls.TYPE}.{spec.name}: fewer frames than declared")
            n = self.sock.recv_into(view[offset:])
            if offset + n > spec.nbytes:
                raise ProtocolError("bad_tensor", f"{cls.TYPE}.{spec.name}: more bytes than its shape")
            offset += n
        if offset != spec.nbytes:
            raise ProtocolError("truncated", f"{cls.TYPE}.{spec.name}: {offset} of {spec.nbytes} bytes")
        return dest.view(spec.shape)

    def _drain(self) -> None:
        while self.sock.get(zmq.RCVMORE):
            self.sock.recv_into(bytearray())
