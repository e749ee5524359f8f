"""The model the server starts with, built once by the launcher: RUN/model/init.safetensors.

The task's factory runs here once (torch seeded with the experiment seed, as in every process), and the
model's trainable parameters and persistent buffers go to the server in one file with their layouts and
the run id (protocol/runfolder/model_init.py): the server knows what it serves before any worker joins.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from protocol.config.schema import ExperimentConfig
from protocol.config.typed import to_dict
from protocol.errors import ConfigError
from protocol.runfolder.model_init import FILE, ModelInit, write_model_init
from worker.tasks import Task, TaskError

_BUILT: dict[str, tuple[torch.Tensor, torch.Tensor, Task]] = {}  # the task of a config, built once per launcher


def built_task(cfg: ExperimentConfig) -> Task:
    """The experiment's task, built on the CPU (its factory called once per config in this process: the
    preflight's check and the hand-off to the server share it). Raises ConfigError naming task.factory."""
    key = json.dumps({"seed": cfg.seed, "task": to_dict(cfg.task)}, sort_keys=True)
    if key not in _BUILT:
        try:
            task = Task(cfg, device="cpu")
        except TaskError as err:
            raise ConfigError("task.factory", str(err)) from None
        _BUILT[key] = (task.net.params.detach().clone(), task.net.buffers(), task)
    return _BUILT[key][2]


def initial_model(cfg: ExperimentConfig, run_id: str) -> ModelInit:
    """The initial model of the experiment's task (as built, before any step a check took on it)."""
    built_task(cfg)
    key = json.dumps({"seed": cfg.seed, "task": to_dict(cfg.task)}, sort_keys=True)
    params, buffers, task = _BUILT[key]
    return ModelInit(task.net.layout, params.clone(), task.net.buffer_layout, buffers.clone(), run_id)


def hand_off(cfg: ExperimentConfig, run_dir: Path) -> Path:
    """Write RUN/model/init.safetensors for the run in run_dir (its name is the run id); returns the path."""
    path = run_dir / FILE
    write_model_init(path, initial_model(cfg, run_dir.name))
    _BUILT.clear()  # the launcher need not hold the task's data for the rest of the run
    return path
