"""Toy densities with exact log-densities (the papers' 1-D and 2-D experiments), (datasets).

The reproduction that trains on them is :mod:`ebmkit.reproductions.toy` (``ebmkit toy``).

The 2-D sets are those of the anatomy paper's Figure 6 (configs ``gmm_*.json`` and
``rings_*.json`` of its code): eight Gaussians with sd 0.15 on a circle of radius 1, and four
rings of radius 1, 2, 3, 4 with radial sd 0.15. The 1-D set is a two-component mixture on
``[-1, 1]`` in the spirit of the short-run paper's App. 7.7. Each source draws a fixed number of
points with a fixed seed (``open``) and knows its exact normalised ``log_density`` and a box
``bounds`` that holds practically all of its mass (the evaluators' grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from ..hookspecs import hookimpl
from ..interfaces import DataSource
from ..params import param

LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True, kw_only=True)
class ToyConfig:
    n: int = param(50_000, "Points drawn for the training set (fixed seed).", min=1)
    seed: int = param(0, "Seed of the draw; split 'test' uses seed + 1.")


class ToySource(DataSource):
    """A toy density: draws points with a fixed seed and knows its exact log-density."""

    Config = ToyConfig
    dim: int = 2

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.dim,)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact samples ``[n, D]`` (float32, CPU)."""
        raise NotImplementedError

    @property
    def bounds(self) -> tuple[float, float]:
        """``(lo, hi)``: the square / interval the evaluators' grid covers (same on every axis)."""
        raise NotImplementedError

    def open(self, *, split: str = "train") -> TensorDataset:
        seed = self.config.seed + (0 if split == "train" else 1)
        g = torch.Generator().manual_seed(seed)
        return TensorDataset(self.sample(self.config.n, generator=g))


def _normal_logpdf(x: Tensor, mean: Tensor | float, sd: float) -> Tensor:
    return -0.5 * ((x - mean) / sd) ** 2 - math.log(sd) - 0.5 * LOG_2PI


# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class GMM2DConfig(ToyConfig):
    groups: int = param(8, "Number of equally weighted Gaussians, evenly spaced on the circle.", min=1)
    radius: float = param(1.0, "Radius of the circle of means.", min=0.0)
    sd: float = param(0.15, "Standard deviation of each Gaussian (isotropic).", min=0.0,
                      min_exclusive=True)


class GMM2D(ToySource):
    name = "gmm2d"
    summary = "Toy: 8 Gaussians (sd 0.15) on a circle of radius 1 (anatomy Fig. 6), exact density."
    Config = GMM2DConfig
    dim = 2

    @property
    def means(self) -> Tensor:
        k = self.config.groups
        angle = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
        return self.config.radius * torch.stack([angle.cos(), angle.sin()], dim=1)

    @property
    def bounds(self):
        r = self.config.radius + 4 * self.config.sd
        return (-r, r)

    def sample(self, n, *, generator=None):
        c = self.config
        comp = torch.randint(0, c.groups, (n,), generator=generator)
        z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return (self.means[comp] + c.sd * z).float()

    def log_density(self, x):
        c = self.config
        xd = x.detach().double().reshape(-1, 2)
        d2 = torch.cdist(xd, self.means.to(xd.device)) ** 2  # [B, K]
        log_comp = -d2 / (2 * c.sd**2) - 2 * math.log(c.sd) - LOG_2PI
        return (torch.logsumexp(log_comp, dim=1) - math.log(c.groups)).to(x.dtype)


# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Rings2DConfig(ToyConfig):
    rings: int = param(4, "Number of equally weighted rings, at radius k * radius, k = 1..rings.", min=1)
    radius: float = param(1.0, "Radius of the innermost ring (and the spacing).", min=0.0,
                          min_exclusive=True)
    sd: float = param(0.15, "Radial standard deviation of each ring.", min=0.0, min_exclusive=True)


class Rings2D(ToySource):
    """Radius ``r ~ N(k·radius, sd²)``, angle uniform, ``x = r (cos θ, sin θ)``.

    The exact density of that draw: ``|x| = |r|`` is a folded normal, so
    ``p(x) = Σ_k w_k [N(|x|; μ_k, sd) + N(|x|; -μ_k, sd)] / (2π|x|)``.
    """

    name = "rings2d"
    summary = "Toy: 4 concentric rings (radial sd 0.15) at radius 1..4 (anatomy Fig. 6), exact density."
    Config = Rings2DConfig
    dim = 2

    @property
    def bounds(self):
        r = self.config.rings * self.config.radius + 4 * self.config.sd
        return (-r, r)

    def sample(self, n, *, generator=None):
        c = self.config
        ring = torch.randint(1, c.rings + 1, (n,), generator=generator).double()
        r = ring * c.radius + c.sd * torch.randn(n, generator=generator, dtype=torch.float64)
        theta = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        return torch.stack([r * theta.cos(), r * theta.sin()], dim=1).float()

    def log_density(self, x):
        c = self.config
        rho = x.detach().double().reshape(-1, 2).norm(dim=1).clamp_min(1e-12)[:, None]
        mu = c.radius * torch.arange(1, c.rings + 1, dtype=torch.float64, device=rho.device)
        folded = torch.logaddexp(_normal_logpdf(rho, mu, c.sd), _normal_logpdf(rho, -mu, c.sd))
        log_radial = torch.logsumexp(folded, dim=1) - math.log(c.rings)
        return (log_radial - torch.log(2 * math.pi * rho[:, 0])).to(x.dtype)


# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class GMM1DConfig(ToyConfig):
    means: tuple[float, ...] = param((-0.5, 0.5), "Component means.")
    weights: tuple[float, ...] = param((0.3, 0.7), "Component weights (normalised to sum 1).")
    sd: float = param(0.15, "Standard deviation of every component.", min=0.0, min_exclusive=True)

    def __post_init__(self):
        if not self.means or len(self.means) != len(self.weights):
            raise ValueError("means and weights need the same, non-zero length")
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError("weights must be >= 0 with a positive sum")


class GMM1D(ToySource):
    name = "gmm1d"
    summary = "Toy: 1-D mixture of Gaussians (default 0.3·N(-0.5, 0.15²) + 0.7·N(0.5, 0.15²)), exact density."
    Config = GMM1DConfig
    dim = 1

    @property
    def _weights(self) -> Tensor:
        w = torch.tensor(self.config.weights, dtype=torch.float64)
        return w / w.sum()

    @property
    def bounds(self):
        c = self.config
        return (min(c.means) - 4 * c.sd, max(c.means) + 4 * c.sd)

    def sample(self, n, *, generator=None):
        c = self.config
        comp = torch.multinomial(self._weights, n, replacement=True, generator=generator)
        mu = torch.tensor(c.means, dtype=torch.float64)[comp]
        return (mu + c.sd * torch.randn(n, generator=generator, dtype=torch.float64))[:, None].float()

    def log_density(self, x):
        c = self.config
        xd = x.detach().double().reshape(-1, 1)
        mu = torch.tensor(c.means, dtype=torch.float64, device=xd.device)
        log_comp = _normal_logpdf(xd, mu, c.sd) + self._weights.to(xd.device).log()
        return torch.logsumexp(log_comp, dim=1).to(x.dtype)


TOY_SOURCES = (GMM2D, Rings2D, GMM1D)


@hookimpl
def ebmkit_register(register):
    for cls in TOY_SOURCES:
        register(cls)
