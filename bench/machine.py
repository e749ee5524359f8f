"""Machine limits measured in the same run as a benchmark, so results print as ratios against them."""

from __future__ import annotations

import time

import torch


def copy_bandwidth_gbs(nbytes: int = 64 << 20, repeats: int = 20) -> float:
    """One-thread memory copy bandwidth (bytes read + written), best of `repeats`, in GB/s."""
    torch.set_num_threads(1)
    src = torch.ones(nbytes // 4)
    dst = torch.zeros_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best / 1e9


def amsgrad_step_s(params: int, repeats: int = 20) -> float:
    """Best time of one fused AMSGrad step over `params` floats (moves 36 bytes per parameter)."""
    x = torch.zeros(params)
    opt = torch.optim.Adam([x], lr=1e-3, amsgrad=True, fused=True)
    x.grad = torch.randn(params)
    opt.step()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        opt.step()
        best = min(best, time.perf_counter() - t0)
    return best


AMSGRAD_BYTES_PER_PARAM = 36  # read g, x, m, v, v_hat; write x, m, v, v_hat (float32)
