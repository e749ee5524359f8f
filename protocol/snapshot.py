"""Parameter snapshot files: how the server hands parameters to the evaluator without slowing workers.

Format: b"TAUPSNAP" | uint32 little-endian JSON length | JSON meta | raw float32 little-endian values.
Files are written to a temporary name and renamed, so a reader always sees a whole snapshot.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

MAGIC = b"TAUPSNAP"


def write_snapshot(path: Path, params: torch.Tensor, meta: dict) -> None:
    meta = {**meta, "numel": params.numel()}
    blob = json.dumps(meta).encode()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<I", len(blob)) + blob)
        f.write(memoryview(params.detach().cpu().contiguous().numpy()))
    os.replace(tmp, path)


def read_snapshot(path: Path) -> tuple[dict, torch.Tensor]:
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 4)
        if len(head) != len(MAGIC) + 4 or head[: len(MAGIC)] != MAGIC:
            raise ValueError(f"{path} is not a taups snapshot")
        (n,) = struct.unpack("<I", head[len(MAGIC) :])
        meta = json.loads(f.read(n))
        params = torch.empty(int(meta["numel"]), dtype=torch.float32)
        got = f.readinto(memoryview(params.numpy()).cast("B"))
        if got != params.numel() * 4:
            raise ValueError(f"{path} is truncated ({got} of {params.numel() * 4} bytes)")
    return meta, params
