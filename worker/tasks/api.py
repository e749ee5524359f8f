"""The task API: train any PyTorch model on any data set. A task factory returns a TaskSpec.

    # my_task.py                                   # experiment.yaml
    def build(task) -> TaskSpec:                   task:
        model = MyNet(width=task.args["width"])      factory: my_task:build      (or path/to/my_task.py:build)
        return TaskSpec(model, train=..., test=...)   args: {width: 64}

`task.factory` names a function as "package.module:function" (anything importable) or
"path/to/file.py:function"; it is called with the experiment's TaskConfig (its `args` mapping carries the
user's own settings and is recorded in config.yaml) after torch's generator was seeded with the
experiment seed, so every process builds the same initial model. The built-in tasks (worker/tasks/builtin.py)
are factories of the same kind, chosen by `task.dataset` when `task.factory` is empty.

The training objective is the mean of loss(forward(model, batch)) over a batch, plus regularizer(model).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from protocol.config.schema import TaskConfig

Batch = Any  # what a DataLoader over the training data yields; (inputs, targets) by default


class SizedData(Protocol):
    """A map-style data set as the DataLoaders read it: samples by index, and how many there are (a torch
    Dataset that defines __len__, as TensorDataset, Subset and torchvision's do)."""

    def __getitem__(self, index: int, /) -> Any: ...

    def __len__(self) -> int: ...


Data = SizedData | tuple[torch.Tensor, ...]  # a data set as above, or tensors of equal length (inputs, targets)


def default_forward(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(outputs, targets) of an (inputs, targets) batch."""
    inputs, targets = batch[0], batch[1]
    return model(inputs), targets


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Top-1 accuracy of class scores (N, C) against integer labels (N,); nothing for other outputs."""
    if outputs.dim() != 2 or targets.dim() != 1 or targets.dtype.is_floating_point:
        return {}
    return {"acc": float((outputs.argmax(dim=1) == targets).float().mean())}


@dataclass
class TaskSpec:
    """A task: the model, its data, and how a batch becomes a loss.

    model        an nn.Module with float32 parameters. Parameters with requires_grad=False are not trained
                 (not served, not pushed); buffers (e.g. BatchNorm statistics) follow worker.buffers_every.
    train        the training data: a torch Dataset, or tensors of equal length (x, y). Each rank reads it
                 through its own DataLoader (task.sampling random or shard, seeded per rank).
    test         held-out data the evaluator scores (None: no test metrics).
    loss         (outputs, targets) -> scalar tensor, the batch mean. Default: cross entropy.
    forward      (model, batch) -> (outputs, targets). Default: model(batch[0]), batch[1].
    metrics      (outputs, targets) -> {name: batch mean}; reported as test_<name>. Default: accuracy of
                 class scores (test_acc).
    regularizer  model -> scalar tensor added to the objective (train_loss includes it, test_loss not).
    collate_fn   the DataLoaders' collate function (default: torch's).
    batches      (rank, world, seed, batch_size) -> endless iterator of training batches, instead of a
                 DataLoader over `train` (for data that is generated, not stored).
    report_grad_norm  report ||grad f||^2 in every evaluation even without run.eval_grad_norm.
    """

    model: nn.Module
    train: Data | None
    test: Data | None = None
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    forward: Callable[[nn.Module, Batch], tuple[torch.Tensor, torch.Tensor]] = default_forward
    metrics: Callable[[torch.Tensor, torch.Tensor], dict[str, float]] | None = accuracy
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None
    collate_fn: Callable[[list], Batch] | None = None
    batches: Callable[[int, int, int, int], Iterator[Batch]] | None = None
    report_grad_norm: bool = False


class TaskError(ValueError):
    """A task factory that cannot be loaded, raised, or returned something that is not a usable task."""


def load_factory(ref: str) -> Callable[..., Any]:
    """The function named by "package.module:function" or "path/to/file.py:function". Raises TaskError."""
    where, sep, name = ref.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise TaskError(f"{ref!r} must look like package.module:function or path/to/file.py:function")
    module = _load_file(Path(where)) if where.endswith(".py") else _import(where)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise TaskError(f"{where} has no function {name!r}")
    return factory


def _import(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except Exception as err:  # any error of the user's module: say which and why
        raise TaskError(f"cannot import {module}: {type(err).__name__}: {err}") from None


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise TaskError(f"{path} does not exist")
    name = f"taups_task_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TaskError(f"{path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling-free introspection want it registered
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise TaskError(f"cannot load {path}: {type(err).__name__}: {err}") from None
    return module


def call_factory(factory: Callable[..., Any], task_cfg: TaskConfig, ref: str) -> TaskSpec:
    """factory(task_cfg), checked: raises TaskError naming what went wrong."""
    try:
        spec = factory(task_cfg)
    except TaskError:
        raise
    except Exception as err:
        raise TaskError(f"{ref} raised {type(err).__name__}: {err}") from None
    check_spec(spec, ref)
    return spec


def check_spec(spec: Any, ref: str) -> None:
    """A usable TaskSpec: an nn.Module with float32 trainable parameters, and training data or batches."""
    if not isinstance(spec, TaskSpec):
        raise TaskError(f"{ref} returned {type(spec).__name__}, not a TaskSpec (worker.tasks.api.TaskSpec)")
    if not isinstance(spec.model, nn.Module):
        raise TaskError(f"{ref}: TaskSpec.model is {type(spec.model).__name__}, not a torch.nn.Module")
    trainable = [(n, p) for n, p in spec.model.named_parameters() if p.requires_grad]
    if not trainable:
        raise TaskError(f"{ref}: the model has no trainable parameters")
    for name, p in trainable:
        if p.dtype != torch.float32:
            raise TaskError(
                f"{ref}: parameter {name!r} is {p.dtype}; parameters are served as float32 "
                "(build the model in float32; worker.amp: bf16 runs its forward and backward in bfloat16)"
            )
    if spec.train is None and spec.batches is None:
        raise TaskError(f"{ref}: TaskSpec needs training data (train) or a batch stream (batches)")
    for field in ("train", "test"):
        data = getattr(spec, field)
        if data is not None and not _is_data(data):
            raise TaskError(f"{ref}: TaskSpec.{field} must be a torch Dataset or a tuple of tensors")
    for field in ("loss", "forward"):
        if not callable(getattr(spec, field)):
            raise TaskError(f"{ref}: TaskSpec.{field} is not callable")


def _is_data(data: Any) -> bool:
    if isinstance(data, tuple):
        return bool(data) and all(isinstance(t, torch.Tensor) and len(t) == len(data[0]) for t in data)
    return isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__"))
