"""Tasks: data sets, flat parameter views, sampling streams, evaluation."""

import dataclasses

import numpy as np
import pytest
import torch

from protocol.config.schema import DATASETS, MODELS
from tests.helpers import make_config
from worker.tasks import BatchSampler, Task
from worker.tasks.data import DATASET_NAMES
from worker.tasks.models import MODEL_NAMES


def test_schema_choices_match_implementations():
    assert set(MODELS) == set(MODEL_NAMES)
    assert set(DATASETS) == set(DATASET_NAMES)


def test_digits_split_is_fixed_and_disjoint():
    a = Task(make_config(seed=0)).data
    b = Task(make_config(seed=5)).data
    assert len(a.x_train) == 1438 and len(a.x_test) == 359
    assert torch.equal(a.x_test, b.x_test)  # the experiment seed never changes the data
    train = {tuple(r.tolist()) for r in a.x_train}
    assert sum(tuple(r.tolist()) in train for r in a.x_test) < 10  # digits has a few duplicate images


@pytest.mark.parametrize("model", ["logreg", "mlp", "cnn"])
def test_backward_fills_the_flat_gradient_in_place(model):
    task = Task(make_config(task={"model": model, "hidden": [8], "channels": [3]}))
    net = task.net
    ptr = net.grad.data_ptr()
    loss = task.gradient(torch.arange(16))
    assert loss > 0 and net.grad.abs().sum() > 0 and net.grad.data_ptr() == ptr
    ref = Task(make_config(task={"model": model, "hidden": [8], "channels": [3]}))
    ref.net.model.zero_grad(set_to_none=True)
    ref.loss(ref.data.x_train[:16], ref.data.y_train[:16]).backward()
    expected = torch.cat([p.grad.reshape(-1) for p in ref.net.model.parameters()])
    torch.testing.assert_close(net.grad, expected)
    net.params.add_(1.0)  # writing the flat vector moves the model
    assert all(
        (p.data == v).all()
        for p, v in zip(
            net.model.parameters(), [net.params[e.offset : e.stop].view(e.shape) for e in net.layout.entries]
        )
    )


def test_same_seed_same_model_every_process():
    a, b = Task(make_config(seed=7)), Task(make_config(seed=7))
    assert torch.equal(a.net.params, b.net.params)
    assert not torch.equal(a.net.params, Task(make_config(seed=8)).net.params)


def test_sampler_streams_are_per_rank_and_reproducible():
    s = lambda rank: BatchSampler(100, 10, "random", rank, 4, seed=1)
    a, b, c = s(0), s(0), s(1)
    batches_a = [a.next() for _ in range(25)]
    assert all(torch.equal(x, b.next()) for x in batches_a)
    assert not torch.equal(batches_a[0], c.next())
    # within an epoch every sample appears once
    assert sorted(torch.cat(batches_a[:10]).tolist()) == list(range(100))


def test_shard_sampling_partitions_the_data():
    shards = [BatchSampler(103, 5, "shard", r, 4, seed=2).indices for r in range(4)]
    allidx = torch.cat(shards).tolist()
    assert sorted(allidx) == list(range(103)) and len(set(allidx)) == 103


def test_full_batch_returns_all_local_data():
    s = BatchSampler(50, 0, "shard", 1, 2, seed=0)
    assert torch.equal(s.next(), s.next()) and len(s.next()) == 25


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
    for _ in range(100):
        task.gradient(task.sampler(0, 1).next())
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
    cfg = make_config(task={"model": "logreg", "regularizer": reg, "reg_lambda": 0.3})
    task = Task(cfg)
    task.net.params.normal_()
    task.gradient(torch.arange(20))
    p = task.net.params.clone().requires_grad_(True)
    value = 0.5 * 0.3 * p.dot(p) if reg == "l2" else 0.3 * (p * p / (1 + p * p)).sum()
    (g_reg,) = torch.autograd.grad(value, p)
    task.cfg = dataclasses.replace(cfg.task, regularizer="none")
    task.gradient(torch.arange(20))
    plain = task.net.grad.clone()
    task.cfg = cfg.task
    task.gradient(torch.arange(20))
    torch.testing.assert_close(task.net.grad, plain + g_reg, rtol=1e-5, atol=1e-6)


def test_digits_read_without_importing_sklearn_equal_load_digits():
    from sklearn.datasets import load_digits

    from worker.tasks.data import digits_arrays

    pixels, labels = digits_arrays()
    d = load_digits()
    assert np.array_equal(pixels, d.data) and np.array_equal(labels, d.target)
