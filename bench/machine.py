"""Machine limits measured in the same run as a benchmark, so results print as ratios against them."""

from __future__ import annotations

import time

import torch
import zmq


def copy_bandwidth_gbs(nbytes: int = 64 << 20, repeats: int = 20) -> float:
    """One-thread memory copy bandwidth (bytes read + written), best of `repeats`, in GB/s."""
    torch.set_num_threads(1)
    src = torch.ones(nbytes // 4)
    dst = torch.zeros_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best / 1e9


def amsgrad_step_s(params: int, repeats: int = 20) -> float:
    """Best time of one fused AMSGrad step over `params` floats (moves 36 bytes per parameter)."""
    x = torch.zeros(params)
    opt = torch.optim.Adam([x], lr=1e-3, amsgrad=True, fused=True)
    x.grad = torch.randn(params)
    opt.step()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        opt.step()
        best = min(best, time.perf_counter() - t0)
    return best


AMSGRAD_BYTES_PER_PARAM = 36  # read g, x, m, v, v_hat; write x, m, v, v_hat (float32)


def zmq_round_trip_s(nbytes: int, endpoint_host: str = "127.0.0.1", repeats: int = 30) -> float:
    """Median time for `nbytes` to go to another process and `nbytes` to come back over a ZeroMQ DEALER
    pair on loopback TCP, zero-copy at both ends and nothing else done: the wire's share of one dense
    push + reply, which no runtime on this transport can go below."""
    import multiprocessing as mp

    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 60_000)
    port = sock.bind_to_random_port(f"tcp://{endpoint_host}")
    peer = mp.get_context("spawn").Process(target=_echo, args=(f"tcp://{endpoint_host}:{port}", nbytes), daemon=True)
    peer.start()
    payload = torch.ones(nbytes // 4).numpy()
    times = []
    try:
        for i in range(repeats + 3):
            t0 = time.perf_counter()
            sock.send(payload, copy=False)
            sock.recv(copy=False)
            if i >= 3:  # the first exchanges set up buffers
                times.append(time.perf_counter() - t0)
        sock.send(b"")
    finally:
        peer.join(timeout=10)
        if peer.is_alive():
            peer.kill()
        sock.close()
        ctx.term()
    return sorted(times)[len(times) // 2]


def _echo(endpoint: str, nbytes: int) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 60_000)
    sock.connect(endpoint)
    reply = torch.ones(nbytes // 4).numpy()
    while len(sock.recv(copy=False)) > 0:
        sock.send(reply, copy=False)
    sock.close()
    ctx.term()


def zmq_stream_gbs(curve: bool, nbytes: int = 1 << 20, messages: int = 200) -> float:
    """One-way ZeroMQ throughput over loopback TCP between two sockets of this process, in GB/s, with CURVE
    (every frame encrypted and authenticated, XSalsa20-Poly1305) or without: the ceiling CURVE puts on any
    message stream on this machine."""
    ctx = zmq.Context()
    try:
        server, client = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        if curve:
            public, secret = zmq.curve_keypair()
            server.curve_server, server.curve_publickey, server.curve_secretkey = True, public, secret
            client.curve_serverkey = public
            client.curve_publickey, client.curve_secretkey = zmq.curve_keypair()
        port = server.bind_to_random_port("tcp://127.0.0.1")
        client.connect(f"tcp://127.0.0.1:{port}")
        payload = b"\0" * nbytes
        client.send(payload)
        server.recv()  # connected (and handshaken)
        t0 = time.perf_counter()
        for _ in range(messages):
            client.send(payload, copy=False)
            server.recv(copy=False)
        return messages * nbytes / (time.perf_counter() - t0) / 1e9
    finally:
        ctx.destroy(linger=0)
