"""The built-in tasks, as task factories of the same API a user's task has (worker/tasks/api.py).

`task.factory` empty picks the factory of `task.dataset`: digits, synthetic (logistic, lstsq or the noisy
quadratic), mnist, fashion_mnist and libsvm, each with the model of `task.model` (logreg, mlp, cnn) and the
objective's regularizer of `task.regularizer`. The worker, the evaluator and the sync baseline know none of
them by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from protocol.config.schema import DATASETS, TaskConfig
from worker.tasks.api import TaskSpec, accuracy
from worker.tasks.data import Dataset, load_dataset
from worker.tasks.models import build_model
from worker.tasks.quadratic import QuadraticProblem


def half_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The least-squares loss 1/2 mean (output - target)^2."""
    return 0.5 * F.mse_loss(outputs, targets)


def regularizer_of(task: TaskConfig) -> Callable[[nn.Module], torch.Tensor] | None:
    """l2: lambda/2 ||x||^2; nonconvex: lambda sum x^2 / (1 + x^2) (the EF21 papers' choice); over every
    trainable parameter."""
    lam = task.reg_lambda
    if task.regularizer == "none" or lam == 0:
        return None
    if task.regularizer == "l2":
        return lambda model: 0.5 * lam * _total((p * p).sum() for p in _trainable(model))
    return lambda model: lam * _total((p * p / (1 + p * p)).sum() for p in _trainable(model))


def _trainable(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def _total(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """sum(terms): a tensor, since every built-in model has trainable parameters (sum of none would be 0)."""
    total = sum(terms)
    assert isinstance(total, torch.Tensor)
    return total


def from_dataset(task: TaskConfig, data: Dataset) -> TaskSpec:
    """A classification (or regression) task over a fixed train/test split, with a built-in model."""
    classify = data.num_classes is not None
    return TaskSpec(
        model=build_model(task, data),
        train=(data.x_train, data.y_train),
        test=(data.x_test, data.y_test),
        loss=F.cross_entropy if classify else half_mse,
        metrics=accuracy if classify else None,
        regularizer=regularizer_of(task),
    )


def dataset_task(task: TaskConfig) -> TaskSpec:
    """digits, mnist, fashion_mnist, libsvm, and the synthetic logistic / least-squares problems."""
    return from_dataset(task, load_dataset(task))


def synthetic(task: TaskConfig) -> TaskSpec:
    return quadratic(task) if task.synthetic.kind == "quadratic" else dataset_task(task)


def quadratic(task: TaskConfig) -> TaskSpec:
    """f(x) = 1/2 ||x - x*||^2 on the parameter vector itself, with Gaussian gradient noise drawn from each
    rank's own stream (worker/tasks/quadratic.py). Its evaluation 'data' is one noise-free sample, so the
    evaluator reports f(x) (train and test loss) and the exact ||grad f||^2."""
    problem = QuadraticProblem(task.synthetic, torch.device("cpu"))
    noise_free = (torch.zeros(1, task.synthetic.dim),)
    return TaskSpec(
        model=problem.model(),
        train=noise_free,
        test=noise_free,
        forward=problem.forward,
        loss=problem.loss,
        metrics=None,
        regularizer=regularizer_of(task),
        batches=problem.batches,
        report_grad_norm=True,
    )


BUILTIN: dict[str, Callable[[TaskConfig], TaskSpec]] = {
    "digits": dataset_task,
    "synthetic": synthetic,
    "mnist": dataset_task,
    "fashion_mnist": dataset_task,
    "libsvm": dataset_task,
}
assert set(BUILTIN) == set(DATASETS), "every data set of the schema has a built-in factory"


def builtin(task: TaskConfig) -> TaskSpec:
    """The built-in task of task.dataset (what an empty task.factory means)."""
    return BUILTIN[task.dataset](task)
