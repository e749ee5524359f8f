"""A real parameter server in a thread and fake workers that speak the protocol by hand.

For tests and for experiments that drive the server with exact, hand-made gradients (experiments/).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from launch.handoff import initial_model
from protocol.config.schema import ExperimentConfig
from protocol.config.typed import build
from protocol.runfolder.model_init import ModelInit
from protocol.runfolder.records import as_dict
from protocol.wire.channel import Channel
from protocol.wire.curve import ServerKeys, WorkerKeys
from protocol.wire.layout import Layout
from protocol.wire.messages import Hello, Message, Push, Reply, Welcome
from ps.outbox import server_channel
from ps.server import ParameterServer

TIMEOUT_S = 10.0


def make_config(**sections: Any) -> ExperimentConfig:
    """An ExperimentConfig from plain dicts, e.g. make_config(workers=2, run={"max_updates": 10})."""
    return build(ExperimentConfig, sections)


def served(layout: Layout, params: torch.Tensor, run_id: str = "") -> ModelInit:
    """A model to serve from a layout and its initial parameters (no buffers)."""
    return ModelInit(layout, params.reshape(-1).float(), Layout([]), torch.empty(0), run_id)


@contextlib.contextmanager
def running_server(
    cfg: ExperimentConfig,
    run_dir: Path | None = None,
    endpoint: str = "tcp://127.0.0.1:0",
    model: ModelInit | tuple[Layout, torch.Tensor] | None = None,
    keys: ServerKeys | None = None,
    shard: int = 0,
    resume: bool = False,
) -> Iterator[tuple[ParameterServer, str, dict]]:
    """The server in a thread, serving `model` (a ModelInit, a (layout, initial parameters) pair, or None:
    the experiment's task, as the launcher would hand it over); with CURVE when given the server's keys;
    shard `shard` of server.shards."""
    if model is None:
        model = initial_model(cfg, run_id="")
    elif isinstance(model, tuple):
        model = served(*model)
    chan = server_channel(cfg, keys)
    bound = chan.bind(endpoint)
    server = ParameterServer(cfg, chan, model, run_dir=run_dir, shard=shard, resume=resume)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(as_dict(server.serve())), daemon=True)
    thread.start()
    try:
        yield server, bound, result
    finally:
        server.signal_stop("test over")
        thread.join(timeout=TIMEOUT_S + cfg.server.stop_grace_s)
        alive = thread.is_alive()
        chan.close()
        assert not alive, "server thread did not stop"


class FakeWorker:
    """A worker without a model: pushes whatever vectors a test hands it."""

    def __init__(
        self,
        endpoint: str,
        rank: int,
        layout: Layout,
        max_message_bytes: int = 1 << 28,
        keys: WorkerKeys | None = None,
    ):
        self.rank = rank
        self.layout = layout
        self.chan = Channel("dealer", max_message_bytes=max_message_bytes, send_timeout_s=5, curve=keys)
        self.chan.connect(endpoint)
        self.seq = 0
        self.version = 0
        self.params: torch.Tensor | None = None

    def hello(self, **overrides: Any) -> Message:
        self.send_hello(**overrides)
        return self.recv_welcome()

    def send_hello(self, **overrides: Any) -> None:
        fields: dict[str, Any] = dict(
            rank=self.rank,
            pid=0,
            host="test",
            device="cpu",
            run_id="t",
            uplink="grad",
            signature=self.layout.signature(),
        )
        fields.update(overrides)
        self.chan.send(Hello(**fields))

    def recv_welcome(self) -> Message:
        reply = self.recv()
        if isinstance(reply, Welcome):
            self.seq, self.version, self.params = reply.next_seq, reply.version, reply.params
        return reply

    def push(
        self,
        values: torch.Tensor,
        base_version: int | None = None,
        seq: int | None = None,
        advance: bool = True,
        **overrides: Any,
    ) -> Message:
        fields: dict[str, Any] = dict(
            rank=self.rank,
            seq=self.seq if seq is None else seq,
            base_version=self.version if base_version is None else base_version,
            kind="grad",
            encoding="dense",
            numel=values.numel(),
            loss=1.0,
            samples=1,
            values=values,
        )
        fields.update(overrides)
        reply = self.request(Push(**fields))
        if advance and isinstance(reply, Reply):
            self.seq += 1
            self.version = reply.version
            self.params = reply.params
        return reply

    def request(self, msg: Message) -> Message:
        self.chan.send(msg)
        return self.recv()

    def send_frames(self, frames: list) -> Message:
        self.chan.sock.send_multipart(frames)
        return self.recv()

    def recv(self) -> Message:
        while True:
            reply = self.chan.recv(TIMEOUT_S).msg
            if reply.TYPE != "heartbeat":
                return reply

    def close(self) -> None:
        self.chan.close()


def join_all(workers: list[FakeWorker]) -> list[Message]:
    """Hello from every worker (the server may wait for all of them), then every welcome."""
    for w in workers:
        w.send_hello()
    return [w.recv_welcome() for w in workers]
