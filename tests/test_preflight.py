"""launch/preflight.py: what only this host, the data or the built model can tell, refused before any process
starts with a ConfigError naming the key (the launcher exits 2)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from launch.preflight import check_endpoint, check_model, preflight, push_bytes
from protocol.config.loader import load_experiment
from protocol.errors import ConfigError
from protocol.wire.layout import Layout
from tests.helpers import make_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
PLENTY = 1 << 50  # bytes of memory, standing in for this host's
NOT_HERE = "192.0.2.1"  # TEST-NET-1 (RFC 5737): never an address of this host


def _refused(key: str, fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    assert info.value.key == key, info.value
    return info.value.message


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the endpoint -------------------------------------------------------------------------------------------
def test_endpoint_port_in_use_is_refused_naming_server_endpoint(busy_port):
    message = _refused("server.endpoint", check_endpoint, f"tcp://127.0.0.1:{busy_port}")
    assert f"port {busy_port} on 127.0.0.1 is in use" in message


def _port_with_a_free_one_below() -> socket.socket:
    """A listening socket on some port P + 1 of 127.0.0.1 whose port P is free (a few tries)."""
    for _ in range(50):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        with socket.socket() as below:
            try:
                below.bind(("127.0.0.1", s.getsockname()[1] - 1))
                return s
            except OSError:
                s.close()
    raise AssertionError("no pair of adjacent ports on 127.0.0.1 with the lower one free")


def test_every_shards_port_is_tried_and_the_refusal_names_the_shard():
    """server.shards: shard s binds port P + s, so P free and P + 1 busy fails before any process starts."""
    with _port_with_a_free_one_below() as busy:
        port = busy.getsockname()[1]
        cfg = make_config(server={"shards": 2, "endpoint": f"tcp://127.0.0.1:{port - 1}"})
        message = _refused("server.endpoint", preflight, cfg, memory_bytes=PLENTY)
    assert f"port {port} on 127.0.0.1 is in use" in message and "(server shard 1 binds it)" in message


@pytest.mark.parametrize("port", ["5555", "0", "*"])
def test_endpoint_address_not_on_this_host_is_refused(port):
    message = _refused("server.endpoint", check_endpoint, f"tcp://{NOT_HERE}:{port}")
    assert f"{NOT_HERE} is not an address of this host" in message
    assert "not an address" in _refused("server.endpoint", check_endpoint, f"tcp://no-such-interface9:{port}")


def test_endpoint_free_port_and_any_port_pass_and_stay_free():
    port = _free_port()
    for endpoint in (f"tcp://127.0.0.1:{port}", "tcp://127.0.0.1:0", "tcp://127.0.0.1:*", "tcp://localhost:0"):
        check_endpoint(endpoint)
    with socket.socket() as s:  # released: the server can bind it
        s.bind(("127.0.0.1", port))


def test_ipc_endpoint_needs_a_writable_folder_and_no_file_in_the_way(tmp_path):
    check_endpoint(f"ipc://{tmp_path}/server.sock")
    assert "does not exist" in _refused("server.endpoint", check_endpoint, f"ipc://{tmp_path}/nope/server.sock")
    (tmp_path / "notes.txt").write_text("keep me")
    message = _refused("server.endpoint", check_endpoint, f"ipc://{tmp_path}/notes.txt")
    assert "is not a socket: binding would replace it" in message
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_ipc_endpoint_a_server_listens_on_is_refused(tmp_path):
    path = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        assert "in use" in _refused("server.endpoint", check_endpoint, f"ipc://{path}")
    check_endpoint(f"ipc://{path}")  # a stale socket file: the server replaces it


def test_launcher_exits_2_naming_server_endpoint_when_the_port_is_in_use(tmp_path, busy_port):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch",
            str(ROOT / "configs" / "tiny.yaml"),
            f"server.endpoint=tcp://127.0.0.1:{busy_port}",
            "--run-dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 2, out.stderr
    assert "config key 'server.endpoint'" in out.stderr and "is in use" in out.stderr
    assert not (tmp_path / "run").exists()


# -- the model against the limits -----------------------------------------------------------------------------
def test_a_model_whose_dense_message_exceeds_max_message_bytes_is_refused():
    cfg = make_config(task={"hidden": [4096]}, server={"max_message_bytes": 1 << 20, "chunk_bytes": 1 << 16})
    message = _refused("server.max_message_bytes", check_model, cfg, PLENTY)
    assert "the model has 307210 parameters" in message and "at least 1228840" in message
    check_model(make_config(task={"hidden": [4096]}, server={"max_message_bytes": 1228840}), PLENTY)


def test_a_push_larger_than_the_dense_parameters_counts_too():
    """Top-K with ratio 1 and int32 indices pushes 8 bytes per coordinate, twice the dense parameters."""
    task = {"dataset": "synthetic", "synthetic": {"dim": 1000, "classes": 10}, "model": "logreg"}  # 10010 params
    comp = {"method": "ef21", "compressor": "topk", "ratio": 1.0, "indices": "int32"}
    limits = {"max_message_bytes": 1 << 16, "chunk_bytes": 1 << 12}
    cfg = make_config(task=task, compression=comp, server=limits)
    assert "carries 80080 bytes" in _refused("server.max_message_bytes", check_model, cfg, PLENTY)
    auto = make_config(task=task, compression={**comp, "indices": "auto"}, server=limits)
    assert push_bytes(auto, check_model(auto, PLENTY)) == 4 * 10010 + 1252  # values and a bitmap
    layout = Layout.from_shapes([("w", (10, 64)), ("b", (10,))])
    assert push_bytes(make_config(compression={**comp, "ratio": 0.01}), layout) == 8 * 6  # k = 6, int32


def test_chunk_bytes_too_small_for_the_model_is_refused():
    cfg = make_config(task={"hidden": [300_000]}, server={"chunk_bytes": 1024})  # 22.5M parameters, 90 MB
    message = _refused("server.chunk_bytes", check_model, cfg, PLENTY)
    assert "frames" in message and "65536" in message


def test_int32_indices_for_a_model_beyond_2_31_parameters_are_refused():
    """An mlp of 2^16 inputs and one layer of 2^16 has 2^32 + ... parameters; built on the meta device only."""
    task = {"dataset": "synthetic", "synthetic": {"dim": 1 << 16, "samples": 1 << 10}, "hidden": [1 << 16]}
    limits = {"max_message_bytes": 1 << 40, "chunk_bytes": 1 << 30}
    comp = {"method": "ef21", "compressor": "topk", "ratio": 0.001}
    bad = make_config(task=task, server=limits, compression={**comp, "indices": "int32"})
    assert "int32 cannot address the model's" in _refused("compression.indices", check_model, bad, PLENTY)
    layout = check_model(make_config(task=task, server=limits, compression=comp), PLENTY)  # auto: int64
    assert layout.total > 1 << 32


def test_artificial_delay_memory_is_checked_before_the_start():
    cfg = make_config(staleness={"delay": "uniform", "delay_versions": 1000, "delay_memory_mb": 0.001})
    assert "over staleness.delay_memory_mb=0.001" in _refused("staleness.delay_versions", check_model, cfg, PLENTY)


def test_a_model_larger_than_this_host_can_hold_is_refused():
    cfg = make_config(task={"hidden": [4096]})
    assert "this host has 0.0 GiB" in _refused("task.hidden", check_model, cfg, 1 << 20)
    quadratic = make_config(task={"dataset": "synthetic", "synthetic": {"kind": "quadratic", "dim": 1 << 20}})
    _refused("task.synthetic.dim", check_model, quadratic, 1 << 20)


def test_cnn_on_images_smaller_than_2x2_is_refused(tmp_path):
    for images, labels in (
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ):
        (tmp_path / images).write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 1]) + bytes(3))  # 3 of 1x1
        (tmp_path / labels).write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3]) + bytes(3))
    cfg = make_config(task={"dataset": "mnist", "path": str(tmp_path), "model": "cnn"})
    assert "at least 2 x 2 pixels" in _refused("task.model", check_model, cfg, PLENTY)


# -- devices ---------------------------------------------------------------------------------------------------
def test_cuda_is_refused_where_this_host_has_too_few_devices():
    assert "has 0 CUDA device(s)" in _refused("worker.device", preflight, make_config(worker={"device": "cuda"}), 0)
    _refused("worker.device", preflight, make_config(worker={"device": "cuda:1"}), 1)
    sync = make_config(mode="sync", workers=2, worker={"device": "cuda"})
    assert "cuda:i (2 ranks" in _refused("worker.device", preflight, sync, 1)
    preflight(make_config(worker={"device": "cuda:1"}), 2)
    preflight(make_config(mode="sync", workers=2, worker={"device": "cuda"}), 2)


# -- sweeps and the shipped configs -------------------------------------------------------------------------------
def test_every_sweep_point_is_checked_and_named():
    cfg = make_config(
        server={"max_message_bytes": 1 << 20, "chunk_bytes": 1 << 16}, sweep={"task.hidden": [[8], [4096]]}
    )
    message = _refused("server.max_message_bytes", preflight, cfg, None, PLENTY)
    assert message.endswith("(sweep point task.hidden=[4096])")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_pass_the_preflight(path):
    preflight(load_experiment(path), cuda_devices=0, memory_bytes=PLENTY)
