"""Checks that need this host, the data or the built model: the launcher runs them once the config is valid
(protocol/config) and before any process starts. A failure is a ConfigError naming the key to change, so
`python -m launch` prints `error: config key 'server.endpoint': ...` and exits 2 instead of starting
processes that would fail one by one.

- data: worker/tasks/data.py check_data (every byte of the files), which also gives the data's shape;
- model: built on torch's meta device (no memory) for that shape; its parameter count against the message
  limits (server.max_message_bytes, server.chunk_bytes), the index coding (compression.indices int32
  above 2^31 parameters), the artificial delay's memory (staleness.delay_memory_mb) and this host's memory;
- endpoint (async mode): a tcp address must be one of this host's and a fixed port free, tried by binding
  it with ZeroMQ as the server will and releasing it (port 0 or * takes any free port; the address is still
  tried); an ipc path's folder must exist and be writable, and the path must not be a file ZeroMQ would
  replace or a socket a running server listens on;
- device: cuda where this host has no CUDA device, or fewer than the ranks need.

A sweep checks every point (each data file once: the checks cache per file version).
"""

from __future__ import annotations

import errno
import math
import os
import socket
import stat
from pathlib import Path
from types import SimpleNamespace

import torch
import zmq

from launch.handoff import built_task
from launch.sweep import expand_sweep
from protocol.config.schema import ExperimentConfig
from protocol.errors import ConfigError
from protocol.wire import codec
from protocol.wire.curve import KeyFileError, server_keys, worker_keys
from protocol.wire.encoding import INT32_MAX_NUMEL, VALUE_DTYPES
from protocol.wire.endpoints import shard_endpoint
from protocol.wire.layout import SHARD_ALIGN, Layout
from ps.history import ParamHistory
from worker.compressors import segments
from worker.tasks.data import DataShape, check_data
from worker.tasks.models import build_model


def preflight(cfg: ExperimentConfig, cuda_devices: int | None = None, memory_bytes: int | None = None) -> None:
    """Every check above, for the run or every point of its sweep; raises ConfigError naming the key.
    `cuda_devices` and `memory_bytes` stand in for this host's (tests)."""
    points = [(cfg, "")] if not cfg.sweep else [(p.cfg, f" (sweep point {p.label})") for p in expand_sweep(cfg)]
    for point, where in points:
        try:
            check_model(point, memory_bytes)
            check_device(point, cuda_devices)
        except ConfigError as err:
            raise ConfigError(err.key, err.message + where) from None
    shards = {(p.server.endpoint, s) for p, _ in points if p.mode == "async" for s in range(p.server.shards)}
    for endpoint, shard in sorted(shards):
        try:
            check_endpoint(shard_endpoint(endpoint, shard))
        except ConfigError as err:  # shard s binds port P + s, ipc path + "-s": say which one could not
            message = f"{err.message} (server shard {shard} binds it)" if shard else err.message
            raise ConfigError(err.key, message) from None
    check_keys(cfg)


def check_keys(cfg: ExperimentConfig) -> None:
    """A key folder named in server.keys must hold every pair this host's processes need, each secret file
    private (the launcher writes new keys into the run folder when server.keys is empty)."""
    if cfg.mode != "async" or not cfg.server.curve or not cfg.server.keys:
        return
    folder = Path(cfg.server.keys)
    try:
        server_keys(folder, cfg.workers)
        for rank in range(cfg.workers):
            worker_keys(folder, rank)
    except KeyFileError as err:
        raise ConfigError("server.keys", str(err)) from None


# -- the model --------------------------------------------------------------------------------------------
def check_model(cfg: ExperimentConfig, memory_bytes: int | None = None) -> Layout:
    """Data checked, model built (a built-in one on the meta device, a factory's for real), then the limits its
    size must fit; its layout."""
    layout = factory_layout(cfg) if cfg.task.factory else model_layout(cfg, check_data(cfg))
    check_messages(cfg, layout)
    check_memory(cfg, layout.total, memory_bytes)
    check_shards(cfg, layout)
    return layout


def check_shards(cfg: ExperimentConfig, layout: Layout) -> None:
    """Every shard must own some coordinates (ranges are cut at multiples of SHARD_ALIGN)."""
    if cfg.mode == "async" and any(hi == lo for lo, hi in layout.shard_ranges(cfg.server.shards)):
        raise ConfigError(
            "server.shards",
            f"{cfg.server.shards} shards of a model of {layout.total} parameters leave a shard empty (ranges are cut "
            f"at multiples of {SHARD_ALIGN} parameters): use fewer shards",
        )


