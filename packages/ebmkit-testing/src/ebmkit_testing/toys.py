"""Small components the suites use as counterparts: a Gaussian energy and a Gaussian points
source. They are ordinary ebmkit components (not registered anywhere)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from ebmkit.interfaces import DataSource, Energy
from ebmkit.params import param
from torch import Tensor, nn
from torch.utils.data import TensorDataset


@dataclass(frozen=True, kw_only=True)
class GaussianEnergyConfig:
    variance: float = param(1.0, "Per-coordinate variance s^2 of the target N(mean, s^2 I).",
                            min=0.0, min_exclusive=True)
    mean: float = param(0.0, "Mean of every coordinate.")


class GaussianEnergy(Energy):
    """``U(x) = scale · |x − mean|² / (2 s²)`` with a learnable ``scale`` (initially 1), so
    ``exp(-U)`` is ``N(mean, s² I)``; any example shape."""

    name = "test-gaussian"
    summary = "Isotropic Gaussian energy with a learnable scale (conformance kit)."
    Config = GaussianEnergyConfig

    def __init__(self, config: GaussianEnergyConfig, shape: tuple[int, ...]):
        super().__init__(config, shape)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        d = (x - self.config.mean).flatten(1)
        return self.scale * d.pow(2).sum(1) / (2 * self.config.variance)


def gaussian_energy(shape: tuple[int, ...] = (2,), *, variance: float = 1.0,
                    mean: float = 0.0) -> GaussianEnergy:
    return GaussianEnergy(GaussianEnergyConfig(variance=variance, mean=mean), shape)


@dataclass(frozen=True, kw_only=True)
class GaussianPointsConfig:
    n: int = param(512, "Number of examples.", min=1)
    shape: tuple[int, ...] = param((2,), "One example's shape.")
    std: float = param(0.5, "Standard deviation (values are clamped to [-1, 1]).", min=0.0)
    seed: int = param(0, "Seed of the fixed draw.")


class GaussianPoints(DataSource):
    """A fixed draw of Gaussian examples clamped to ``[-1, 1]``, with labels 0."""

    name = "test-gaussian-points"
    summary = "Fixed Gaussian examples in [-1, 1] (conformance kit)."
    Config = GaussianPointsConfig

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.config.shape)

    def open(self, *, split: str = "train") -> TensorDataset:
        g = torch.Generator().manual_seed(self.config.seed + (split != "train"))
        x = (torch.randn((self.config.n, *self.shape), generator=g) * self.config.std).clamp(-1, 1)
        return TensorDataset(x, torch.zeros(self.config.n, dtype=torch.long))


def gaussian_points(shape: tuple[int, ...] = (2,), n: int = 512) -> GaussianPoints:
    return GaussianPoints(GaussianPointsConfig(n=n, shape=tuple(shape)))
