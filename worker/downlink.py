"""The worker's copy of the parameters under a compressed downlink (docs/design.md, Compressed downlink;
server.downlink topk; the server's side is ps/downlink.py).

A reply either replaces the copy (params, with the id the server now tracks it under, or -1 when untracked) or
carries a delta for the copy with id copy_base: the worker adds it index by index in float32, exactly as the
server adds it to its own record of the copy, so both stay equal bit for bit. A delta for another copy than
the one held (an answer passed over, a restarted server) is not applied: the copy stays as it is, and the next
push names id -1, which the server answers with the parameters whole.
"""

from __future__ import annotations

import torch

from protocol.wire.encoding import is_finite
from protocol.wire.messages import Reply, Welcome


def land(params: torch.Tensor | None, dst: torch.Tensor) -> None:
    """Copy received parameters into the copy `dst`, unless they were received straight into it."""
    if params is not None and params.data_ptr() != dst.data_ptr():
        dst.copy_(params)


def take(msg: Reply | Welcome, dst: torch.Tensor, copy_id: int) -> int:
    """Bring the copy `dst` (float32, (n,), host memory) to what `msg` carries; the id of the copy now held
    (-1: one the server does not track). A Reply with neither parameters nor a delta changes nothing (the
    parameters are read from shared memory). Raises ValueError for a delta that does not fit `dst`."""
    if isinstance(msg, Welcome):
        land(msg.params, dst)
        return -1  # the first push names no copy: the server starts tracking with its answer
    if msg.indices is None:
        land(msg.params, dst)
        return msg.copy_id if msg.params is not None else -1
    if copy_id < 0 or msg.copy_base != copy_id:
        return -1
    indices, values = _checked(msg, dst.numel())
    _check_sum(dst, indices, values)  # k values: nothing is added unless every sum is finite
    dst.index_add_(0, indices, values)
    return msg.copy_id


def _checked(msg: Reply, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    indices, values = msg.indices, msg.values
    if values is None or indices is None:
        raise ValueError("a downlink delta without values")
    if indices.dtype not in (torch.int32, torch.int64) or values.dtype != torch.float32:
        raise ValueError(f"a downlink delta of {indices.dtype} indices and {values.dtype} values")
    if indices.dim() != 1 or values.shape != indices.shape:
        raise ValueError(f"a downlink delta of {tuple(indices.shape)} indices and {tuple(values.shape)} values")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n):
        raise ValueError(f"a downlink delta with indices outside [0, {n})")
    if not is_finite(values):
        raise ValueError("a downlink delta with NaN or inf")
    return indices, values


def _check_sum(dst: torch.Tensor, indices: torch.Tensor, values: torch.Tensor) -> None:
    """Refuse a delta whose finite values would carry the copy to inf (|x| near float32's max)."""
    if not is_finite(dst.index_select(0, indices) + values):
        raise ValueError("a downlink delta that overflows the parameters to inf")