def model_layout(cfg: ExperimentConfig, shape: DataShape | None) -> Layout:
    """The flat parameter layout the processes will build, without allocating it (torch's meta device)."""
    if shape is None:  # the synthetic quadratic: the parameters are x itself
        return Layout.from_shapes([("x", (cfg.task.synthetic.dim,))])
    if cfg.task.model == "cnn" and min(shape.input_shape[1:]) < 2:
        raise ConfigError("task.model", f"cnn needs images of at least 2 x 2 pixels, got {shape.input_shape[1:]}")
    data = SimpleNamespace(
        features=math.prod(shape.input_shape), num_classes=shape.classes, input_shape=shape.input_shape
    )
    try:
        with torch.device("meta"):
            model = build_model(cfg.task, data)
    except (RuntimeError, ValueError, OverflowError) as err:
        raise ConfigError(size_key(cfg), f"the model cannot be built: {err}") from None
    return Layout.from_shapes([(name, tuple(p.shape)) for name, p in model.named_parameters()])


def factory_layout(cfg: ExperimentConfig) -> Layout:
    """The layout of the model task.factory builds: the factory imported and called once (the launcher hands
    this very model to the server), its TaskSpec checked, one training batch taken through forward, loss and
    backward. Raises ConfigError naming task.factory and the cause (an import error, what the factory raised,
    a return value that is not a usable TaskSpec, a batch the model cannot take, too little data)."""
    task = built_task(cfg)  # raises ConfigError('task.factory', ...)
    data = task.spec.train
    if cfg.task.sampling == "shard" and data is not None and task.spec.batches is None and len(data) < cfg.workers:
        raise ConfigError("task.sampling", f"shard gives each of {cfg.workers} workers a slice of {len(data)} samples")
    try:
        task.gradient(next(task.batches(0, cfg.workers)))
    except Exception as err:  # the user's model, data or loss: say what went wrong before any process starts
        raise ConfigError("task.factory", f"one training batch fails: {type(err).__name__}: {err}") from None
    return task.layout


def size_key(cfg: ExperimentConfig) -> str:
    """The key that sets the model's size, to name when the size is the trouble."""
    task = cfg.task
    if task.factory:
        return "task.factory"
    if task.dataset == "synthetic" and task.synthetic.kind == "quadratic":
        return "task.synthetic.dim"
    return {"mlp": "task.hidden", "cnn": "task.channels"}.get(task.model, "task.model")


