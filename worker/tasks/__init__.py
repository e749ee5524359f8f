"""Training tasks: the task API (api.py), the built-in tasks (builtin.py) and the run-time Task the workers,
the evaluator and the sync baseline use (task.py)."""

from worker.tasks.api import TaskError, TaskSpec
from worker.tasks.loader import rank_seed
from worker.tasks.task import Task, build_spec

__all__ = ["Task", "TaskError", "TaskSpec", "build_spec", "rank_seed"]
