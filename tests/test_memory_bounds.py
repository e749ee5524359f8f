"""The server's memory is bounded by the model it serves, not by what a peer sends (docs/security.md, Memory).

A real server process (`python -m ps`) serves a 16 MiB model (the quadratic task, 4,194,304 float32
parameters); a legitimate worker joins and pushes first, so every buffer a run needs is touched. Then a
hostile peer sends what the server must refuse, and a sampler reads the server's RSS every few milliseconds:
the growth stays under twice the model's size. Without CURVE the cases are those a header or a frame size
decides: frames larger than any legal frame, headers declaring huge tensors, types the server never
accepts, floods of single-frame messages. With CURVE a stranger's 256 MiB multipart message does not reach
the server at all. (Without CURVE, ZeroMQ assembles a whole multipart message before the server sees its
header, so the bound there is who can connect: docs/security.md.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import psutil
import pytest
import torch
import zmq

from launch.inproc import FakeWorker
from protocol.wire import codec
from protocol.wire.curve import server_keys, worker_keys
from protocol.wire.layout import Layout
from protocol.wire.messages import Hello, Pull, Push, Reply

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DIM = 1 << 22
MODEL_BYTES = 4 * DIM
LAYOUT = Layout.from_shapes([("x", (DIM,))])
CHUNK = 1 << 20  # server.chunk_bytes: no legal frame is larger
CONFIG = f"""
name: membound
workers: 1
task: {{dataset: synthetic, batch_size: 0, synthetic: {{kind: quadratic, dim: {DIM}}}}}
optimizer: {{name: amsgrad, lr: 0.001}}
run: {{max_updates: 1000000, max_seconds: 600}}
server: {{chunk_bytes: {CHUNK}, join_timeout_s: 600}}
"""


class Server:
    """`python -m ps` on a prepared run folder, and a sampler of its peak RSS."""

    def __init__(self, tmp_path: Path, auth: str):
        (tmp_path / "c.yaml").write_text(CONFIG)
        self.run_dir = tmp_path / "run"
        prep = [sys.executable, "-m", "launch.prepare", str(tmp_path / "c.yaml"), f"server.auth={auth}"]
        prep += ["--run-dir", str(self.run_dir)]
        done = subprocess.run(prep, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        cmd = [
            sys.executable,
            "-m",
            "ps",
            "--config",
            str(self.run_dir / "config.yaml"),
            "--run-dir",
            str(self.run_dir),
        ]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.endpoint = self._ready()
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # a full pipe would stall it
        self.ps = psutil.Process(self.proc.pid)
        self.peak, self._stop = 0, threading.Event()

    def _ready(self) -> str:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("TAUPS_SERVER_READY"):
                return line.split()[1]
            assert line or self.proc.poll() is None, "the server exited before it was ready"
        raise AssertionError("the server did not become ready in 120 s")

    def rss(self) -> int:
        return self.ps.memory_info().rss

    @contextlib.contextmanager
    def sampling(self):
        """Track the peak RSS while the block runs (every 5 ms)."""
        self.peak, self._stop = self.rss(), threading.Event()

        def sample():
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, self.rss())

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield
        finally:
            time.sleep(0.3)  # let the server work through what was sent
            self._stop.set()
            thread.join()

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc.stdout.close()


@pytest.fixture
def server(request, tmp_path):
    srv = Server(tmp_path, request.param)
    try:
        yield srv
    finally:
        srv.close()


def _warm_up(srv: Server, keys=None) -> FakeWorker:
    """A real worker joins and pushes, so the server's run-time buffers exist before the baseline."""
    worker = FakeWorker(srv.endpoint, 0, LAYOUT, keys=keys, max_message_bytes=1 << 30)
    worker.send_hello(run_id="run")
    welcome = worker.chan.recv(120).msg  # a loaded 2-core machine may take a while to move 16 MiB
    assert welcome.TYPE == "welcome", welcome
    worker.seq, worker.version, worker.params = welcome.next_seq, welcome.version, welcome.params
    for _ in range(3):
        assert worker.push(torch.full((DIM,), 1e-3)).applied
    return worker


def _raw_dealer(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 2000)
    sock.connect(endpoint)
    return sock


