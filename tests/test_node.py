"""python -m launch.node refuses what cannot work before it waits on anyone (docs/design.md, Runs across hosts)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from launch import node_store

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = {"RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}


def _node(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "launch.node", "configs/tiny.yaml", *args]
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, env={**base, **(env or {})}, capture_output=True, text=True, timeout=60)


def test_without_torchrun_it_says_which_variables_are_missing():
    done = _node()
    assert done.returncode == 2 and "RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT not set" in done.stderr


@pytest.mark.parametrize(("override", "key"), [("workers=2", "workers"), ("mode=sync", "mode"),
                                               ("server.interface=0.0.0.0", "server.interface")])  # fmt: skip
def test_a_config_that_does_not_fit_the_placement_exits_2_naming_the_key(override, key):
    done = _node(override, env=TORCHRUN)  # no store listens on port 1: the check comes first
    assert done.returncode == 2 and f"'{key}'" in done.stderr, done.stderr


def test_an_unreachable_store_is_named(tmp_path):
    done = _node("server.connect_timeout_s=2", "--run-dir", str(tmp_path / "r"), env=TORCHRUN)
    assert done.returncode in (1, 2) and "127.0.0.1:1" in done.stderr, done.stderr


class _Store:
    """What a worker slot says to and hears from the head, without torchrun."""

    def __init__(self, start):
        self.start_msg, self.keys, self.reports, self.failed = start, {}, {}, {}

    def publish_key(self, rank, public):
        self.keys[rank] = public

    def start(self, timeout_s):
        return self.start_msg

    def publish_report(self, rank, report):
        self.reports[rank] = report

    def publish_failure(self, rank, message):
        self.failed[rank] = message

    def raise_failures(self, ranks):
        for rank in sorted(set(ranks) & set(self.failed))[:1]:
            raise node_store.PeerFailed(f"{node_store.slot_name(rank)} failed: {self.failed[rank]}")


def test_a_worker_slot_uses_the_named_key_folder_the_head_serves(tmp_path, monkeypatch):
    """With server.keys the head's allowlist is that folder's: a worker slot that made a pair of its own
    was refused by the server, every one of them."""
    from launch import node
    from protocol.config.loader import load_experiment
    from protocol.wire.curve import create_keys, server_keys, worker_keys

    folder = tmp_path / "keys"
    create_keys(folder, 3)
    overrides = ["server.auth=curve", f"server.keys={folder}"]
    cfg_text = (ROOT / "configs/tiny.yaml").read_text()
    server_public = server_keys(folder, 3).pair.public.decode()
    ran: list[list[str]] = []
    monkeypatch.setattr(node, "_run_watching_head", lambda cmd, store: (ran.append(cmd) or 0, "", ""))
    args = SimpleNamespace(config=str(ROOT / "configs/tiny.yaml"), overrides=overrides, run_dir=str(tmp_path / "run"))
    store = _Store(node_store.Start("tcp://10.0.0.1:5555", server_public, cfg_text, "run"))
    assert node.worker(args, {"RANK": "2"}, store) == 0
    used = Path(ran[0][ran[0].index("--keys") + 1])
    assert worker_keys(used, 1).pair.public in server_keys(folder, 3).allow  # a key the server admits
    assert store.keys[1] == worker_keys(folder, 1).pair.public
    assert load_experiment(args.config, overrides).server.keys == str(folder)
    other = tmp_path / "other"  # the head serves another folder's server key: named, not a refused handshake
    create_keys(other, 3)
    store.start_msg = node_store.Start("tcp://10.0.0.1:5555", server_keys(other, 3).pair.public.decode(), cfg_text, "r")
    args.run_dir = str(tmp_path / "run2")
    with pytest.raises(node.KeyFileError, match=f"{folder / 'server.key'} is not the public key of the head"):
        node.worker(args, {"RANK": "2"}, store)


def test_waiting_for_the_workers_keys_names_the_ranks_that_never_published():
    import torch.distributed as dist

    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    store = node_store.NodeStore.connect({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(server.port)}, timeout_s=5)
    for rank in (0, 2):
        store.publish_key(rank, b"k" * 40)
    with pytest.raises(TimeoutError, match=r"none from worker 1 \(RANK 2\), worker 3 \(RANK 4\)\)"):
        store.public_keys(4, timeout_s=0.5)


def test_a_worker_slot_whose_head_is_gone_ends_with_its_workers_code_naming_the_report(tmp_path, monkeypatch):
    """The head's host ended (its torchrun took the store with it) while this worker ran: no traceback."""
    from launch import node

    class Gone(_Store):
        def publish_report(self, rank, report):
            raise node_store.StoreError("Broken pipe")

        publish_failure = publish_report

    monkeypatch.setattr(node, "_run_watching_head", lambda cmd, store: (1, "", ""))  # the worker lost its server
    args = SimpleNamespace(config=str(ROOT / "configs/tiny.yaml"), overrides=[], run_dir=str(tmp_path / "run"))
    store = Gone(node_store.Start("tcp://127.0.0.1:5555", "", (ROOT / "configs/tiny.yaml").read_text(), "run"))
    assert node.worker(args, {"RANK": "1"}, store) == 1
    monkeypatch.setattr(node, "_run_watching_head", lambda cmd, store: (0, "", ""))
    args.run_dir = str(tmp_path / "run2")
    assert node.worker(args, {"RANK": "1"}, store) == 1  # a report that did not arrive is a failure


