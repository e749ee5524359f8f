"""TEMPORARY minimal compressors (identity, exact global top-k) until the full module lands."""

from __future__ import annotations

import torch

from protocol.config import CompressionConfig
from protocol.encoding import Payload, encode_dense, encode_sparse


class Identity:
    name, alpha, omega = "identity", 1.0, 0.0

    def __init__(self, cfg: CompressionConfig):
        self.cfg = cfg
        self.last_kept = 0

    def compress(self, x: torch.Tensor) -> Payload:
        self.last_kept = x.numel()
        return encode_dense(x, self.cfg.values)


class TopK(Identity):
    name = "topk"

    def compress(self, x: torch.Tensor) -> Payload:
        d = x.numel()
        k = self.cfg.k or max(1, int(self.cfg.ratio * d))
        mag = x.abs()
        thr = torch.topk(mag, k, sorted=False).values.min()
        above = torch.nonzero(mag > thr).squeeze(1)
        ties = torch.nonzero(mag == thr).squeeze(1)[: k - above.numel()]
        idx = torch.sort(torch.cat([above, ties])).values
        self.last_kept = k
        return encode_sparse(idx, x[idx].float(), d, self.cfg.values, self.cfg.indices)


def make_compressor(cfg: CompressionConfig, layout, seed: int):
    return {"identity": Identity, "topk": TopK}[cfg.compressor](cfg)
