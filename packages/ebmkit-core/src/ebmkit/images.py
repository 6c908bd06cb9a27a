"""Image grids as PNG (Pillow only; torchvision is optional)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def make_grid(x: Tensor, *, nrow: int | None = None, pad: int = 2, lo: float = -1.0,
              hi: float = 1.0) -> np.ndarray:
    """``[N, C, H, W]`` in ``[lo, hi]`` -> uint8 ``[H', W', C]`` with C in {1, 3}."""
    x = x.detach().float().cpu()
    if x.dim() != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if c not in (1, 3):
        x, c = x[:, :1], 1
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = int(math.ceil(n / nrow))
    x = ((x.clamp(lo, hi) - lo) / (hi - lo) * 255).round().to(torch.uint8)
    grid = torch.full((c, ncol * (h + pad) + pad, nrow * (w + pad) + pad), 255, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top : top + h, left : left + w] = x[i]
    return grid.permute(1, 2, 0).numpy()


def save_grid(x: Tensor, path: str | Path, *, nrow: int | None = None, scale: int = 1) -> Path:
    """Write a sample grid as PNG. ``scale`` enlarges small images (nearest neighbour)."""
    from PIL import Image

    arr = make_grid(x, nrow=nrow)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
