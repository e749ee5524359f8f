"""The initial model the launcher hands the server: RUN/model/init.safetensors.

The server is started knowing what it serves, so no Hello defines anything: the parameters' layout, their
initial values, the buffers' layout and values, and the run id, all in one safetensors file (no pickle):
tensors `params` and `buffers` (flat float32), metadata `layout` and `buffer_layout` (JSON, the wire form
[[name, shape, offset], ...]) and `run_id`. The launcher writes it (launch/handoff.py) after building the
task once; `python -m launch.prepare` writes it for servers started by hand.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from protocol.wire.layout import Layout

FILE = Path("model") / "init.safetensors"


@dataclass(frozen=True)
class ModelInit:
    layout: Layout  # the served parameters
    params: torch.Tensor  # float32 (layout.total,)
    buffer_layout: Layout  # the model's persistent buffers (BatchNorm statistics, ...)
    buffers: torch.Tensor  # float32 (buffer_layout.total,)
    run_id: str = ""  # a Hello of another run is refused; "" accepts any


def write_model_init(path: Path, init: ModelInit) -> None:
    """Atomically (temporary file, fsync, rename). Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"params": init.params.detach().float().contiguous(), "buffers": init.buffers.detach().float()}
    meta = {
        "layout": json.dumps(init.layout.to_wire()),
        "buffer_layout": json.dumps(init.buffer_layout.to_wire()),
        "run_id": init.run_id,
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_model_init(path: Path) -> ModelInit:
    """Raises ValueError naming the file when it is missing, unreadable or inconsistent."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            params, buffers = f.get_tensor("params"), f.get_tensor("buffers")
        layout = Layout.from_wire(json.loads(meta["layout"]))
        buffer_layout = Layout.from_wire(json.loads(meta["buffer_layout"]))
    except (SafetensorError, KeyError, ValueError, TypeError, OSError) as err:
        raise ValueError(f"{path} is not a taups initial model ({type(err).__name__}: {err})") from None
    if params.numel() != layout.total or buffers.numel() != buffer_layout.total:
        raise ValueError(f"{path}: its tensors do not match its layouts")
    return ModelInit(layout, params, buffer_layout, buffers, meta.get("run_id", ""))
