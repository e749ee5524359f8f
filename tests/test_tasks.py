"""Tasks: the built-in factories, flat parameter views, per-rank batch streams, gradients, evaluation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from protocol.config.schema import DATASETS, MODELS
from tests.helpers import make_config
from worker.tasks import Task
from worker.tasks.builtin import BUILTIN
from worker.tasks.loader import RankBatchSampler


def _first(task, n):
    x, y = task.spec.train
    return x[:n], y[:n]


def test_every_schema_choice_has_an_implementation():
    assert set(DATASETS) == set(BUILTIN)
    for model in MODELS:
        assert Task(make_config(task={"model": model, "hidden": [4], "channels": [2]})).net.numel > 0


def test_digits_split_is_fixed_and_disjoint():
    a = Task(make_config(seed=0)).spec
    b = Task(make_config(seed=5)).spec
    assert len(a.train[0]) == 1438 and len(a.test[0]) == 359
    assert torch.equal(a.test[0], b.test[0])  # the experiment seed never changes the data
    train = {tuple(r.tolist()) for r in a.train[0]}
    assert sum(tuple(r.tolist()) in train for r in a.test[0]) < 10  # digits has a few duplicate images


@pytest.mark.parametrize("model", ["logreg", "mlp", "cnn"])
def test_backward_fills_the_flat_gradient_in_place(model):
    cfg = make_config(task={"model": model, "hidden": [8], "channels": [3]})
    task = Task(cfg)
    net = task.net
    ptr = net.grad.data_ptr()
    loss = task.gradient(_first(task, 16))
    assert loss > 0 and net.grad.abs().sum() > 0 and net.grad.data_ptr() == ptr
    ref = Task(cfg)
    ref.net.model.zero_grad(set_to_none=True)
    x, y = _first(ref, 16)
    F.cross_entropy(ref.net.model(x), y).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in ref.net.model.parameters()])
    torch.testing.assert_close(net.grad, expected)
    net.params.add_(1.0)  # writing the flat vector moves the model
    views = [net.params[e.offset : e.stop].view(e.shape) for e in net.layout.entries]
    assert all((p.data == v).all() for p, v in zip(net.model.parameters(), views))


def test_same_seed_same_model_every_process():
    a, b = Task(make_config(seed=7)), Task(make_config(seed=7))
    assert torch.equal(a.net.params, b.net.params)
    assert not torch.equal(a.net.params, Task(make_config(seed=8)).net.params)


def _batches(sampler, n):
    it = iter(sampler)
    return [torch.tensor(next(it)) for _ in range(n)]


def test_batch_streams_are_per_rank_and_reproducible():
    s = lambda rank: RankBatchSampler(100, 10, "random", rank, 4, seed=1)
    a, b, c = _batches(s(0), 25), _batches(s(0), 25), _batches(s(1), 1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert sorted(torch.cat(a[:10]).tolist()) == list(range(100))  # within an epoch every sample appears once


def test_shard_sampling_partitions_the_data():
    shards = [RankBatchSampler(103, 5, "shard", r, 4, seed=2).indices for r in range(4)]
    allidx = torch.cat(shards).tolist()
    assert sorted(allidx) == list(range(103)) and len(set(allidx)) == 103


def test_full_batch_returns_all_local_data():
    first, second = _batches(RankBatchSampler(50, 0, "shard", 1, 2, seed=0), 2)
    assert torch.equal(first, second) and len(first) == 25


def test_a_rank_reads_its_batches_through_a_dataloader():
    task = Task(make_config(task={"batch_size": 16}))
    stream = task.batches(0, 2)
    x, y = next(stream)
    assert x.shape == (16, 64) and y.shape == (16,)
    idx = next(iter(RankBatchSampler(len(task.spec.train[0]), 16, "random", 0, 2, seed=0)))
    assert torch.equal(x, task.spec.train[0][idx])  # the sampler's stream, fetched a batch at a time


@pytest.mark.parametrize("kind", ["logistic", "lstsq"])
def test_synthetic_tasks_scale_and_learn(kind):
    cfg = make_config(
        task={
            "dataset": "synthetic",
            "model": "logreg",
            "batch_size": 0,
            "synthetic": {"kind": kind, "dim": 50, "samples": 500},
        }
    )
    task = Task(cfg)
    assert task.net.numel == 50 * (2 if kind == "logistic" else 1) + (2 if kind == "logistic" else 1)
    before = task.evaluate(task.net.params.clone(), 10000)
    opt = torch.optim.SGD(task.net.model.parameters(), lr=0.5)
    stream = task.batches(0, 1)
    for _ in range(100):
        task.gradient(next(stream))
        opt.step()
    after = task.evaluate(task.net.params.clone(), 10000)
    assert after["train_loss"] < 0.7 * before["train_loss"]
    assert (after["test_acc"] is None) == (kind == "lstsq")


def test_synthetic_size_reaches_millions_of_parameters():
    cfg = make_config(
        task={"dataset": "synthetic", "model": "mlp", "hidden": [2048, 2048], "synthetic": {"dim": 100, "samples": 100}}
    )
    assert Task(cfg).net.numel > 4_000_000


@pytest.mark.parametrize("reg", ["l2", "nonconvex"])
def test_regularizer_gradient_matches_autograd(reg):
    plain, regular = (
        Task(make_config(task={"model": "logreg", "regularizer": r, "reg_lambda": 0.3})) for r in ("none", reg)
    )
    for task in (plain, regular):
        torch.manual_seed(3)
        task.net.params.normal_()
        task.gradient(_first(task, 20))
    p = regular.net.params.clone().requires_grad_(True)
    value = 0.5 * 0.3 * p.dot(p) if reg == "l2" else 0.3 * (p * p / (1 + p * p)).sum()
    (g_reg,) = torch.autograd.grad(value, p)
    torch.testing.assert_close(regular.net.grad, plain.net.grad + g_reg, rtol=1e-5, atol=1e-6)


def test_digits_read_without_importing_sklearn_equal_load_digits():
    from sklearn.datasets import load_digits

    from worker.tasks.data import digits_arrays

    pixels, labels = digits_arrays()
    d = load_digits()
    assert np.array_equal(pixels, d.data) and np.array_equal(labels, d.target)
