"""The noisy quadratic task (f(x) = 1/2 ||x - x*||^2, R3 in docs/algorithms.md) and the ||grad f||^2 metric of "
"evaluations."""

import json

import pytest
import torch

from launch.evaluate import Evaluator
from launch.summary import build_summary
from protocol.config.loader import load_experiment
from protocol.runfolder.snapshot import write_snapshot
from tests.helpers import make_config
from worker.tasks import Task


def quadratic(dim=200, noise=0.5, batch_size=1, seed=0, **synthetic):
    return make_config(
        seed=seed,
        task={
            "dataset": "synthetic",
            "batch_size": batch_size,
            "synthetic": {"kind": "quadratic", "dim": dim, "noise": noise, **synthetic},
        },
    )


def x_star(task: Task) -> torch.Tensor:
    return task.spec.loss.__self__.x_star  # the QuadraticProblem behind the task's loss


def test_the_model_is_one_parameter_vector_started_near_the_optimum():
    task = Task(quadratic(dim=1000, optimum_scale=2.0, init_scale=0.3))
    assert [(e.name, e.shape) for e in task.layout.entries] == [("x", (1000,))]
    star = x_star(task)
    assert 1.8 < float(star.std()) < 2.2  # x* = 2 N(0, I) from data_seed
    assert abs(float((task.net.params - star).norm()) - 0.3) < 0.05  # ||x^0 - x*|| ~ init_scale
    other = Task(quadratic(dim=1000, optimum_scale=2.0, init_scale=0.3, seed=1))
    assert torch.equal(x_star(other), star)  # x* is data: the experiment seed never moves it
    assert not torch.equal(other.net.params, task.net.params)  # x^0 is the model init: it does
    at_optimum = Task(quadratic(dim=1000, optimum_scale=2.0, init_scale=0.0))
    assert torch.equal(at_optimum.net.params, star)  # R3 starts at the optimum
    assert torch.equal(x_star(Task(quadratic(dim=50))), torch.zeros(50))  # default x* = 0


def test_exact_gradient_is_x_minus_x_star_and_the_loss_is_f():
    task = Task(quadratic(dim=300, batch_size=0, optimum_scale=1.0))
    task.net.params.normal_()
    diff = task.net.params - x_star(task)
    loss = task.gradient(next(task.batches(0, 1)))
    torch.testing.assert_close(task.net.grad, diff)
    assert loss == pytest.approx(0.5 * float(diff.square().sum()), rel=1e-5)


def test_regularizer_gradient_is_added_as_for_every_task():
    cfg = make_config(
        task={
            "dataset": "synthetic",
            "batch_size": 0,
            "regularizer": "nonconvex",
            "reg_lambda": 0.1,
            "synthetic": {"kind": "quadratic", "dim": 40, "optimum_scale": 1.0},
        }
    )
    task = Task(cfg)
    task.net.params.normal_()
    p = task.net.params.clone().requires_grad_(True)
    f = 0.5 * (p - x_star(task)).square().sum() + 0.1 * (p * p / (1 + p * p)).sum()
    (expected,) = torch.autograd.grad(f, p)
    task.gradient(next(task.batches(0, 1)))
    torch.testing.assert_close(task.net.grad, expected)


@pytest.mark.parametrize("noise,batch_size", [(1.0, 1), (2.0, 4)])
def test_gradient_noise_is_gaussian_with_variance_sigma_squared_over_the_batch(noise, batch_size):
    d, draws = 2000, 200
    task = Task(quadratic(dim=d, noise=noise, batch_size=batch_size))
    stream = task.batches(0, 4)
    exact = task.net.params - x_star(task)
    samples = []
    for _ in range(draws):
        task.gradient(next(stream))
        samples.append(task.net.grad - exact)
    xi = torch.stack(samples).double()  # 400k draws: the variance is known to about +-0.5%
    var = noise**2 / batch_size
    assert abs(float(xi.mean())) < 5 * (var / xi.numel()) ** 0.5
    assert float(xi.var()) == pytest.approx(var, rel=0.02)
    kurtosis = float((xi**4).mean()) / float((xi**2).mean()) ** 2
    assert kurtosis == pytest.approx(3.0, rel=0.05)  # Gaussian, not e.g. uniform (1.8)


def test_every_rank_has_its_own_reproducible_noise_stream():
    task = Task(quadratic(dim=100, noise=1.0))
    draw = lambda rank: next(task.batches(rank, 4))[0].clone()
    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))


def test_evaluation_reports_f_and_the_gradient_norm():
    task = Task(quadratic(dim=500, optimum_scale=1.0))
    x = x_star(task) + 0.1 * torch.randn(500)
    m = task.evaluate(x, 10000)
    diff = (x - x_star(task)).double()
    assert m["train_loss"] == pytest.approx(0.5 * float(diff.square().sum()), rel=1e-6)
    assert m["grad_norm_sq"] == pytest.approx(float(diff.square().sum()), rel=1e-5)  # ||grad||^2 = 2 f
    assert m["test_loss"] == m["train_loss"] and m["test_acc"] is None


@pytest.mark.parametrize("reg", ["none", "nonconvex"])
def test_grad_norm_is_the_full_batch_gradient_of_the_training_objective(reg):
    cfg = make_config(task={"model": "mlp", "hidden": [16], "regularizer": reg, "reg_lambda": 0.05})
    task = Task(cfg)
    params = task.net.params.clone()
    plain = task.evaluate(params, 1000)
    assert "grad_norm_sq" not in plain  # off by default: it costs a backward pass
    m = task.evaluate(params, 1000, grad_norm=True)
    assert {k: m[k] for k in plain} == plain  # the other figures are unchanged
    ref = Task(cfg)
    ref.net.params.copy_(params)
    ref.net.model.zero_grad(set_to_none=True)
    x, y = ref.spec.train
    objective = torch.nn.functional.cross_entropy(ref.net.model(x[:1000]), y[:1000])
    p = next(ref.net.model.parameters())
    if reg == "nonconvex":
        objective = objective + sum(0.05 * (w * w / (1 + w * w)).sum() for w in ref.net.model.parameters())
    grads = torch.autograd.grad(objective, list(ref.net.model.parameters()))
    expected = sum(float(g.double().square().sum()) for g in grads)
    assert p.numel() > 0 and m["grad_norm_sq"] == pytest.approx(expected, rel=1e-4)


def test_the_evaluator_writes_grad_norm_sq_and_the_summary_keeps_the_final_one(tmp_path):
    cfg = make_config(task={"model": "logreg"}, run={"eval_grad_norm": True, "eval_max_samples": 500})
    (tmp_path / "snapshots").mkdir()
    params = Task(cfg).net.params
    write_snapshot(tmp_path / "snapshots" / "final.safetensors", params, {"version": 7, "wall_s": 1.0, "final": True})
    Evaluator(cfg, tmp_path).run(poll_s=0.01)
    line = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert line["grad_norm_sq"] > 0 and line["final"]
    summary = build_summary(tmp_path, cfg, {})
    assert summary.final_grad_norm_sq == line["grad_norm_sq"]


def test_shipped_noise_floor_config_is_the_quadratic_at_its_optimum():
    from pathlib import Path

    cfg = load_experiment(str(Path(__file__).resolve().parent.parent / "configs" / "quadratic_noise_floor.yaml"))
    task = Task(cfg)
    assert torch.equal(task.net.params, x_star(task))