def _store_pair():
    import torch.distributed as dist

    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(server.port)}
    return server, node_store.NodeStore.connect(env, timeout_s=5)


def test_a_slot_that_failed_ends_the_waiting_ones_at_once_naming_it():
    """A worker host's config that did not load, or the head's: the others waited out join_timeout_s and
    connect_timeout_s (minutes), or trained on without that worker."""
    import time

    server, store = _store_pair()
    store.publish_failure(0, "config key 'server.interface': bad")
    started = time.monotonic()
    with pytest.raises(node_store.PeerFailed, match=r"the head \(RANK 0\) failed: config key 'server.interface'"):
        store.start(timeout_s=60)
    store.publish_failure(3, "its worker process exited with code 130 on hostB")
    with pytest.raises(node_store.PeerFailed, match=r"worker 2 \(RANK 3\) failed: its worker process exited"):
        store.public_keys(4, timeout_s=60)
    assert time.monotonic() - started < 10


def test_a_store_that_is_gone_is_not_reported_as_a_timeout():
    """The head's torchrun ended: the worker said it had waited 180s for the head's server."""
    server, store = _store_pair()
    del server  # its host's torchrun ended
    with pytest.raises(node_store.StoreError):
        store.start(timeout_s=60)


def test_torchrun_max_restarts_is_refused_before_anything_starts():
    """A restarted head met its own run folder (exit 2, restarted again) while restarted workers read the
    old run's endpoint from the store."""
    done = _node(env={**TORCHRUN, "TORCHELASTIC_MAX_RESTARTS": "2"})
    assert done.returncode == 2 and "torchrun --max-restarts is 2" in done.stderr, done.stderr


def test_a_worker_slot_ended_by_a_signal_exits_as_a_shell_reports_it():
    """sys.exit(-15) exits 241."""
    from launch import node

    cmd = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"]
    with _handlers_restored():  # the slot forwards SIGTERM and SIGINT to its worker
        assert node._run_watching_head(cmd, _Store(None)) == (143, "", "")


@contextlib.contextmanager
def _handlers_restored():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_the_servers_address_names_server_interface_or_master_addr(monkeypatch):
    """The head derives server.endpoint itself: a bad interface was reported as server.endpoint with the
    advice to bind '*', which launch.node never does; a MASTER_ADDR that resolves only to IPv6 (or not at all)
    was a traceback."""
    from launch import node
    from protocol.config.loader import load_experiment
    from protocol.errors import ConfigError

    def refuse(cfg):
        raise ConfigError("server.endpoint", "192.0.2.7 is not an address of this host, so the server cannot "
                          "listen on it: use 127.0.0.1 or *")  # fmt: skip

    monkeypatch.setattr(node, "preflight", refuse)
    cfg = load_experiment(str(ROOT / "configs/tiny.yaml"), ["server.interface=192.0.2.7"])
    with pytest.raises(ConfigError, match=r"'server.interface': 192.0.2.7 is not an address") as err:
        node._preflight(cfg)
    assert "*" not in str(err.value)
    with pytest.raises(ConfigError, match="MASTER_ADDR 'no-such-host.invalid'"):
        node.interface(load_experiment(str(ROOT / "configs/tiny.yaml"), []), "no-such-host.invalid")
    assert node.interface(load_experiment(str(ROOT / "configs/tiny.yaml"), []), "localhost") == "127.0.0.1"