def _header(msg, declared_numel: int) -> bytes:
    """`msg`'s header with its first tensor declared `declared_numel` float32s long; no tensor bytes follow."""
    header = msgpack.unpackb(bytes(codec.encode(msg, chunk_bytes=CHUNK)[0]), raw=False)
    name = header["tensors"][0][0]
    header["tensors"] = [[name, "float32", [declared_numel], -(-4 * declared_numel // CHUNK)]]
    return msgpack.packb(header, use_bin_type=True)


def _frames(msg) -> list[bytes]:
    return [bytes(f) for f in codec.encode(msg, chunk_bytes=CHUNK)]


HELLO = Hello(rank=0, pid=1, host="x", device="cpu", run_id="x", uplink="grad", signature=[])
PUSH = Push(rank=0, seq=0, base_version=0, kind="grad", encoding="dense", numel=DIM, loss=0.0, samples=1,
            values=torch.zeros(1))  # fmt: skip


def _hostile_without_curve(endpoint: str) -> None:
    ctx = zmq.Context()
    try:
        for _ in range(4):  # a frame larger than any legal frame: ZeroMQ drops the connection at its size
            sock = _raw_dealer(ctx, endpoint)
            sock.send_multipart([_frames(Pull(rank=0))[0], b"\0" * (64 << 20)])
            sock.close()
        sock = _raw_dealer(ctx, endpoint)
        reply = _frames(Reply(applied=True, reason="", staleness=0, version=1, lr=0.0, params=torch.zeros(CHUNK // 4)))
        for _ in range(32):  # a type the server never takes, with one legal frame of tensor bytes
            sock.send_multipart(reply)
        for huge in (DIM, 1 << 28):  # headers alone declaring a model's worth, and 1 GiB
            for msg in (PUSH, Reply(applied=True, reason="", staleness=0, version=1, lr=0.0, params=torch.zeros(1))):
                for _ in range(16):
                    sock.send(_header(msg, huge))
        floods = [_frames(Pull(rank=0)), _frames(HELLO), [b"\x00garbage"]]
        for i in range(20000):  # single-frame floods
            sock.send_multipart(floods[i % 3])
        sock.close()
    finally:
        ctx.destroy(linger=0)


def _hostile_with_curve(endpoint: str, server_public: bytes) -> None:
    """A peer with a key the server does not know sends one 256 MiB multipart message (1 MiB frames)."""
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 2000)
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
        sock.curve_serverkey = server_public
        sock.connect(endpoint)
        frame = b"\0" * CHUNK
        with contextlib.suppress(zmq.Again):  # nothing goes out without a handshake: the queue fills
            sock.send_multipart([_header(PUSH, 1 << 26), *[frame] * 256])
        time.sleep(1.0)
        sock.close()
    finally:
        ctx.destroy(linger=0)


def _growth_bound() -> int:
    return 2 * MODEL_BYTES


@pytest.mark.parametrize("server", ["none"], indirect=True)
def test_without_curve_what_the_header_or_frame_size_decides_costs_no_memory(server):
    worker = _warm_up(server)
    base = server.rss()
    with server.sampling():
        _hostile_without_curve(server.endpoint)
    assert worker.push(torch.full((DIM,), 1e-3)).applied  # the run goes on
    worker.close()
    growth = server.peak - base
    print(
        f"server RSS {base / 2**20:.0f} MiB, peak growth {growth / 2**20:.1f} MiB, model {MODEL_BYTES / 2**20:.0f} MiB"
    )
    assert growth < _growth_bound(), f"RSS grew {growth / 2**20:.1f} MiB serving a {MODEL_BYTES / 2**20:.0f} MiB model"


@pytest.mark.parametrize("server", ["curve"], indirect=True)
def test_with_curve_a_strangers_huge_message_never_arrives(server):
    folder = server.run_dir / "keys"
    worker = _warm_up(server, keys=worker_keys(folder, 0))
    base = server.rss()
    with server.sampling():
        _hostile_with_curve(server.endpoint, server_keys(folder, 1).pair.public)
    assert worker.push(torch.full((DIM,), 1e-3)).applied
    worker.close()
    growth = server.peak - base
    print(f"server RSS {base / 2**20:.0f} MiB, peak growth {growth / 2**20:.1f} MiB")
    assert growth < _growth_bound(), f"RSS grew {growth / 2**20:.1f} MiB"
