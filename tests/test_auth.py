"""CURVE on every socket, key files, and safe defaults (docs/security.md)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import zmq

from launch.keys import main as keys_main
from launch.keys import run_keys
from protocol.errors import ConfigError
from protocol.wire.channel import HANDSHAKE_MS, Channel
from protocol.wire.curve import KeyFileError, create_keys, server_keys, worker_keys
from protocol.wire.endpoints import is_local
from protocol.wire.layout import Layout
from protocol.wire.messages import Heartbeat, Message, Pull, Reply
from tests.helpers import TIMEOUT_S, FakeWorker, make_config, running_server

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = Layout.from_shapes([("w", (4,))])


@pytest.mark.parametrize(
    "endpoint, local",
    [
        ("tcp://127.0.0.1:0", True),
        ("tcp://127.8.0.1:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///tmp/taups.sock", True),
        ("tcp://*:0", False),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://10.1.2.3:5555", False),
        ("tcp://eth0:5555", False),
        ("tcp://server.example:5555", False),
    ],
)
def test_an_endpoint_is_local_only_on_loopback_or_ipc(endpoint, local):
    assert is_local(endpoint) is local


def test_binding_beyond_this_host_without_curve_is_refused_naming_endpoint_and_auth():
    with pytest.raises(ConfigError) as err:
        make_config(server={"endpoint": "tcp://*:0", "auth": "none"})
    assert err.value.key == "server.endpoint" and "server.auth" in err.value.message
    assert make_config(server={"endpoint": "tcp://*:0"}).server.curve  # auto: CURVE beyond this host
    assert not make_config(server={"endpoint": "tcp://127.0.0.1:0"}).server.curve
    insecure = make_config(server={"endpoint": "tcp://*:0", "auth": "none", "allow_insecure": True})
    assert not insecure.server.curve


def test_the_command_line_refuses_an_exposed_endpoint_with_exit_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: {dataset: synthetic}\n")
    run = [sys.executable, "-m", "launch", str(ROOT / "configs/quickstart.yaml"), "server.endpoint=tcp://*:0"]
    p = subprocess.run([*run, "server.auth=none"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 2 and "server.endpoint" in p.stderr and "server.auth" in p.stderr, p.stderr
    ps = [sys.executable, "-m", "ps", "--config", str(cfg), "--run-dir", str(tmp_path / "r"), "--endpoint", "tcp://*:0"]
    p = subprocess.run(ps, capture_output=True, text=True, timeout=120, cwd=ROOT)  # an override exposes it too
    assert p.returncode == 2 and "server.endpoint" in p.stderr, p.stderr


# -- key files --------------------------------------------------------------------------------------
def test_created_keys_are_private_and_name_their_rank(tmp_path):
    folder = tmp_path / "keys"
    written = create_keys(folder, 2)
    assert len(written) == 6 and stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in written:
        want = 0o600 if path.suffix == ".key_secret" else 0o644
        assert stat.S_IMODE(path.stat().st_mode) == want, path
    keys = server_keys(folder, 2)
    assert sorted(keys.allow.values()) == ["worker-0", "worker-1"]
    assert worker_keys(folder, 1).server_public == keys.pair.public
    assert create_keys(folder, 3) == [folder / "worker-2.key", folder / "worker-2.key_secret"]  # others kept


@pytest.mark.parametrize("fault", ["missing", "world_readable", "group_readable", "garbage", "a_folder", "public"])
def test_a_bad_secret_key_file_is_refused_naming_it(tmp_path, fault):
    create_keys(tmp_path, 1)
    path = tmp_path / "worker-0.key_secret"
    if fault == "missing":
        path.unlink()
    elif fault == "world_readable":
        path.chmod(0o604)
    elif fault == "group_readable":
        path.chmod(0o640)
    elif fault == "garbage":
        path.write_text("not a key\n")
    elif fault == "a_folder":
        path.unlink()
        path.mkdir(mode=0o700)
    elif fault == "public":  # a public key file copied over the secret one
        shutil.copy(tmp_path / "worker-0.key", path)
    with pytest.raises(KeyFileError) as err:
        worker_keys(tmp_path, 0)
    assert str(path) in str(err.value)


def test_a_missing_worker_public_key_is_refused_by_the_server_naming_it(tmp_path):
    create_keys(tmp_path, 2)
    (tmp_path / "worker-1.key").unlink()
    with pytest.raises(KeyFileError, match="worker-1.key is missing"):
        server_keys(tmp_path, 2)


def test_keys_command_creates_and_lists_refusing_a_readable_secret(tmp_path, capsys):
    assert keys_main(["create", str(tmp_path / "k"), "--workers", "2"]) == 0
    (tmp_path / "k" / "worker-1.key_secret").chmod(0o644)
    assert keys_main(["list", str(tmp_path / "k")]) == 0
    out = capsys.readouterr().out
    assert "worker-0.key_secret" in out and "REFUSED" in out and "worker-1.key_secret is readable by others" in out
    assert keys_main(["list", str(tmp_path / "nothing")]) == 2
    assert keys_main(["create", str(tmp_path / "k2"), "--workers", "0"]) == 2


def test_the_launcher_makes_keys_for_a_curve_run_without_a_key_folder(tmp_path):
    assert run_keys(make_config(server={"auth": "curve"}, workers=3), tmp_path) == tmp_path / "keys"
    assert server_keys(tmp_path / "keys", 3).allow
    assert run_keys(make_config(), tmp_path / "other") is None  # loopback, auth auto: no keys
    given = make_config(server={"auth": "curve", "keys": str(tmp_path / "keys")})
    assert run_keys(given, tmp_path / "third") is None  # the user's own folder is used as it is


# -- the wire ---------------------------------------------------------------------------------------
def _curve_server(folder: Path, workers: int) -> tuple[Channel, str]:
    chan = Channel("router", curve=server_keys(folder, workers), send_timeout_s=1)
    chan.watch_handshakes()
    return chan, chan.bind("tcp://127.0.0.1:0")


def _wait_failures(chan: Channel, at_least: int, timeout_s: float = 10.0) -> int:
    n, deadline = 0, time.monotonic() + timeout_s
    while n < at_least and time.monotonic() < deadline:
        n += chan.handshake_failures()
        time.sleep(0.02)
    return n


def test_only_allowed_keys_reach_the_server_and_their_messages_name_the_key(tmp_path):
    create_keys(tmp_path, 2)
    router, endpoint = _curve_server(tmp_path, 2)
    ctx = zmq.Context.instance()
    strangers = [ctx.socket(zmq.DEALER) for _ in range(2)]
    public, secret = zmq.curve_keypair()  # an unknown key that knows the server's public key
    strangers[1].curve_publickey, strangers[1].curve_secretkey = public, secret
    strangers[1].curve_serverkey = server_keys(tmp_path, 2).pair.public
    worker = Channel("dealer", curve=worker_keys(tmp_path, 1), send_timeout_s=1)
    try:
        for s in strangers:  # strangers[0] speaks without CURVE at all
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDTIMEO, 1000)  # a refused handshake drops the pipe: send would block for good
            s.connect(endpoint)
            with contextlib.suppress(zmq.Again):
                s.send_multipart([b"garbage"] * 3)
        worker.connect(endpoint)
        worker.send(Pull(rank=1))
        got = router.recv(5)
        assert got.msg == Pull(rank=1) and got.user == "worker-1"
        assert not router.poll(0.3)  # nothing from the strangers, ever
        assert _wait_failures(router, 2) >= 2  # both counted
        router.send(Heartbeat(rank=-1, version=0), to=got.identity)
        assert worker.recv(5).msg == Heartbeat(rank=-1, version=0)  # encrypted both ways
    finally:
        for s in strangers:
            s.close(linger=0)
        worker.close()
        router.close()


@pytest.mark.parametrize("chunk", [1 << 16, 1 << 20])
def test_full_chunk_frames_pass_under_curve_both_ways(tmp_path, chunk):
    """CURVE wraps every frame, and ZeroMQ's frame limit applies to the wrapped size: a tensor cut into
    full chunks must still arrive (it once dropped the connection silently)."""
    create_keys(tmp_path, 1)
    keys = server_keys(tmp_path, 1)
    router = Channel("router", curve=keys, chunk_bytes=chunk)
    endpoint = router.bind("tcp://127.0.0.1:0")
    worker = Channel("dealer", curve=worker_keys(tmp_path, 0), chunk_bytes=chunk, send_timeout_s=5)
    try:
        worker.connect(endpoint)
        values = torch.arange(3 * chunk // 4, dtype=torch.float32)  # three full frames
        worker.send(Reply(applied=True, reason="", staleness=0, version=1, lr=0.0, params=values))
        got = router.recv(10)
        assert torch.equal(got.msg.params, values)
        router.send(Reply(applied=True, reason="", staleness=0, version=2, lr=0.0, params=values), to=got.identity)
        assert torch.equal(worker.recv(10).msg.params, values)
    finally:
        worker.close()
        router.close()


def test_a_worker_whose_key_the_server_refuses_notices_it(tmp_path):
    create_keys(tmp_path / "a", 1)
    create_keys(tmp_path / "b", 1)
    shutil.copy(tmp_path / "a" / "server.key", tmp_path / "b" / "server.key")  # right server, unknown worker key
    router, endpoint = _curve_server(tmp_path / "a", 1)
    worker = Channel("dealer", curve=worker_keys(tmp_path / "b", 0), send_timeout_s=1)
    worker.watch_handshakes()
    try:
        worker.connect(endpoint)
        with contextlib.suppress(TimeoutError):  # once the refused handshake drops the pipe, a send has no peer
            worker.send(Pull(rank=0))
        assert _wait_failures(worker, 1) >= 1
        assert not router.poll(0.1)
    finally:
        worker.close()
        router.close()


def test_a_key_joins_only_as_the_rank_it_names(tmp_path):
    create_keys(tmp_path, 2)
    cfg = make_config(workers=2, server={"auth": "curve", "wait_for_workers": False})
    with running_server(cfg, model=(LAYOUT, torch.zeros(4)), keys=server_keys(tmp_path, 2)) as (server, endpoint, _):
        thief = FakeWorker(endpoint, 0, LAYOUT, keys=worker_keys(tmp_path, 1))  # worker-1's key, claiming rank 0
        refused = thief.hello(run_id="")
        assert refused.TYPE == "reject" and refused.code == "wrong_key" and "worker-1" in refused.message
        assert thief.request(Pull(rank=0)).code == "unknown_rank"  # and it never got parameters
        ok = FakeWorker(endpoint, 1, LAYOUT, keys=worker_keys(tmp_path, 1))
        assert ok.hello(run_id="").TYPE == "welcome"
        assert ok.push(torch.ones(4)).TYPE == "reply"
        thief.close()
        ok.close()


def test_an_ipc_socket_is_owner_only(tmp_path):
    chan = Channel("router")
    try:
        bound = chan.bind(f"ipc://{tmp_path}/s")
        assert stat.S_IMODE(os.stat(bound[len("ipc://") :]).st_mode) == 0o600
    finally:
        chan.close()


def test_a_worker_with_a_refused_key_exits_1_saying_so(tmp_path):
    create_keys(tmp_path / "a", 1)
    create_keys(tmp_path / "b", 1)
    shutil.copy(tmp_path / "a" / "server.key", tmp_path / "b" / "server.key")
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text("task: {dataset: synthetic}\nworkers: 1\nserver: {auth: curve}\n")
    router, endpoint = _curve_server(tmp_path / "a", 1)
    cmd = [sys.executable, "-m", "worker", "--config", str(cfg_path), "--rank", "0", "--server", endpoint]
    try:
        p = subprocess.run([*cmd, "--keys", str(tmp_path / "b")], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert p.returncode == 1 and "refused this worker's CURVE handshake" in p.stderr, p.stderr[-2000:]
        p = subprocess.run([*cmd, "--keys", str(tmp_path / "nokeys")], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and "nokeys/worker-0.key_secret is missing" in p.stderr, p.stderr[-2000:]
    finally:
        router.close()


def _worker_with_routing_id(endpoint: str, rank: int, keys, routing_id: bytes) -> FakeWorker:
    """A FakeWorker whose connection names its own routing id (any peer may choose one)."""
    w = FakeWorker(endpoint, rank, LAYOUT, keys=keys)
    w.chan.close()
    w.chan = Channel("dealer", send_timeout_s=5, curve=keys)
    w.chan.sock.setsockopt(zmq.ROUTING_ID, routing_id)
    w.chan.connect(endpoint)
    return w


def _take_over(endpoint: str, keys, routing_id: bytes) -> tuple[FakeWorker, Message]:
    """Connect as `routing_id` once the server has let the old connection with that id go, and pull as rank 0:
    the connection and the answer. Until then the server's ROUTER refuses a second peer with the id (the pull
    goes unanswered: connect again) or the rank is still held (rank_in_use: ask again)."""
    deadline = time.monotonic() + 3 * TIMEOUT_S
    while time.monotonic() < deadline:
        thief = _worker_with_routing_id(endpoint, 0, keys, routing_id)
        thief.chan.send(Pull(rank=0))
        try:
            while (got := thief.chan.recv(1.0).msg).TYPE == "heartbeat":
                pass
        except TimeoutError:
            thief.close()
            continue
        if not (got.TYPE == "reject" and got.code == "rank_in_use"):
            return thief, got
        thief.close()
    raise AssertionError("the server never let the old connection go")


def test_another_ranks_key_cannot_push_through_a_routing_id_it_took_over(tmp_path):
    """The rank a key names binds every message, not only the Hello: a peer chooses its own routing id, so
    after rank 0's connection has gone, worker-1's key connecting with that id must not push or pull as rank 0."""
    create_keys(tmp_path, 2)
    cfg = make_config(workers=2, server={"auth": "curve", "wait_for_workers": False})
    with running_server(cfg, model=(LAYOUT, torch.zeros(4)), keys=server_keys(tmp_path, 2)) as (server, endpoint, _):
        victim = _worker_with_routing_id(endpoint, 0, worker_keys(tmp_path, 0), b"rank0-connection")
        assert victim.hello(run_id="").TYPE == "welcome"
        assert victim.push(torch.ones(4)).TYPE == "reply"
        victim.close()
        thief, got = _take_over(endpoint, worker_keys(tmp_path, 1), b"rank0-connection")
        thief.seq, thief.version = victim.seq, victim.version
        assert got.TYPE == "reject" and got.code == "unknown_rank", got
        refused = thief.push(torch.full((4,), 100.0))
        assert refused.TYPE == "reject" and refused.code == "unknown_rank", refused
        assert server.version == 1  # only the victim's own push was applied
        thief.close()


@pytest.mark.parametrize("source", ["worker-0", "server"])
def test_a_public_key_copied_over_another_ranks_is_refused_naming_both(tmp_path, source):
    """One key under two names would let its holder join as either rank and lock the other rank out."""
    create_keys(tmp_path, 2)
    shutil.copy(tmp_path / f"{source}.key", tmp_path / "worker-1.key")
    with pytest.raises(KeyFileError) as err:
        server_keys(tmp_path, 2)
    assert "worker-1.key" in str(err.value) and f"{source}.key" in str(err.value)


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777])
def test_a_key_folder_others_may_write_is_refused_naming_it(tmp_path, mode):
    """Whoever may write the folder may swap a public key: a worker's (and join), or the server's."""
    folder = tmp_path / "keys"
    create_keys(folder, 1)
    folder.chmod(mode)
    for read in (lambda: server_keys(folder, 1), lambda: worker_keys(folder, 0)):
        with pytest.raises(KeyFileError, match=f"{folder} is writable by others"):
            read()
    folder.chmod(0o755)  # readable by others is fine: the secret files are 0600
    assert server_keys(folder, 1).allow and worker_keys(folder, 0)


@pytest.mark.parametrize("curve", [False, True])
def test_a_connection_that_never_completes_its_handshake_is_dropped(tmp_path, curve):
    """An idle TCP connection holds one of the server's file descriptors: ZeroMQ drops it after HANDSHAKE_MS."""
    create_keys(tmp_path, 1)
    router = Channel("router", curve=server_keys(tmp_path, 1) if curve else None, send_timeout_s=1)
    endpoint = router.bind("tcp://127.0.0.1:0")
    host, port = endpoint[len("tcp://") :].rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            raw.settimeout(HANDSHAKE_MS / 1000 + 5)
            t0, data = time.monotonic(), b"x"
            while data:  # the server's greeting, then end of stream when it gives up on us
                data = raw.recv(4096)
            assert time.monotonic() - t0 < HANDSHAKE_MS / 1000 + 5
    finally:
        router.close()


