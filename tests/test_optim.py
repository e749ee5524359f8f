"""Server optimizers against torch and the APAM paper's closed forms (docs/algorithms.md, Test oracles 1)."""

import math

import pytest
import torch

from protocol.config.schema import OptimizerConfig
from ps.optim import PaperAMSGrad, make_optimizer


def _grads(steps, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) * (1 + 5 * torch.rand(n, generator=g)) for _ in range(steps)]


@pytest.mark.parametrize("eps", [1e-8, 1e-3])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_torch_form_equals_torch_adam_amsgrad_for_200_steps(eps, weight_decay):
    n = 257
    x0 = torch.randn(n, generator=torch.Generator().manual_seed(1))
    cfg = OptimizerConfig(name="amsgrad", form="torch", lr=1e-2, betas=(0.9, 0.99), eps=eps, weight_decay=weight_decay)
    ours = x0.clone()
    opt = make_optimizer(ours, cfg)
    ref = x0.clone().requires_grad_(True)
    ref_opt = torch.optim.Adam(
        [ref], lr=1e-2, betas=(0.9, 0.99), eps=eps, weight_decay=weight_decay, amsgrad=True, foreach=False
    )  # the plain per-tensor reference loop
    for step, g in enumerate(_grads(200, n)):
        lr = 1e-2 * (1 + (step % 3))  # the server may change lr every push (staleness rules)
        ref_opt.param_groups[0]["lr"] = lr
        opt.step(g, lr)
        ref.grad = g.clone()
        ref_opt.step()
        torch.testing.assert_close(ours, ref.detach(), rtol=1e-5, atol=1e-6, msg=f"step {step}")
    state = opt.state()
    ref_state = ref_opt.state[ref]
    torch.testing.assert_close(state["v_hat"], ref_state["max_exp_avg_sq"], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(state["m"], ref_state["exp_avg"], rtol=1e-5, atol=1e-7)


def test_paper_form_first_step_is_the_closed_form():
    b1, b2, lr = 0.9, 0.999, 1e-3
    x0 = torch.randn(1000)
    g1 = torch.randn(1000)
    x = x0.clone()
    PaperAMSGrad(x, OptimizerConfig(lr=lr, betas=(b1, b2), form="paper")).step(g1, lr)
    expected = x0 - lr * (1 - b1) / math.sqrt(1 - b2) * torch.sign(g1)
    torch.testing.assert_close(x, expected, rtol=1e-6, atol=1e-7)


def test_paper_form_matches_a_direct_transcription_of_algorithm_1():
    b1, b2, lr, n = 0.8, 0.99, 1e-2, 64
    x = torch.randn(n, dtype=torch.float64)
    ours = x.float().clone()
    opt = PaperAMSGrad(ours, OptimizerConfig(lr=lr, betas=(b1, b2), form="paper"))
    m = torch.zeros(n, dtype=torch.float64)
    v = torch.zeros_like(m)
    v_hat = torch.zeros_like(m)
    for g in _grads(100, n, seed=3):
        opt.step(g, lr)
        g = g.double()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        v_hat = torch.maximum(v_hat, v)
        x = x - lr * m / v_hat.sqrt()
    torch.testing.assert_close(ours.double(), x, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("form", ["torch", "paper"])
def test_v_hat_never_decreases(form):
    n = 100
    x = torch.zeros(n)
    opt = make_optimizer(x, OptimizerConfig(form=form, lr=1e-2))
    prev = torch.zeros(n)
    for g in _grads(150, n, seed=5):
        opt.step(g * torch.rand(n), 1e-2)  # shrinking gradients make v fall: v_hat must not
        v_hat = opt.state()["v_hat"].clone()
        assert torch.all(v_hat >= prev)
        prev = v_hat


def test_paper_form_guards_zero_over_zero():
    """Coordinates that never saw a gradient have v_hat = m = 0: their step must be 0, not NaN."""
    x0 = torch.randn(10)
    x = x0.clone()
    opt = PaperAMSGrad(x, OptimizerConfig(form="paper", lr=0.1))
    g = torch.zeros(10)
    g[:3] = torch.tensor([1.0, -2.0, 1e-30])
    for _ in range(5):
        opt.step(g, 0.1)
    assert torch.isfinite(x).all()
    assert torch.equal(x[3:], x0[3:])
    assert x[0] < x0[0] and x[1] > x0[1]


@pytest.mark.parametrize("tiny", [1e-22, 3e-22, 1e-30, -1e-25])
def test_paper_form_steps_on_gradients_whose_squares_underflow_stay_within_the_exact_bound(tiny):
    """(1 - b2) g^2 underflows to 0 in float32 for |g| below ~1e-21 while m does not: the step used to be
    lr * m / 1.2e-38 (8.5e11 for g = 1e-22). Exact arithmetic bounds |m / sqrt(v_hat)| by B; the exact first
    step is lr (1 - b1) / sqrt(1 - b2) = 3.16 lr."""
    lr = 1e-3
    x = torch.zeros(4)
    opt = PaperAMSGrad(x, OptimizerConfig(form="paper", lr=lr))
    g = torch.full((4,), tiny)
    for _ in range(3):
        opt.step(g, lr)
        assert torch.isfinite(x).all()
        assert float(x.abs().max()) <= 3 * lr * opt.bound * (1 + 1e-6)
    assert bool((torch.sign(x) == -torch.sign(g)).all())  # it still moves downhill
    assert opt.bound == pytest.approx(0.1 / math.sqrt(0.001 * (1 - 0.81 / 0.999)))


def test_paper_form_bound_never_binds_on_ordinary_gradients():
    """The clamp changes nothing when nothing underflows: the same iterates as the unclamped formula."""
    torch.manual_seed(0)
    x, ref = torch.randn(1000), None
    ref = x.clone()
    opt = PaperAMSGrad(x, OptimizerConfig(form="paper", lr=0.01))
    m, v, v_hat = torch.zeros(1000), torch.zeros(1000), torch.zeros(1000)
    for _ in range(50):
        g = torch.randn(1000) * 10 ** torch.empty(1000).uniform_(-8, 3)
        opt.step(g, 0.01)
        m.mul_(0.9).add_(g, alpha=0.1)
        v.mul_(0.999).addcmul_(g, g, value=0.001)
        torch.maximum(v_hat, v, out=v_hat)
        ref.add_(m / v_hat.sqrt().clamp_min(torch.finfo(torch.float32).tiny), alpha=-0.01)
    torch.testing.assert_close(x, ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("momentum,dampening,wd", [(0.0, 0.0, 0.0), (0.9, 0.0, 0.0), (0.9, 0.9, 0.0), (0.5, 0.1, 0.01)])
def test_sgd_equals_torch_sgd(momentum, dampening, wd):
    n = 50
    x0 = torch.randn(n)
    ours = x0.clone()
    opt = make_optimizer(
        ours, OptimizerConfig(name="sgd", lr=0.05, momentum=momentum, dampening=dampening, weight_decay=wd)
    )
    ref = x0.clone().requires_grad_(True)
    ref_opt = torch.optim.SGD([ref], lr=0.05, momentum=momentum, dampening=dampening, weight_decay=wd)
    for g in _grads(50, n, seed=7):
        opt.step(g, 0.05)
        ref.grad = g.clone()
        ref_opt.step()
    torch.testing.assert_close(ours, ref.detach(), rtol=1e-5, atol=1e-6)


def test_adam_equals_torch_adam():
    n = 50
    x0 = torch.randn(n)
    ours = x0.clone()
    opt = make_optimizer(ours, OptimizerConfig(name="adam", lr=1e-2))
    ref = x0.clone().requires_grad_(True)
    ref_opt = torch.optim.Adam([ref], lr=1e-2, foreach=False)
    for g in _grads(100, n, seed=9):
        opt.step(g, 1e-2)
        ref.grad = g.clone()
        ref_opt.step()
    torch.testing.assert_close(ours, ref.detach(), rtol=1e-5, atol=1e-6)


def test_step_reads_but_never_writes_the_direction():
    d = torch.randn(20)
    keep = d.clone()
    for cfg in (
        OptimizerConfig(),
        OptimizerConfig(form="paper", weight_decay=0.1),
        OptimizerConfig(name="sgd", momentum=0.9, weight_decay=0.1),
    ):
        make_optimizer(torch.randn(20), cfg).step(d, 0.1)
        assert torch.equal(d, keep)


@pytest.mark.parametrize(
    "name, form", [("amsgrad", "torch"), ("adam", "torch"), ("amsgrad", "paper"), ("sgd", "torch")]
)
@pytest.mark.parametrize("chunk", [64, 192, 1024])
def test_a_chunked_step_is_bitwise_the_whole_step(name, form, chunk):
    """The server streams a step chunk by chunk into shared memory (ps/model.py, finish_step); what it leaves
    is bit for bit what one step leaves, and the chunks cover the vector front to back. Chunks are whole
    multiples of 64 coordinates: the fused kernel's vector loop leaves a remainder to a scalar loop that rounds
    differently (a chunk of 100 changes the result), so chunk edges must not add remainders."""
    n, x0 = 1000, torch.randn(1000, generator=torch.Generator().manual_seed(3))
    cfg = OptimizerConfig(name=name, form=form, lr=1e-2)
    whole, chunked = x0.clone(), x0.clone()
    a, b = make_optimizer(whole, cfg), make_optimizer(chunked, cfg)
    for g in _grads(20, n):
        a.step(g, 1e-2)
        ends = list(b.step_chunks(g, 1e-2, chunk=chunk))
        assert ends[-1] == n and ends == sorted(ends)
        assert len(ends) == (-(-n // chunk) if (name, form) != ("amsgrad", "paper") and name != "sgd" else 1)
        assert torch.equal(whole, chunked)
    assert a.steps == b.steps == 20
    for key, t in a.state().items():
        assert torch.equal(t, b.state()[key]), key


def test_a_chunk_that_is_not_a_multiple_of_64_is_refused():
    opt = make_optimizer(torch.zeros(100), OptimizerConfig(name="amsgrad", form="torch", lr=1e-2))
    with pytest.raises(ValueError, match="multiple of 64"):
        list(opt.step_chunks(torch.ones(100), 1e-2, chunk=100))
    assert opt.steps == 0