@pytest.mark.slow
def test_a_worker_host_whose_config_does_not_load_fails_the_heads_run_naming_it(tmp_path):
    """Two torchruns on this host (node 0: the head and worker 0; node 1: worker 1 with another `workers`).
    The head trained on without worker 1, waited for its report, and its summary said ok."""
    import json
    import os

    from launch.run import free_port

    port, run = str(free_port()), tmp_path / "run"
    common = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--master-addr", "127.0.0.1",
              "--master-port", port]  # fmt: skip
    tail = ["-m", "launch.node", "configs/tiny.yaml", "run.max_updates=100000", "run.max_seconds=60", "--quiet"]
    nodes = [
        subprocess.Popen(
            [*common, "--node-rank", str(i), "--nproc-per-node", str(n), *tail, f"workers={w}", "--run-dir", str(run)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=(tmp_path / f"node{i}.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        for i, (n, w) in enumerate(((2, 2), (1, 3)))
    ]
    try:
        codes = [p.wait(timeout=120) for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
    log = (tmp_path / "node0.log").read_text()
    assert codes == [1, 1] and "worker 1 (RANK 2) failed: config key 'workers'" in log, log[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "worker 1 (RANK 2)" in summary["failure"], summary


@pytest.mark.parametrize("how", ["failed", "store gone"])
def test_a_worker_slot_stops_its_worker_when_the_heads_run_is_over(how):
    """The head's server was killed: the head failed its run, but workers on other hosts trained on against
    the dead server until their 120 s reply timeout, then blamed the store."""
    import time

    from launch import node

    server, store = _store_pair()
    if how == "failed":
        store.publish_failure(0, "run failed: server (pid 7) was killed by signal SIGKILL during the run")
    else:
        del server  # the head's torchrun ended, taking the store with it
    started = time.monotonic()
    code, why, _ = node._run_watching_head([sys.executable, "-c", "import time; time.sleep(60)"], store)
    assert code == 143 and time.monotonic() - started < 15
    expected = "the head (RANK 0) failed: run failed: server" if how == "failed" else "torchrun's store is gone"
    assert expected in why, why


@pytest.mark.parametrize("end", ["failed", "stopped"])
def test_the_head_publishes_a_failed_or_stopped_run_for_the_workers(tmp_path, monkeypatch, end):
    from launch import node
    from launch.signals import Stopped

    def execute(self):
        raise node.RunFailed("server (pid 7) was killed") if end == "failed" else Stopped(15)

    monkeypatch.setattr(node.HeadRun, "execute", execute)
    store = _Store(None)
    args = SimpleNamespace(
        config=str(ROOT / "configs/tiny.yaml"), overrides=[], run_dir=str(tmp_path / "r"), quiet=True
    )
    env = {"RANK": "0", "WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1"}
    assert node.head(args, env, store) == (1 if end == "failed" else 143)
    assert ("server (pid 7) was killed" if end == "failed" else "stopped by SIGTERM") in store.failed[0]


def test_after_a_stop_the_head_still_writes_the_workers_reports(tmp_path):
    """SIGTERM to the head's torchrun: the workers got Stop and sent their reports, but the run folder had no
    worker-<rank>.json (the head collected them only after a normal end)."""
    from launch import node
    from protocol.config.loader import load_experiment

    class Sent(_Store):
        def __init__(self, start):
            super().__init__(start)
            del self.reports  # _Store's record of what a worker published; here the head's read of the store

        def reports(self, workers, timeout_s, check):  # rank 1's slot was killed: none from it
            return {0: '{"pushes": 5}', 2: '{"pushes": 6}'}

    store = Sent(None)
    run = node.HeadRun(load_experiment(str(ROOT / "configs/tiny.yaml"), []), tmp_path, store, quiet=True)
    said: list[str] = []
    run._say = said.append
    run._after_stop()
    assert (tmp_path / "worker-0.json").read_text() == '{"pushes": 5}' and (tmp_path / "worker-2.json").exists()
    assert said == ["no report from worker 1 (RANK 2) within 5s"]


def test_a_worker_slot_stopped_by_its_torchrun_says_the_first_failure_is_elsewhere(tmp_path, monkeypatch):
    """torchrun SIGTERMs every slot of a host when one dies; a killed slot publishes nothing, so the head named
    a sibling that was only stopped as if it had failed."""
    from launch import node

    store = _Store(node_store.Start("tcp://127.0.0.1:5555", "", (ROOT / "configs/tiny.yaml").read_text(), "run"))
    args = SimpleNamespace(config=str(ROOT / "configs/tiny.yaml"), overrides=[], run_dir=str(tmp_path / "run"))
    monkeypatch.setattr(node, "_run_watching_head", lambda cmd, store: (143, "", ""))
    assert node.worker(args, {"RANK": "2"}, store) == 143
    assert "stopped by a signal (exit 143)" in store.failed[2] and "names the first" in store.failed[2]
    monkeypatch.setattr(node, "_run_watching_head", lambda cmd, store: (1, "", ""))
    args.run_dir = str(tmp_path / "run2")
    assert node.worker(args, {"RANK": "2"}, store) == 1
    assert store.failed[2].startswith("its worker process exited with code 1 on ")


def test_a_failed_worker_slot_publishes_its_workers_error_line(capsys):
    """A worker host whose CURVE handshake the server refused: the head said only 'exited with code 1'."""
    from launch import node

    cmd = [sys.executable, "-c", "import sys; print('x', file=sys.stderr); sys.exit('error: refused by CURVE')"]
    with _handlers_restored():
        code, _, error = node._run_watching_head(cmd, _Store(None))
    assert (code, error) == (1, "refused by CURVE") and "x\nerror: refused by CURVE" in capsys.readouterr().err
    assert node._why_ended(1, error).endswith(": refused by CURVE")