def test_an_ipv6_loopback_endpoint_is_accepted_local_and_carries_messages():
    cfg = make_config(server={"endpoint": "tcp://[::1]:0"})
    assert cfg.server.endpoint == "tcp://[::1]:0" and not cfg.server.curve  # loopback: auto leaves CURVE off
    router = Channel("router")
    try:
        endpoint = router.bind("tcp://[::1]:0")
    except zmq.ZMQError as err:
        router.close()
        pytest.skip(f"this host has no IPv6 loopback: {err}")
    worker = Channel("dealer", send_timeout_s=1)
    try:
        worker.connect(endpoint)
        worker.send(Pull(rank=0))
        assert router.recv(5).msg == Pull(rank=0)
    finally:
        worker.close()
        router.close()


def test_a_send_that_times_out_after_a_refused_handshake_says_the_handshake_was_refused():
    """The refusal may be reported between the worker's last look and a resend, which then blocks on a pipe
    ZeroMQ dropped: the send's timeout must still name the refused handshake, not only 'could not send'."""
    from protocol.runfolder.records import WorkerReport
    from worker.link import LinkError, ServerLink

    class RefusedChannel:
        curve, endpoint = True, "tcp://127.0.0.1:1"

        def send(self, msg, **_):
            raise TimeoutError

        def handshake_failures(self) -> int:
            return 1

    link = ServerLink(make_config(), RefusedChannel(), alloc=None, stats=WorkerReport(), check_cancel=lambda: None)
    with pytest.raises(LinkError, match="refused this worker's CURVE handshake"):
        link.send(Pull(rank=0))
