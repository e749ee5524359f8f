"""Batches for one rank: a DataLoader per rank with a per-rank seeded batch sampler, so datasets on disk,
transforms and loader worker processes (task.loader_workers) work as in any PyTorch training loop.

random: epochs over the whole training set, each rank in its own order, reshuffled every epoch by the
        rank's own generator;
shard:  the rank's contiguous slice of one fixed permutation (the same in every process), reshuffled per
        epoch by the rank's generator;
batch_size 0 yields the whole index set every time (deterministic full gradients).

Tensors given as (x, y) become a TensorData, which a DataLoader fetches a whole batch at a time
(`__getitems__`: one indexing per tensor, no Python loop over samples).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from worker.tasks.api import Data, SizedData


def rank_seed(seed: int, rank: int, stream: int = 0) -> int:
    """Independent, reproducible seed per (experiment seed, rank, stream); stream 0 draws minibatches."""
    key = [seed, rank] if stream == 0 else [seed, rank, stream]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


class TensorData(Dataset):
    """Tensors of equal length as a Dataset whose batches are fetched by one indexing per tensor."""

    def __init__(self, *tensors: torch.Tensor):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[i] for t in self.tensors)

    def __getitems__(self, indices: list[int] | torch.Tensor) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(indices)
        return tuple(t[idx] for t in self.tensors)


def as_dataset(data: Data) -> SizedData:
    return TensorData(*data) if isinstance(data, tuple) else data


def _loader(dataset: SizedData, **options: Any) -> DataLoader:
    """A DataLoader over `dataset`."""
    # torch's DataLoader reads any map-style data set (__getitem__ and __len__); its stub asks for a Dataset
    return DataLoader(dataset, **options)  # type: ignore[arg-type]


class RankBatchSampler(Sampler[list[int]]):
    """An endless stream of index batches for one rank (see the module docstring)."""

    def __init__(self, n: int, batch_size: int, sampling: str, rank: int, world: int, seed: int):
        if sampling == "shard":
            perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))
            lo, hi = rank * n // world, (rank + 1) * n // world
            self.indices = perm[lo:hi].sort().values
        else:
            self.indices = torch.arange(n)
        if len(self.indices) == 0:
            raise ValueError(f"rank {rank} has no training data (n={n}, world={world})")
        self.batch_size = min(batch_size, len(self.indices))
        self.gen = torch.Generator().manual_seed(rank_seed(seed, rank))

    def __iter__(self) -> Iterator[list[int]]:
        if self.batch_size == 0:
            everything = self.indices.tolist()
            while True:
                yield everything
        while True:
            order = self.indices[torch.randperm(len(self.indices), generator=self.gen)]
            for pos in range(0, len(order) - self.batch_size + 1, self.batch_size):
                yield order[pos : pos + self.batch_size].tolist()


def _identity(batch: Any) -> Any:
    return batch


def _default_collate(dataset: SizedData) -> Callable[[Any], Any] | None:
    """TensorData's __getitems__ returns a batch already (kept as it is); any other Dataset's, e.g. torch's
    Subset from random_split, returns a list of samples that torch's default collate stacks."""
    return _identity if isinstance(dataset, TensorData) else None


def rank_loader(
    data: Data,
    batch_size: int,
    sampling: str,
    rank: int,
    world: int,
    seed: int,
    workers: int = 0,
    collate: Callable[[list], Any] | None = None,
) -> DataLoader:
    """The rank's DataLoader: endless, each batch drawn by its RankBatchSampler."""
    dataset = as_dataset(data)
    sampler = RankBatchSampler(len(dataset), batch_size, sampling, rank, world, seed)
    return _loader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate or _default_collate(dataset),
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def eval_batches(
    data: Data, max_samples: int, batch_size: int = 4096, collate: Callable[[list], Any] | None = None
) -> Iterator[Any]:
    """The first max_samples samples, in order, in batches (what an evaluation scores)."""
    dataset = as_dataset(data)
    n = min(max_samples, len(dataset))
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    loader = _loader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate or _default_collate(dataset),
    )
    return islice(iter(loader), len(batches))


def batch_size_of(batch: Any) -> int:
    """Samples in a batch: the length of its first tensor."""
    while isinstance(batch, (tuple, list)):
        batch = batch[0]
    if isinstance(batch, dict):
        return batch_size_of(next(iter(batch.values())))
    return len(batch) if isinstance(batch, torch.Tensor) and batch.dim() else 1


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch
