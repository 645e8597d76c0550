"""Data augmentation on the device, drawn per example from each member's data-order generator.

data.augment=[crop,flip]: a random crop of the image padded by data.crop_padding pixels (zeros) on
every side, and a horizontal flip with probability 1/2 (He et al. 2016's CIFAR recipe). The draws come
from the generator that also shuffles the member's data, so a vectorized member draws exactly what
its own run would, and a checkpoint (which saves that generator) resumes the same draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("crop", "flip")


class Augment:
    """Applies the chosen augmentations to a batch of raw images, [B, C, H, W] or members' [K, B, C, H, W]."""

    def __init__(self, names: Sequence[str], padding: int):
        self.flip = "flip" in names
        self.padding = padding if "crop" in names else 0

    def __call__(
        self, xb: torch.Tensor, generators: Sequence[torch.Generator], batch_size: int, part: slice | None = None
    ) -> torch.Tensor:
        """`generators[k]` draws member k's `batch_size` examples; under torchrun `part` is this
        process's slice of the global batch (every process draws the whole batch, so all agree)."""
        c, h, w = xb.shape[-3:]
        flips, dys, dxs = [], [], []
        for g in generators:  # member by member, in the order a single run draws
            if self.flip:
                flips.append(torch.rand(batch_size, generator=g, device=xb.device) < 0.5)
            if self.padding:
                offsets = torch.randint(0, 2 * self.padding + 1, (2, batch_size), generator=g, device=xb.device)
                dys.append(offsets[0])
                dxs.append(offsets[1])

        def mine(draws: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat([d if part is None else d[part] for d in draws])

        flat = xb.reshape(-1, c, h, w)
        if self.flip:
            flat = torch.where(mine(flips)[:, None, None, None], flat.flip(-1), flat)
        if self.padding:
            flat = _crop(F.pad(flat, (self.padding,) * 4), mine(dys), mine(dxs), h, w)
        return flat.reshape(xb.shape)


def _crop(padded: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Example i's h x w window at (dy[i], dx[i]) of `padded` [N, C, H', W'], by one gather."""
    n = torch.arange(len(padded), device=padded.device)[:, None, None]
    rows = (dy[:, None] + torch.arange(h, device=padded.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=padded.device))[:, None, :]
    return padded[n, :, rows, cols].permute(0, 3, 1, 2)  # advanced indices first: [N, h, w, C]