def check_messages(cfg: ExperimentConfig, layout: Layout) -> None:
    """The largest message must pass server.max_message_bytes, its largest tensor (the float32 parameters of
    every Hello, Welcome and Reply) at most MAX_TENSOR_FRAMES frames of server.chunk_bytes, and the index
    coding must address the model."""
    n, server, comp = layout.total, cfg.server, cfg.compression
    params = 4 * n
    if comp.compressor in ("topk", "randk") and comp.indices == "int32" and n > INT32_MAX_NUMEL:
        raise ConfigError(
            "compression.indices",
            f"int32 cannot address the model's {n} parameters (at most 2^31): use auto (int64 indices)",
        )
    need = max(params, push_bytes(cfg, layout))
    if need > server.max_message_bytes:
        raise ConfigError(
            "server.max_message_bytes",
            f"is {server.max_message_bytes}, but the model has {n} parameters and its largest message carries "
            f"{need} bytes of tensors: raise it to at least {need} (or shrink {size_key(cfg)})",
        )
    frames = -(-params // server.chunk_bytes)
    if frames > codec.MAX_TENSOR_FRAMES:
        raise ConfigError(
            "server.chunk_bytes",
            f"is {server.chunk_bytes}: the model's {params} bytes of parameters would travel as {frames} frames, "
            f"more than the {codec.MAX_TENSOR_FRAMES} a tensor may have; use at least "
            f"{-(-params // codec.MAX_TENSOR_FRAMES)}",
        )


def push_bytes(cfg: ExperimentConfig, layout: Layout) -> int:
    """An upper bound on a push's tensor bytes (protocol/wire/encoding.py), as configured."""
    comp, n = cfg.compression, layout.total
    value = VALUE_DTYPES[comp.values].itemsize
    if comp.compressor in ("topk", "randk"):
        exact = comp.compressor == "randk" or comp.selection == "exact"
        k = sum(kept for _, _, kept in segments(comp, layout)) if exact else n  # sampled: about k, at most n
        wide = 4 * k if n <= INT32_MAX_NUMEL else min(8 * k, -(-n // 8))
        index = {"bitmap": -(-n // 8), "auto": min(wide, -(-n // 8))}.get(comp.indices, wide)
        return k * value + index
    return {"natural": n + -(-n // 8), "qsgd": n, "sign": -(-n // 8)}.get(comp.compressor, n * value)


def check_memory(cfg: ExperimentConfig, n: int, memory_bytes: int | None = None) -> None:
    """The artificial delay's copies within staleness.delay_memory_mb (the server checks it when it builds
    the model: this is that check, before the start), and the least the processes hold within this host."""
    st = cfg.staleness
    if st.delay != "none" and ParamHistory.memory_mb(n, st.delay_versions) > st.delay_memory_mb:
        need = ParamHistory.memory_mb(n, st.delay_versions)
        raise ConfigError(
            "staleness.delay_versions",
            f"keeps {st.delay_versions} copies of the model's {n} parameters: {need:.0f} MiB, over "
            f"staleness.delay_memory_mb={st.delay_memory_mb:g}",
        )
    processes = (cfg.workers if cfg.mode == "sync" else len(cfg.worker_processes()) + 1) + 1  # + server, evaluator
    need = 8 * n * processes  # float32 parameters and one gradient: the least any process holds
    have = memory_bytes if memory_bytes is not None else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        raise ConfigError(
            size_key(cfg),
            f"the model has {n} parameters: its {processes} processes need at least {need / 2**30:.1f} GiB "
            f"(parameters and a gradient each), this host has {have / 2**30:.1f} GiB",
        )


# -- this host ----------------------------------------------------------------------------------------------
def check_device(cfg: ExperimentConfig, cuda_devices: int | None = None) -> None:
    """cuda asked for: this host must have the devices the ranks take (sync: one per rank, as nccl needs)."""
    key = "worker.devices" if cfg.worker.devices else "worker.device"
    wanted = cfg.worker.devices or (cfg.worker.device,)
    if not any(d.startswith("cuda") for d in wanted):
        return
    count = torch.cuda.device_count() if cuda_devices is None else cuda_devices
    if cfg.mode == "sync" and cfg.worker.device == "cuda" and not cfg.worker.devices:
        need, why = cfg.workers, f"sync mode puts rank i on cuda:i ({cfg.workers} ranks; nccl needs one GPU per rank)"
    else:
        need = max(int(d.partition(":")[2] or 0) for d in wanted if d.startswith("cuda")) + 1
        why = f"the workers compute on {', '.join(wanted)}"
    if count < need:
        raise ConfigError(key, f"{why}, but this host has {count} CUDA device(s)")


def check_endpoint(endpoint: str) -> None:
    """The server's endpoint can be bound here: see the module docstring."""
    if endpoint.startswith("ipc://"):
        check_ipc_path(endpoint[len("ipc://") :])
        return
    host, _, port = endpoint[len("tcp://") :].rpartition(":")
    ctx = zmq.Context(io_threads=1)
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.bind(f"tcp://{host}:{'*' if port in ('0', '*') else port}")
    except zmq.ZMQError as err:
        raise ConfigError("server.endpoint", _bind_error(host, port, err)) from None
    finally:
        sock.close(linger=0)
        ctx.term()


def _bind_error(host: str, port: str, err: zmq.ZMQError) -> str:
    if err.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use (another server?): pick another port, or 0 for any free one"
    if err.errno in (errno.EADDRNOTAVAIL, errno.ENODEV):
        return f"{host} is not an address of this host, so the server cannot listen on it: use 127.0.0.1 or *"
    return f"cannot bind tcp://{host}:{port} here: {err}"


def check_ipc_path(path: str) -> None:
    folder = Path(path).parent
    if not folder.is_dir():
        raise ConfigError("server.endpoint", f"the folder of the ipc path, {folder}, does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError("server.endpoint", f"the folder of the ipc path, {folder}, is not writable here")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError("server.endpoint", f"{path} exists and is not a socket: binding would replace it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        if probe.connect_ex(path) == 0:
            raise ConfigError("server.endpoint", f"{path} is in use: a server listens on it")
