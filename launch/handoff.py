"""The model the server starts with, built once by the launcher: RUN/model/init.safetensors.

The task's factory runs here once (torch seeded with the experiment seed, as in every process), and the
model's trainable parameters and persistent buffers go to the server in one file with their layouts and
the run id (protocol/runfolder/model_init.py): the server knows what it serves before any worker joins.
"""

from __future__ import annotations

from pathlib import Path

from protocol.config.schema import ExperimentConfig
from protocol.errors import ConfigError
from protocol.runfolder.model_init import FILE, ModelInit, write_model_init
from worker.tasks import Task, TaskError


def initial_model(cfg: ExperimentConfig, run_id: str) -> ModelInit:
    """The initial model of the experiment's task. Raises ConfigError naming task.factory when the task
    cannot be built."""
    try:
        net = Task(cfg, device="cpu").net
    except TaskError as err:
        raise ConfigError("task.factory", str(err)) from None
    return ModelInit(net.layout, net.params.detach().clone(), net.buffer_layout, net.buffers(), run_id)


def hand_off(cfg: ExperimentConfig, run_dir: Path) -> Path:
    """Write RUN/model/init.safetensors for the run in run_dir (its name is the run id); returns the path."""
    path = run_dir / FILE
    write_model_init(path, initial_model(cfg, run_dir.name))
    return path
