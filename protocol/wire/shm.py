"""Same-host parameters in shared memory: a two-slot seqlock segment one writer (the server) publishes flat
float32 vectors into, and readers (workers on the server's host) copy consistent versions out of
(docs/design.md, Shared-memory parameters). No ML here: buffers are numpy arrays or anything numpy can view
without a copy (a CPU torch tensor is one).

Segment: one file under /dev/shm, mode 0600, named taups-<run id>@<pid>-<random>; little-endian:

    0      8  magic b"TAUPSHM2"
    8      8  numel (uint64)
    16    16  nonce (random; the server's Welcome names it, so a reader knows it opened this very segment)
    32     8  the writer's pid namespace (inode of /proc/self/ns/pid; a reader checks the writer's pid only in its own)
    64    24  slot 0: seq (uint64), version (uint64), progress (uint64)   each slot header on its own cache line
    128   24  slot 1: seq, version, progress
    4096      slot 0's numel float32, then slot 1's at 4096 + stride (stride: numel * 4 rounded up to 4 KiB)

Writer: a version is written into the slot not holding the newest one, streamed: begin (seq += 1, odd: being
written; progress = 0; the version), then write() the values front to back in chunks, each followed by
progress = the values written so far, then end (seq += 1, even again). publish() is all three at once.
Reader (read_into): the slot with the newer version. A complete slot (seq even) is copied and checked as a
seqlock: the copy is consistent when seq read before and after is the same even number. A slot being written
with the version the reader wants is followed: each stretch below `progress` is copied as it appears, and
the copy is consistent when seq afterwards is still that write's (odd, or one more: ended), so the writer
never came round to the slot again. A torn copy is retried, at most `tries` times; a followed write that makes
no progress for `wait_s` gives up (once per read, however many tries are left), and so does one whose writer
process (its pid is in the segment's name; checked only from the writer's own pid namespace) has died; then
the worker asks over ZeroMQ.

Ordering assumptions, x86-64 only (`supported()` is False elsewhere, and the server then never offers a
segment): stores become visible to other cores in program order and loads are not reordered with older
loads (TSO); an aligned 8-byte load or store is a single instruction, never torn. Each step is a separate
C call from Python, so no compiler reorders across them. A large memcpy may use non-temporal stores, which
TSO does not order; `_fence` (taking and releasing an uncontended lock: a locked instruction, a full barrier
on x86-64) sits between a copy and the header stores after it on both sides.

Push slots (docs/design.md, Shared-memory pushes): one more file per rank, taups-<run id>@<pid>-<random>-push<rank>,
that the SERVER creates (0600, never an existing file) and the rank's worker maps writable to leave a dense
float32 push in; little-endian:

    0      8  magic b"TAUPSPU1"
    8      8  numel (uint64)
    16    16  nonce
    32     8  rank (uint64)
    64     8  written: 1 + the seq of the push whose values the slot holds (0: none yet)
    4096      numel float32

No seqlock: the protocol orders the accesses (the worker writes only while no push of its can still be read
by the server, and the server reads only while it handles that push); `written` lets the server check that
the slot holds the push it names.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import platform
import re
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

SHM_DIR = Path("/dev/shm")
MAGIC = b"TAUPSHM2"
PUSH_MAGIC = b"TAUPSPU1"
WRITTEN_AT = 64  # a push slot's `written` word
HEADER_BYTES = 4096
SLOT_HEADER = 64  # slot i's seq, version and progress live at 64 * (i + 1)
PAGE = 4096
DEFAULT_TRIES = 16
WAIT_S = 10.0  # a followed write that makes no progress this long is given up (the writer is gone or stuck)
LIVENESS_EVERY_S = 0.1  # while a followed write stalls, whether its writer process still lives, this often
SPIN_S, NAP_S = 0.002, 0.0005  # a follower yields the core this long after the last progress, then naps
WHOLE, TORN, STALLED = "whole", "torn", "stalled"  # how following a write ended
PID_NS_AT = 32  # the writer's pid namespace (the inode of /proc/self/ns/pid, uint64; 0: unknown)
_LOCK = threading.Lock()


class SegmentError(OSError):
    """The segment cannot be created or opened, or is not the one advertised."""


def supported() -> bool:
    """Whether this host can use the shared-memory path: x86-64 (the ordering above) with /dev/shm."""
    return platform.machine().lower() in ("x86_64", "amd64") and SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)


def host_id() -> str:
    """This boot of this machine (two containers on one host may share it, hence the nonce check too)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return platform.node()


