"""Image tensors: conversion to the model range ``[-1, 1]`` and grids as PNG (Pillow only;
torchvision is optional)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError, DataError


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
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give an image file name, e.g. {path / 'grid.png'}")
    if path.suffix.lower() not in Image.registered_extensions():
        raise ConfigError(f"{path}: unknown image extension '{path.suffix}'; use .png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror or exc}); choose another path") from None
    return path


def to_model_range(images: Tensor, *, resolution: int, channels: int) -> Tensor:
    """uint8 or [0,1] images ``[N, C, H, W]`` -> float ``[N, channels, res, res]`` in [-1, 1].

    The one place where resolution, channel count and range are handled: non-square images are
    centre-cropped to a square first (as the papers do for CelebA), then resized with
    antialiasing; grey is replicated to RGB, RGB is turned to grey by luma.
    """
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    if x.shape[1] == 4:  # RGBA: drop alpha
        x = x[:, :3]
    if x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1 and x.shape[1] == 3:
            x = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        else:
            raise DataError(f"cannot convert {x.shape[1]} channels to {channels}")
    h, w = x.shape[-2:]
    if h != w:
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        x = x[..., top : top + s, left : left + s]
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True,
                          align_corners=False)
    return (x * 2 - 1).clamp(-1, 1).contiguous()


def to_model_range_chunked(images, *, resolution: int, channels: int, chunk: int = 4096) -> Tensor:
    """:func:`to_model_range` over a large uint8 array ``[N, C, H, W]`` without a float copy of it."""
    out = [to_model_range(torch.as_tensor(images[i : i + chunk]), resolution=resolution, channels=channels)
           for i in range(0, len(images), chunk)]
    return torch.cat(out)


def pil_to_uint8(img) -> Tensor:
    """A PIL image -> uint8 ``[C, H, W]`` (C = 1 or 3). 8-bit only: deeper images are clipped;
    use :func:`pil_to_tensor` for files that may be 16-bit or floating point."""
    if img.mode not in ("L", "RGB"):
        colour = img.mode in ("P", "PA", "LA") or len(img.getbands()) >= 3  # RGBA, RGBX, CMYK, ...
        img = img.convert("RGB" if colour else "L")
    arr = np.asarray(img)
    t = torch.from_numpy(arr.copy())
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1)


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def white_level(img) -> int:
    """The value of white in a PIL image of integer mode ``I``/``I;16*``: ``2**bits - 1`` of
    the bit depth stored in the file (not of the largest pixel, which would differ per image)."""
    if img.mode in SIXTEEN_BIT_MODES:
        return 65535
    if img.format in ("PNG", "PPM"):  # PIL widens 16-bit PNG (old PIL) and PPM (maxval > 255) to 16 bits
        return 65535
    tags = getattr(img, "tag_v2", None)
    if img.format == "TIFF" and tags is not None and tags.get(339, (1,))[0] == 1:  # unsigned samples
        bits = tags.get(258, (0,))[0]
        if 8 < bits <= 32:
            return (1 << bits) - 1
    raise DataError(f"a {img.format or 'PIL'} image of mode {img.mode} has no known white level "
                    "(signed or unknown bit depth); save it as an 8- or 16-bit PNG")


def pil_to_tensor(img) -> Tensor:
    """A PIL image -> ``[C, H, W]`` (C = 1 or 3) that :func:`to_model_range` maps to [-1, 1]:
    uint8 for 8-bit images; float32 in [0, 1] for 16/32-bit integer grey (scaled by the file's
    bit depth, so 65535 is white in a 16-bit PNG) and for floating-point grey (mode ``F``, which
    must already lie in [0, 1]). PIL itself opens 16-bit RGB(A) PNGs as 8-bit RGB(A) (top byte),
    which keeps the range; those take the uint8 path."""
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        if not (np.isfinite(arr).all() and lo >= 0.0 and hi <= 1.0):
            raise DataError(f"floating-point image has values in [{lo:g}, {hi:g}], not [0, 1]; "
                            "rescale it to [0, 1] or save it as an 8- or 16-bit PNG")
        return torch.from_numpy(arr.copy())[None]
    if img.mode == "I" or img.mode in SIXTEEN_BIT_MODES:
        white = white_level(img)
        arr = np.asarray(img).astype(np.int64)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > white:
            raise DataError(f"{img.mode} image has values in [{lo}, {hi}], outside [0, {white}] of its "
                            "bit depth; save it as an 8- or 16-bit PNG")
        return (torch.from_numpy(arr.astype(np.float64)) / white).float()[None]
    return pil_to_uint8(img)
