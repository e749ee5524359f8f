"""Training-time image augmentation as a layer: random horizontal flips and shifts of a batch (N, C, H, W).

Like nn.Dropout it acts only in training mode and draws from torch's global generator (each rank seeds its
own stream, worker/step.py), and it has no parameters or buffers, so a model with it serves, pushes and
saves exactly the parameters it would have without it. Evaluations (model.eval()) see the images as they are.
"""

from __future__ import annotations

import torch
from torch import nn


def flip_shift(images: torch.Tensor, flip: bool, shift: int) -> torch.Tensor:
    """Each image of (N, C, H, W) mirrored left-right with probability 1/2 (flip) and moved by up to `shift`
    pixels in each direction, zero-filled (pad by `shift`, then a random crop of H x W); a new tensor."""
    n, _, h, w = images.shape
    out = images
    if flip:
        mirror = torch.rand(n, device=images.device) < 0.5
        out = torch.where(mirror[:, None, None, None], images.flip(3), images)
    if shift > 0:
        padded = nn.functional.pad(out, (shift, shift, shift, shift))
        dy = torch.randint(0, 2 * shift + 1, (n,), device=images.device)
        dx = torch.randint(0, 2 * shift + 1, (n,), device=images.device)
        rows = (torch.arange(h, device=images.device)[None, :] + dy[:, None])[:, None, :, None]
        cols = (torch.arange(w, device=images.device)[None, :] + dx[:, None])[:, None, None, :]
        batch = torch.arange(n, device=images.device)[:, None, None, None]
        chans = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        out = padded[batch, chans, rows, cols]
    return out


class Augment(nn.Module):
    """flip_shift in training mode, the identity in eval mode (task.augment: flip, or flip_shift by 2 pixels)."""

    def __init__(self, flip: bool, shift: int):
        super().__init__()
        self.flip, self.shift = flip, shift

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return flip_shift(images, self.flip, self.shift) if self.training else images

    def extra_repr(self) -> str:
        return f"flip={self.flip}, shift={self.shift}"