def prefix(run_id: str) -> str:
    """Every segment of the run `run_id` is named prefix(run_id) + '<pid>-<random>' ('@' never occurs in the
    sanitised run id, so one run's prefix is never another's)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", run_id)[:64] or "norun"
    return f"taups-{safe}@"


def remove_segments(run_id: str, only_dead: bool = False) -> list[str]:
    """Unlink the run's segments left in /dev/shm (a writer killed before it could); only_dead: only those
    whose writer process is gone. Returns the names removed."""
    removed = []
    for path in SHM_DIR.glob(prefix(run_id) + "*") if SHM_DIR.is_dir() else []:
        pid = path.name[len(prefix(run_id)) :].split("-")[0]
        if only_dead and pid.isdigit() and _alive(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_namespace() -> int:
    """This process's pid namespace (the inode of /proc/self/ns/pid); 0 where it cannot be read."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _fence() -> None:
    """A full memory barrier on x86-64: an uncontended lock's acquire is a locked instruction."""
    with _LOCK:
        pass


def _stride(numel: int) -> int:
    return -(-numel * 4 // PAGE) * PAGE


def _size(numel: int) -> int:
    return HEADER_BYTES + 2 * _stride(numel)


@dataclass(frozen=True)
class Advert:
    """What the server's Welcome says of its segment (settings["shm"]): enough to open and verify it."""

    name: str
    host: str
    numel: int
    nonce: str

    def to_wire(self) -> dict:
        return {"name": self.name, "host": self.host, "numel": self.numel, "nonce": self.nonce}

    @classmethod
    def from_wire(cls, d: object, push_rank: int | None = None) -> Advert:
        """Raises SegmentError for anything but a well-formed advert (it comes from the wire): of the parameter
        segment, or with push_rank, of that rank's push slot (its name ends in -push<rank>)."""
        tail = "" if push_rank is None else f"-push{push_rank}"
        if not isinstance(d, dict) or {type(d.get(k)) for k in ("name", "host", "nonce")} != {str}:
            raise SegmentError("the server's shared-memory advert is malformed")
        pattern = r"taups-[A-Za-z0-9._-]+@[0-9]+-[0-9a-f]+" + re.escape(tail)
        if type(d.get("numel")) is not int or not re.fullmatch(pattern, d["name"]) or not _hex(d["nonce"]):
            raise SegmentError("the server's shared-memory advert is malformed")
        return cls(d["name"], d["host"], d["numel"], d["nonce"])


def _hex(text: str) -> bool:
    return re.fullmatch(r"(?:[0-9a-f]{2})+", text) is not None


class _Mapped:
    """The mapping and the numpy views of its headers and slots."""

    def __init__(self, fd: int, numel: int, writable: bool):
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        self.map = mmap.mmap(fd, _size(numel), access=access)
        buf = np.frombuffer(self.map, dtype=np.uint8)
        self.headers = [buf[SLOT_HEADER * (i + 1) : SLOT_HEADER * (i + 1) + 24].view(np.uint64) for i in (0, 1)]
        start = [HEADER_BYTES, HEADER_BYTES + _stride(numel)]
        self.slots = [buf[s : s + 4 * numel].view(np.float32) for s in start]
        self.numel = numel

    def close(self) -> None:
        self.headers, self.slots = [], []  # the views go first: an mmap with exported buffers cannot close
        with contextlib.suppress(BufferError):
            self.map.close()


class SegmentWriter:
    """The one writer: creates the segment (0600, never an existing file) and publishes versions into it."""

    def __init__(self, run_id: str, numel: int):
        self.name = f"{prefix(run_id)}{os.getpid()}-{secrets.token_hex(4)}"
        self.path = SHM_DIR / self.name
        self.nonce = secrets.token_hex(16)
        self.numel = numel
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self._unlink = weakref.finalize(self, _unlink, self.path)  # at close, collection or interpreter exit
        try:
            # reserve the pages now: a tmpfs that is full (a container's 64 MB /dev/shm) fails here, with
            # ENOSPC, instead of killing the writer with SIGBUS at its first publish
            os.posix_fallocate(fd, 0, _size(numel))
            self._m = _Mapped(fd, numel, writable=True)
        except OSError:
            self._unlink()
            raise
        finally:
            os.close(fd)
        self._m.map[: len(MAGIC)] = MAGIC
        self._m.map[8:16] = numel.to_bytes(8, "little")
        self._m.map[16:32] = bytes.fromhex(self.nonce)
        self._m.map[PID_NS_AT : PID_NS_AT + 8] = _pid_namespace().to_bytes(8, "little")
        self.published = -1  # the newest version published (-1: none yet)
        self.writing: int | None = None  # the version begun and not yet ended
        self._next, self._done = 0, 0

    def advert(self) -> Advert:
        return Advert(self.name, host_id(), self.numel, self.nonce)

    def publish(self, version: int, values: object) -> None:
        """Make `values` (numel float32, anything numpy views without a copy) the segment's newest version."""
        self.begin(version)
        self.write(values)
        self.end()

    def begin(self, version: int) -> None:
        """Start writing `version` into the slot not holding the newest one: a reader that wants it follows the
        write() calls from now on. Raises RuntimeError while another version is being written."""
        if self.writing is not None:
            raise RuntimeError(f"version {self.writing} is still being written")
        header = self._m.headers[self._next]
        header[0] += 1  # odd: being written
        _fence()
        header[2] = 0  # progress, before the version: a reader that sees the new version sees this too
        header[1] = version
        _fence()
        self.writing, self._done = version, 0

    def write(self, values: object) -> None:
        """The next values of the version begun, after those written so far (float32, viewed without a copy).
        Raises RuntimeError outside begin/end, ValueError past numel."""
        if self.writing is None:
            raise RuntimeError("write before begin")
        chunk = np.asarray(values).reshape(-1)
        lo, hi = self._done, self._done + chunk.size
        if hi > self.numel:
            raise ValueError(f"{hi} values written into a segment of {self.numel}")
        np.copyto(self._m.slots[self._next][lo:hi], chunk)
        _fence()
        self._m.headers[self._next][2] = self._done = hi

    def end(self) -> None:
        """The version begun is complete: it becomes the newest. Raises RuntimeError unless every value was
        written."""
        if self.writing is None or self._done != self.numel:
            raise RuntimeError(f"end after {self._done} of {self.numel} values")
        _fence()
        self._m.headers[self._next][0] += 1  # even: complete
        self._next, self.published, self.writing = 1 - self._next, self.writing, None

    def close(self) -> None:
        """Unmap and unlink (readers keep their mappings; no new reader can open it)."""
        self._unlink()
        self._m.close()


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


_M = TypeVar("_M")


def _open_advertised(name: str, flags: int, size: int, mapping: Callable[[int], _M]) -> _M:
    """Open /dev/shm/`name` (never through a symlink), check it is `size` bytes and map it with `mapping(fd)`;
    the descriptor is closed either way. Raises SegmentError naming the file."""
    try:
        fd = os.open(SHM_DIR / name, flags | os.O_NOFOLLOW)
    except OSError as err:
        raise SegmentError(f"cannot open /dev/shm/{name}: {err.strerror}") from None
    try:
        if os.fstat(fd).st_size != size:
            raise SegmentError(f"/dev/shm/{name} has the wrong size")
        return mapping(fd)
    finally:
        os.close(fd)


class SegmentReader:
    """A reader of an advertised segment. open() raises SegmentError when it is not this host's, cannot be
    opened, or is not the advertised one."""

    def __init__(self, advert: Advert, expected_numel: int):
        if advert.host != host_id():
            raise SegmentError(f"segment {advert.name} is on another host")
        if advert.numel != expected_numel:
            raise SegmentError(f"segment {advert.name} holds {advert.numel} values, the model {expected_numel}")
        self._m = _open_advertised(advert.name, os.O_RDONLY, _size(advert.numel),
                                   lambda fd: _Mapped(fd, advert.numel, writable=False))  # fmt: skip
        head = self._m.map[:32]
        if head[:8] != MAGIC or head[16:32] != bytes.fromhex(advert.nonce):
            self._m.close()
            raise SegmentError(f"/dev/shm/{advert.name} is not the segment the server advertised")
        self.name = advert.name
        self.writer_pid = int(advert.name.split("@")[1].split("-")[0])  # the name says who writes it
        # its liveness is only checked where that pid means the same process (another container sharing
        # /dev/shm may have its own pid namespace)
        ns = int.from_bytes(self._m.map[PID_NS_AT : PID_NS_AT + 8], "little")
        self.writer_in_my_pid_ns = ns != 0 and ns == _pid_namespace()

    def newest(self) -> int:
        """The newest complete version published (-1 when none; a hint: it may change at once)."""
        return max((int(h[1]) for h in self._m.headers if int(h[0]) % 2 == 0 and int(h[0]) > 0), default=-1)

    def read_into(
        self, out: object, min_version: int = 0, tries: int = DEFAULT_TRIES, wait_s: float = WAIT_S
    ) -> int | None:
        """Copy the newest version (at least min_version) into `out` (numel float32, viewed without a copy),
        following it while it is being written; its version, or None when `tries` attempts found none
        consistent and new enough (or a followed write stalled for wait_s seconds)."""
        dst = np.asarray(out).reshape(-1)
        for _ in range(tries):
            slot = self._pick(min_version)
            header = self._m.headers[slot]
            seq = int(header[0])
            _fence()
            version = int(header[1])
            if seq == 0 or version < min_version:
                continue  # never written, or not yet the version wanted: look again
            if seq % 2:
                state = self._follow(slot, seq, dst, wait_s)
                if state == STALLED:
                    return None  # no try can do better: the worker pulls
                whole = state == WHOLE
            else:
                np.copyto(dst, self._m.slots[slot])
                whole = True
            _fence()
            after = int(header[0])
            if whole and int(header[1]) == version and (after == seq or (seq % 2 and after == seq + 1)):
                return version
        return None

    def _follow(self, slot: int, seq: int, dst: np.ndarray, wait_s: float) -> str:
        """Copy slot `slot` into dst stretch by stretch as its write (seq, odd) progresses: WHOLE; TORN when the
        writer came round to the slot again; STALLED when it made no progress for wait_s seconds or died.
        Between stretches it yields the core for SPIN_S, then sleeps in short naps (a stuck writer costs no
        core)."""
        header, src, done = self._m.headers[slot], self._m.slots[slot], 0
        last = time.monotonic()  # of the last progress
        checked = last + LIVENESS_EVERY_S  # when to look whether the writer still lives
        while done < dst.size:
            progress = min(int(header[2]), dst.size)
            if progress > done:
                _fence()
                np.copyto(dst[done:progress], src[done:progress])
                done, last = progress, time.monotonic()
                continue
            now = int(header[0])
            if now != seq and now != seq + 1:
                return TORN  # a newer write began in this slot: what was copied may be torn
            clock = time.monotonic()
            if clock > last + wait_s:
                return STALLED
            if clock > checked:
                if self.writer_in_my_pid_ns and not _alive(self.writer_pid):
                    return STALLED  # the writer died mid-write (a killed server): no need to wait out wait_s
                checked = clock + LIVENESS_EVERY_S
            if clock < last + SPIN_S:
                os.sched_yield()  # the writer may need this core
            else:
                time.sleep(NAP_S)
        return WHOLE

    def _newer_slot(self) -> int:
        h0, h1 = self._m.headers
        return 0 if int(h0[1]) >= int(h1[1]) else 1

    def _pick(self, min_version: int) -> int:
        """The newer slot, unless it is being written and the other holds a version new enough: that one is
        read at once instead of waiting for the write (a hint: read_into checks what it copied)."""
        newer = self._newer_slot()
        other = self._m.headers[1 - newer]
        if int(self._m.headers[newer][0]) % 2 and int(other[0]) % 2 == 0 and int(other[1]) >= min_version:
            return 1 - newer
        return newer

    def close(self) -> None:
        self._m.close()


# -- push slots ---------------------------------------------------------------------------------------------


def _slot_size(numel: int) -> int:
    return HEADER_BYTES + _stride(numel)


def _slot_head(numel: int, nonce: str, rank: int) -> bytes:
    """A push slot's first 40 bytes: magic, numel, nonce, rank."""
    return PUSH_MAGIC + numel.to_bytes(8, "little") + bytes.fromhex(nonce) + rank.to_bytes(8, "little")


class _SlotMap:
    """A push slot's mapping: the `written` word and the values, as numpy views."""

    def __init__(self, fd: int, numel: int):
        self.map = mmap.mmap(fd, _slot_size(numel), access=mmap.ACCESS_WRITE)
        buf = np.frombuffer(self.map, dtype=np.uint8)
        self.written = buf[WRITTEN_AT : WRITTEN_AT + 8].view(np.uint64)
        self.values = buf[HEADER_BYTES : HEADER_BYTES + 4 * numel].view(np.float32)

    def close(self) -> None:
        del self.written, self.values  # the views go first: an mmap with exported buffers cannot close
        with contextlib.suppress(BufferError):
            self.map.close()


class PushSlot:
    """The server's side of one rank's push slot: creates it (0600, O_EXCL, pages reserved: ENOSPC raises
    OSError here, not SIGBUS later) and reads the values a push names. Unlinked at close, collection or exit."""

    def __init__(self, run_id: str, rank: int, numel: int):
        self.name = f"{prefix(run_id)}{os.getpid()}-{secrets.token_hex(4)}-push{rank}"
        self.path = SHM_DIR / self.name
        self.nonce, self.rank, self.numel = secrets.token_hex(16), rank, numel
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self._unlink = weakref.finalize(self, _unlink, self.path)
        try:
            os.posix_fallocate(fd, 0, _slot_size(numel))
            self._m = _SlotMap(fd, numel)
        except OSError:
            self._unlink()
            raise
        finally:
            os.close(fd)
        head = _slot_head(numel, self.nonce, rank)
        self._m.map[: len(head)] = head

    def advert(self) -> Advert:
        return Advert(self.name, host_id(), self.numel, self.nonce)

    def values(self, seq: int) -> np.ndarray | None:
        """The slot's numel float32 values, a view (no copy), when they are those of push `seq`; else None."""
        if int(self._m.written[0]) != seq + 1:
            return None
        _fence()  # the values are read after the `written` word (the worker stored them before it)
        return self._m.values

    def close(self) -> None:
        self._unlink()
        self._m.close()


class PushSlotWriter:
    """The worker's side: opens the advertised slot of its rank read-write. Raises SegmentError when it is not
    this host's, cannot be opened, or is not the advertised one (size, magic, nonce, rank)."""

    def __init__(self, advert: Advert, rank: int, expected_numel: int):
        if advert.host != host_id() or advert.numel != expected_numel:
            raise SegmentError(f"push slot {advert.name} is on another host or of another size")
        self._m = _open_advertised(advert.name, os.O_RDWR, _slot_size(advert.numel),
                                   lambda fd: _SlotMap(fd, advert.numel))  # fmt: skip
        want = _slot_head(advert.numel, advert.nonce, rank)
        if self._m.map[: len(want)] != want:
            self._m.close()
            raise SegmentError(f"/dev/shm/{advert.name} is not the push slot the server advertised")
        self.name, self.numel = advert.name, advert.numel

    @property
    def values(self) -> np.ndarray:
        """The slot's numel float32 values, writable in place: a gradient computed straight into them is left
        there by invalidate() before the first write and publish(seq) after the last, with no copy."""
        return self._m.values

    def write(self, seq: int, values: object) -> None:
        """Leave push `seq`'s values (numel float32, viewed without a copy) in the slot."""
        self.invalidate()
        np.copyto(self._m.values, np.asarray(values).reshape(-1))
        self.publish(seq)

    def invalidate(self) -> None:
        """The slot names no push from now on: call before its values change (a slot half written names none,
        so a copy of an earlier push staged late is refused stale_slot instead of reading them)."""
        self._m.written[0] = 0
        _fence()

    def publish(self, seq: int) -> None:
        """The values now in the slot are push `seq`'s."""
        _fence()
        self._m.written[0] = seq + 1

    def close(self) -> None:
        self._m.close()
