"""Structure-aware fuzzing of a real server process: 10,000 mutated messages of every type change nothing.

Valid messages of every type (every Push encoding, every wire dtype) are encoded, then mutated where a
decoder can go wrong: header values (huge, negative, out-of-range floats, wrong types), tensor specs
(dtype, overflowing or negative shapes, frame counts), frame bytes (truncated, extended, flipped) and the
frame list (dropped, duplicated, extra frames). A legitimate worker holds the only rank, so no mutated
Hello can join and no mutated Push can be applied: the parameters and the version must stay bitwise as
they were, the process must stay alive and answering, and its memory must not grow.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time

import msgpack
import psutil
import pytest
import torch
import yaml
import zmq

from protocol.config.typed import to_dict
from protocol.runfolder.model_init import FILE, write_model_init
from protocol.wire import codec
from protocol.wire.encoding import encode_dense, encode_natural, encode_qsgd, encode_sign, encode_sparse
from protocol.wire.layout import Layout
from protocol.wire.messages import Heartbeat, Hello, Message, Pull, Push, Reject, Reply, Stop, Welcome
from tests.helpers import FakeWorker, make_config, served

LAYOUT = Layout.from_shapes([("w", (16, 8)), ("b", (8,))])
N = LAYOUT.total
MESSAGES = 10_000
RSS_GROWTH_MB = 20
WINDOW = 4  # messages in flight: within the server's queue per peer (ps/outbox.py PEER_QUEUE), so none is dropped


def _pushes(rng: random.Random) -> list[Push]:
    x = torch.randn(N)
    idx = torch.tensor(sorted(rng.sample(range(N), 9)))
    payloads = [
        encode_dense(x),
        encode_dense(x, "bfloat16"),
        encode_dense(x, "float16"),
        *(encode_sparse(idx, x[idx], N, v, c) for v in ("float32", "bfloat16") for c in ("int32", "delta16", "bitmap")),
        encode_natural(torch.ldexp(torch.ones(N), torch.randint(-5, 5, (N,)))),
        encode_qsgd(torch.randint(-4, 5, (N,), dtype=torch.int8), 2.0, 4),
        encode_sign(torch.rand(N) < 0.5, 0.5),
    ]
    kinds = ("grad", "delta", "reset")
    return [
        Push(0, 1, 1, kinds[i % 3], p.encoding, N, 0.5, 8, p.meta, p.values, p.indices, p.signs)
        for i, p in enumerate(payloads)
    ]


def _seeds(rng: random.Random) -> list[list[bytes]]:
    """Valid encodings of every message type, as frame lists."""
    msgs: list[Message] = [
        *_pushes(rng),
        Hello(0, 1, "h", "cpu", "fuzz", "grad", LAYOUT.signature(), []),
        Welcome(0, 0, LAYOUT.to_wire(), {"workers": 1}, torch.zeros(N)),
        Reply(True, "ok", 0, 0, 0.1, 3, params=torch.zeros(N)),
        Pull(0),
        Reject("bad_seq", "x", 0, 1, 2),
        Heartbeat(0, 0),
        Stop("done", 3),
    ]
    return [[bytes(f) for f in codec.encode(m, chunk_bytes=rng.choice([64, 256, 1 << 20]))] for m in msgs]


ODD_VALUES = [
    -1,
    2**63,
    -(2**63),
    2**64 - 1,
    0,
    1e300,
    -3.5e38,
    float("nan"),
    float("inf"),
    "x",
    b"\xff",
    None,
    [],
    {},
    True,
    [1, [2]],
]


def _mutate_header(header: dict, rng: random.Random) -> None:
    choice = rng.randrange(5)
    fields, specs = header.get("fields"), header.get("tensors")
    if choice == 0 and isinstance(fields, dict) and fields:
        fields[rng.choice(list(fields))] = rng.choice(ODD_VALUES)
    elif choice == 1 and isinstance(fields, dict):
        meta = fields.get("meta") if isinstance(fields.get("meta"), dict) else fields
        meta[rng.choice(["scale", "norm", "levels", "index_coding", "g_sq", "clipped"])] = rng.choice(ODD_VALUES)
    elif choice == 2 and isinstance(specs, list) and specs and isinstance(spec := rng.choice(specs), list) and spec:
        spec[rng.randrange(len(spec))] = rng.choice(
            [[2**39 - 1, 2**39 - 1, 0], [-1], [2**40], "int8", "float64", 0, 2**16 + 1, [N, N, N], [], rng.randrange(9)]
        )
    elif choice == 3:
        header[rng.choice(["proto", "ver", "type", "fields", "tensors"])] = rng.choice(ODD_VALUES + ["push", "hello"])
    else:
        header["type"] = rng.choice(["push", "hello", "pull", "reply", "welcome", "heartbeat", "stop", "reject"])


def _mutate(frames: list[bytes], rng: random.Random) -> list[bytes]:
    frames = list(frames)
    header = msgpack.unpackb(frames[0], raw=False, strict_map_key=False)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(7)
        if op < 3:
            _mutate_header(header, rng)
        elif op == 3 and len(frames) > 1:
            i = rng.randrange(1, len(frames))
            frames[i] = frames[i][: rng.randrange(len(frames[i]) + 1)]
        elif op == 4 and len(frames) > 1:
            i = rng.randrange(1, len(frames))
            b = bytearray(frames[i] or b"\0")
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            frames[i] = bytes(b) + (b"\0" * rng.randrange(3))
        elif op == 5:
            frames.append(frames[-1] if rng.random() < 0.5 else b"extra")
        elif len(frames) > 1:
            del frames[rng.randrange(1, len(frames))]
    try:
        frames[0] = msgpack.packb(header, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        frames[0] = b"\xc1" + frames[0][1:]  # unpackable values: send a garbled header instead
    return frames


def _fuzz(fuzzer: zmq.Socket, seeds: list[list[bytes]], rng: random.Random, proc: subprocess.Popen) -> int:
    """Send MESSAGES mutated messages, at most WINDOW unanswered at a time; returns how many were answered.
    The server answers every message (a Reject, or a Heartbeat for a heartbeat), so a message that gets no
    answer within 5 s is one the server hung on."""
    answered = sent = 0
    while answered < MESSAGES:
        if sent < MESSAGES and sent - answered < WINDOW:
            fuzzer.send_multipart(_mutate(rng.choice(seeds), rng))
            sent += 1
            continue
        assert fuzzer.poll(5000), f"no answer for 5 s after {answered} answers: the server hangs"
        fuzzer.recv_multipart()
        answered += 1
        if answered % 1000 == 0:
            assert proc.poll() is None, f"the server died after {answered} messages"
    return answered


@pytest.fixture
def server(tmp_path):
    cfg = make_config(
        workers=1,
        optimizer={"name": "amsgrad", "lr": 0.01},
        run={"max_updates": 10**9, "max_seconds": 600, "eval_every_s": 1000},
        # the fuzzer, a connection holding no rank, waits for an answer to each message: no admission budget
        server={"stop_grace_s": 1, "stranger_messages_per_s": 1e9},
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    write_model_init(tmp_path / "run" / FILE, served(LAYOUT, torch.randn(N), run_id="fuzz"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ps", "--config", str(tmp_path / "config.yaml"), "--run-dir", str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = ""
        while not line.startswith("TAUPS_SERVER_READY"):
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "the server exited before it was ready"
        yield proc, line.split()[1]
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.timeout(180)
def test_ten_thousand_mutated_messages_change_nothing_and_crash_nothing(server):
    proc, endpoint = server
    rng = random.Random(2026)
    worker = FakeWorker(endpoint, 0, LAYOUT)
    assert worker.hello(run_id="fuzz").TYPE == "welcome"
    for _ in range(3):
        assert worker.push(torch.randn(N)).applied  # optimizer state exists
    before = worker.request(Pull(rank=0))
    rss0 = psutil.Process(proc.pid).memory_info().rss
    fuzzer = zmq.Context.instance().socket(zmq.DEALER)
    fuzzer.setsockopt(zmq.LINGER, 0)
    fuzzer.connect(endpoint)
    seeds = _seeds(rng)
    t0 = time.monotonic()
    try:
        answered = _fuzz(fuzzer, seeds, rng, proc)
        after = worker.request(Pull(rank=0))  # a legitimate peer is still answered
    finally:
        fuzzer.close()
    elapsed = time.monotonic() - t0
    rss_mb = (psutil.Process(proc.pid).memory_info().rss - rss0) / 2**20
    print(f"{MESSAGES} mutated messages, {answered} answered, in {elapsed:.1f}s; server RSS grew {rss_mb:.1f} MB")
    assert proc.poll() is None
    assert answered == MESSAGES  # every message was handled (answered with a Reject or a Heartbeat): no hangs
    assert after.TYPE == "reply" and after.version == before.version
    assert torch.equal(after.params, before.params)
    assert rss_mb < RSS_GROWTH_MB
    worker.close()
