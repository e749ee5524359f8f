"""Training tasks: data sets, models, losses. Used by workers, the evaluator and the sync baseline."""

from worker.tasks.task import BatchSampler, Task, rank_seed

__all__ = ["BatchSampler", "Task", "rank_seed"]
