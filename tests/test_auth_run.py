"""A CURVE run through the launcher with a stranger flooding it: nothing changes (docs/security.md)."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import zmq
import zmq.auth
from safetensors.torch import load_file

from protocol.wire import codec
from protocol.wire.messages import Hello, Pull, Push

ROOT = Path(__file__).resolve().parent.parent
# One worker: the run is sequential, so two runs end bitwise equal unless something reached the server.
# long enough that the server still listens when the flood ends (workers forked from the fork server join at
# once, and 1500 updates took about a second)
ARGS = ["workers=1", "run.max_updates=8000", "run.eval_every_s=60", "server.auth=curve", "--quiet"]
SOCKETS, PER_SOCKET = 20, 500  # 10,000 messages


def _messages() -> list[list[bytes]]:
    values = torch.full((9610,), 1e30)
    push = Push(rank=0, seq=0, base_version=0, kind="grad", encoding="dense", numel=9610, loss=0.0, samples=1,
                values=values)  # fmt: skip
    hello = Hello(rank=0, pid=1, host="x", device="cpu", run_id="x", uplink="grad", signature=[])
    as_frames = [[bytes(f) for f in codec.encode(m)] for m in (hello, push, Pull(rank=0))]
    return [*as_frames, [b"\x00garbage" * 8]]


def _flood(endpoint: str, server_public: bytes) -> int:
    """20 connections, 500 messages each: ZeroMQ peers without CURVE, with an unknown key, or with a wrong
    server key (ZeroMQ sends nothing of theirs before a handshake succeeds, so their messages stay queued at
    their end or are refused there), and raw TCP connections that write the messages' bytes straight at the
    port. Returns how many of the 20 got anything back (none should)."""
    ctx = zmq.Context()
    socks, raws = [], []
    try:
        return _flood_with(ctx, socks, raws, endpoint, server_public)
    finally:  # even when a connection fails: an open context would be collected, noisily, in another test
        for s in socks:
            s.close(linger=0)
        for r in raws:
            r.close()
        ctx.term()


def _flood_with(ctx: zmq.Context, socks: list, raws: list, endpoint: str, server_public: bytes) -> int:
    kinds = _messages()
    host, port = endpoint[len("tcp://") :].rsplit(":", 1)
    for i in range(SOCKETS):
        if i % 4 == 3:
            raw = socket.create_connection((host, int(port)), timeout=5)
            with contextlib.suppress(OSError):  # the server may close it at the first bad byte
                for j in range(PER_SOCKET):
                    raw.sendall(b"".join(kinds[j % len(kinds)]))
            raws.append(raw)
            continue
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDTIMEO, 1)
        if i % 4:
            s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()
            s.curve_serverkey = server_public if i % 4 == 1 else zmq.curve_keypair()[0]
        s.connect(endpoint)
        for j in range(PER_SOCKET):
            with contextlib.suppress(zmq.Again):
                s.send_multipart(kinds[j % len(kinds)])
        socks.append(s)
    time.sleep(2.0)  # they keep trying to connect meanwhile
    return sum(1 for s in socks if s.poll(100)) + sum(1 for r in raws if _answered(r))


def _answered(raw: socket.socket) -> bool:
    """Whether anything beyond ZeroMQ's greeting (64 bytes) and a refusal came back on a raw connection."""
    raw.settimeout(0.2)
    got = b""
    with contextlib.suppress(OSError):
        while chunk := raw.recv(65536):
            got += chunk
    return len(got) > 64 + 64


def _run(run_dir: Path, stranger: bool) -> tuple[dict, dict[str, torch.Tensor], int]:
    cmd = [sys.executable, "-m", "launch", str(ROOT / "configs/quickstart.yaml"), *ARGS, "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    answered = -1
    try:
        if stranger:
            deadline = time.monotonic() + 60
            while not (run_dir / "server.json").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            endpoint = json.loads((run_dir / "server.json").read_text())["endpoint"]
            answered = _flood(endpoint, zmq.auth.load_certificate(str(run_dir / "keys" / "server.key"))[0])
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary, load_file(run_dir / "snapshots" / "final.safetensors"), answered


@pytest.mark.slow
def test_a_strangers_10000_messages_change_nothing_and_are_counted(tmp_path):
    quiet, params, _ = _run(tmp_path / "quiet", stranger=False)
    flooded, flooded_params, answered = _run(tmp_path / "flooded", stranger=True)
    assert answered == 0  # no stranger was answered, with parameters or anything else
    assert flooded["auth"] == "curve" and flooded["auth_rejected"] >= SOCKETS, flooded
    assert flooded["messages_rejected"] == 0 and flooded["pushes_received"] == quiet["pushes_received"]
    assert flooded["final_test_acc"] == quiet["final_test_acc"]
    assert params.keys() == flooded_params.keys()
    for name in params:
        assert torch.equal(params[name], flooded_params[name]), name  # bitwise the run without the stranger
