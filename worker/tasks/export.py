"""Trained weights as people load them: the model's named state_dict in safetensors (no pickle).

    from safetensors.torch import load_file
    model.load_state_dict(load_file("runs/<run>/model/model.safetensors"))

Every parameter (frozen ones included) and every persistent buffer, under the names the user's module
has; the run's version and wall time in the file's metadata, the resolved config beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

from safetensors.torch import save_file
from torch import nn


def save_model(model: nn.Module, path: Path, meta: dict[str, str]) -> None:
    """Write the model's state_dict atomically (temporary file, fsync, rename). Raises OSError."""
    # each tensor its own contiguous copy: parameters are views into one flat buffer, which safetensors
    # (rightly) refuses to store as shared memory
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={k: str(v) for k, v in meta.items()})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
