"""protocol/wire/shm.py: the shared-memory segment's layout, its seqlock under a writer publishing as fast as it
can (every read uniform, versions monotone), and what a reader refuses (docs/design.md, Shared-memory
parameters)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import stat
import time

import numpy as np
import pytest

from protocol.wire import shm

pytestmark = pytest.mark.skipif(not shm.supported(), reason="shared-memory parameters need x86-64 and /dev/shm")

BIG = 10_000_000  # floats: a 40 MB copy takes milliseconds, so the writer laps slow readers often


@pytest.fixture(autouse=True)
def no_leftovers():
    before = set(os.listdir(shm.SHM_DIR))
    yield
    ours = tuple(shm.prefix(run) for run in ("unit", "run-a", "run-a-2", "consistency"))  # other runs may be going on
    leaked = {n for n in set(os.listdir(shm.SHM_DIR)) - before if n.startswith(ours)}
    assert not leaked, f"segments left in /dev/shm: {leaked}"


def _reader_of(writer: shm.SegmentWriter) -> shm.SegmentReader:
    return shm.SegmentReader(shm.Advert.from_wire(writer.advert().to_wire()), writer.numel)


def test_segment_is_private_and_unlinked_at_close():
    w = shm.SegmentWriter("unit", 1000)
    mode = os.stat(w.path).st_mode
    assert stat.S_IMODE(mode) == 0o600 and w.name.startswith("taups-unit@")
    r = _reader_of(w)
    w.publish(7, np.arange(1000, dtype=np.float32))
    w.close()
    assert not w.path.exists()
    out = np.zeros(1000, np.float32)
    assert r.read_into(out, 7) == 7  # a reader keeps its mapping after the unlink
    assert np.array_equal(out, np.arange(1000, dtype=np.float32))
    r.close()
    with pytest.raises(shm.SegmentError, match="cannot open"):
        _reader_of(w)


def test_reader_takes_the_newer_slot_and_skips_one_being_written():
    w = shm.SegmentWriter("unit", 64)
    r = _reader_of(w)
    out = np.empty(64, np.float32)
    assert r.read_into(out, 0, tries=3) is None  # nothing published yet
    w.publish(1, np.full(64, 1, np.float32))
    w.publish(2, np.full(64, 2, np.float32))
    assert r.read_into(out) == 2 and (out == 2).all()
    assert r.read_into(out, 3, tries=3) is None  # not yet there: the worker falls back to a pull
    w.begin(3)  # version 3 being written: a reader content with 2 takes the complete slot at once
    assert r.read_into(out, 2, wait_s=0.05) == 2 and (out == 2).all()
    w.write(np.full(32, 3, np.float32))  # half of it
    assert r.read_into(out, 3, tries=2, wait_s=0.05) is None  # stalled half way: given up, never half a copy
    w.write(np.full(32, 3, np.float32))
    w.end()
    assert r.read_into(out, 3) == 3 and (out == 3).all()
    r.close()
    w.close()


def test_reader_refuses_a_segment_that_is_not_the_advertised_one():
    w = shm.SegmentWriter("unit", 64)
    good = w.advert().to_wire()
    for bad, why in (
        ({**good, "nonce": "00" * 16}, "not the segment"),
        ({**good, "host": "elsewhere"}, "another host"),
        ({**good, "name": "taups-unit@1-ff"}, "cannot open"),
    ):
        with pytest.raises(shm.SegmentError, match=why):
            shm.SegmentReader(shm.Advert.from_wire(bad), 64)
    with pytest.raises(shm.SegmentError, match="values"):
        shm.SegmentReader(shm.Advert.from_wire(good), 65)
    for junk in (None, {}, {**good, "name": "../etc/passwd"}, {**good, "numel": "64"}):
        with pytest.raises(shm.SegmentError, match="malformed"):
            shm.Advert.from_wire(junk)
    w.close()


def test_remove_segments_unlinks_only_the_runs_and_only_dead_writers_when_asked():
    mine, other = shm.SegmentWriter("run-a", 8), shm.SegmentWriter("run-a-2", 8)
    dead = shm.SHM_DIR / f"{shm.prefix('run-a')}999999999-abcd"
    dead.write_bytes(b"")
    assert shm.remove_segments("run-a", only_dead=True) == [dead.name]
    assert mine.path.exists() and other.path.exists()
    assert shm.remove_segments("run-a") == [mine.name]  # run-a-2's prefix is not run-a's
    assert other.path.exists()
    mine.close()
    other.close()


# -- the consistency test: a writer as fast as it can, readers reading thousands of times -------------------------


def _writer(advert_q, stop, numel: int, chunks: int) -> None:
    """Publishes versions as fast as it can; with chunks > 1 each is streamed in that many writes, as the server
    streams a step (ps/model.py), so readers that want it follow it."""
    w = shm.SegmentWriter("consistency", numel)
    values = np.empty(numel, np.float32)
    advert_q.put(w.advert().to_wire())
    version = 0
    while not stop.is_set():
        version += 1
        values.fill(version)  # every element is the version: a torn copy mixes two of them
        w.begin(version)
        for part in np.array_split(values, chunks):
            w.write(part)
        w.end()
    w.close()


MAX_GIVE_UPS = 20_000  # reads that gave up after their tries, before a reader stops short of its count


def _reader(advert: dict, numel: int, reads: int, checked: bool, out_q, want_next: bool = False) -> None:
    """want_next: each read asks for a version newer than the last one read (usually the one being written,
    which the read then follows as it is streamed)."""
    r = shm.SegmentReader(shm.Advert.from_wire(advert), numel)
    dst = np.empty(numel, np.float32)
    versions, torn, failed = [], 0, 0
    while len(versions) < reads and failed < MAX_GIVE_UPS:  # `reads` whole reads, however often the writer laps
        if checked:
            v = r.read_into(dst, versions[-1] + 1 if want_next and versions else 0)
        else:  # the copy without the seqlock: what the test would see if the protocol were broken
            slot = r._newer_slot()
            v = int(r._m.headers[slot][1])
            np.copyto(dst, r._m.slots[slot])
        if v is None:
            failed += 1
            continue
        lo, hi = float(dst.min()), float(dst.max())
        torn += not (lo == hi == v)
        versions.append(v)
    r.close()
    out_q.put({"versions": versions, "torn": torn, "failed": failed})


def _race(readers: int, reads: int, checked: bool, numel: int = BIG, chunks: int = 1, want_next: bool = False):
    ctx = mp.get_context("spawn")
    advert_q, out_q, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    writer = ctx.Process(target=_writer, args=(advert_q, stop, numel, chunks))
    writer.start()
    try:
        advert = advert_q.get(timeout=60)
        args = (advert, numel, reads, checked, out_q, want_next)
        procs = [ctx.Process(target=_reader, args=args) for _ in range(readers)]
        for p in procs:
            p.start()
        results = [out_q.get(timeout=600) for _ in procs]
        for p in procs:
            p.join(timeout=60)
    finally:
        stop.set()
        writer.join(timeout=60)
        if writer.is_alive():
            writer.kill()
    assert writer.exitcode == 0
    return results


@pytest.mark.timeout(900)
@pytest.mark.parametrize("chunks, want_next", [(1, False), (16, True)], ids=["whole", "streamed-followed"])
def test_every_read_is_one_whole_version_and_versions_only_grow(chunks, want_next):
    results = _race(readers=2, reads=300, checked=True, chunks=chunks, want_next=want_next)
    for res in results:
        assert res["torn"] == 0, f"{res['torn']} torn reads"
        vs = res["versions"]
        # A writer that does nothing but publish laps a reader now and then (a server publishes at most once
        # per optimizer step, which takes longer than a copy; on a loaded machine more often): those reads
        # gave up after their tries, and a worker would pull over ZeroMQ. Each reader keeps reading until it
        # has 300 whole reads, so the sample does not shrink with the machine's load.
        assert len(vs) == 300, f"only {len(vs)} whole reads ({res['failed']} gave up)"
        assert all(a <= b for a, b in zip(vs, vs[1:])), "versions went backwards"
        assert not want_next or all(a < b for a, b in zip(vs, vs[1:])), "a read older than it asked for"
        assert len(set(vs)) > 10, "the writer barely published: the race did not happen"


@pytest.mark.timeout(900)
def test_the_race_tears_copies_without_the_seqlock():
    """The control: the same race read without the sequence checks shows torn copies, so the test above can
    fail (its zero torn reads are the seqlock's doing, not a race that never happened)."""
    results = _race(readers=1, reads=1000, checked=False)
    assert sum(r["torn"] for r in results) > 0


def _begin_half_and_die(numel: int, advert_q) -> None:
    w = shm.SegmentWriter("dies", numel)
    w.publish(1, np.full(numel, 1, np.float32))
    w.begin(2)
    w.write(np.full(numel // 2, 2, np.float32))
    advert_q.put(w.advert().to_wire())
    time.sleep(120)  # killed by the test: a server killed mid-step, version 2 begun, half written, never ended


def test_a_reader_following_a_write_whose_writer_died_gives_up_at_once_not_after_wait_s():
    ctx = mp.get_context("spawn")
    advert_q = ctx.Queue()
    writer = ctx.Process(target=_begin_half_and_die, args=(64, advert_q))
    writer.start()
    advert = advert_q.get(timeout=60)
    os.kill(writer.pid, signal.SIGKILL)
    writer.join(timeout=60)
    r = shm.SegmentReader(shm.Advert.from_wire(advert), 64)
    out = np.empty(64, np.float32)
    try:
        t0 = time.monotonic()
        assert r.read_into(out, 2, tries=1, wait_s=30) is None  # the worker then pulls from the new server
        assert time.monotonic() - t0 < 5
        assert r.read_into(out, 1) == 1 and (out == 1).all()  # the complete version is still there
    finally:
        r.close()
        shm.remove_segments("dies")


def test_a_stalled_write_is_given_up_once_per_read_after_wait_s_without_spinning_a_core():
    w = shm.SegmentWriter("stall", 64)
    r = _reader_of(w)
    out = np.empty(64, np.float32)
    try:
        w.publish(1, np.full(64, 1, np.float32))
        w.begin(2)
        w.write(np.full(32, 2, np.float32))  # the writer is alive (this process) but makes no more progress
        wall, cpu = time.monotonic(), time.process_time()
        assert r.read_into(out, 2, tries=16, wait_s=0.5) is None
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
        assert 0.5 <= wall < 2.0, wall  # once wait_s, not once per try (16 x 0.5 s)
        assert cpu < 0.5 * wall, (cpu, wall)  # it naps while it waits
    finally:
        r.close()
        w.close()
