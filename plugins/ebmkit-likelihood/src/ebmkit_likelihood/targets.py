"""Unnormalised densities ``exp(−U)`` whose ``log Z`` is known: the ground truth AIS is checked
against (the tests, ``tools/ais_table.py``).

Each target is an ``nn.Module`` energy ``U: [B, D] -> [B]`` with

* ``log_z`` — the truth: closed form (Gaussians, the truncated Gaussian, the mixtures, the rings'
  radial integral), and for the 2-D toys also :func:`grid_log_z` (a fine Riemann sum, which for
  a smooth density that vanishes at the grid's edge is accurate to far below AIS's noise);
* ``prior`` — a :class:`~ebmkit.Prior` to anneal from (a box for the truncated Gaussian, whose
  normaliser is over the box; Gaussians covering the target otherwise);
* ``sample(n, generator=)`` — exact draws from ``exp(−U)/Z`` (on the prior's support): the
  starts of reverse AIS when the bound must be exact.

An additive constant ``offset`` in ``U`` shifts ``log Z`` by ``−offset``, so no truth is 0 by
accident.
"""

from __future__ import annotations

import math

import torch
from ebmkit import Prior
from torch import Tensor, nn

__all__ = [
    "GaussianTarget", "MixtureTarget", "RingsTarget", "Target", "TruncatedGaussianTarget",
    "gaussian_target", "grid_log_z", "mixture_1d", "ring8", "rings",
]

LOG_2PI = math.log(2 * math.pi)


class Target(nn.Module):
    """An energy with a known normaliser (see the module docstring)."""

    name: str = ""
    log_z: float
    prior: Prior

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.prior.shape)

    @property
    def dim(self) -> int:
        return int(math.prod(self.prior.shape))

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
class GaussianTarget(Target):
    """``U(x) = ½ (x − μ)ᵀ Σ⁻¹ (x − μ) + offset`` with ``Σ = R diag(λ) Rᵀ``:
    ``log Z = (D/2) log 2π + ½ Σ log λ − offset``."""

    def __init__(self, mean: Tensor, variances: Tensor, rotation: Tensor, *, offset: float = 0.0,
                 prior_std: float = 1.0, name: str = "gaussian"):
        super().__init__()
        d = mean.numel()
        self.name = name
        self.register_buffer("mean", mean.double().reshape(d).float())
        self.register_buffer("inv_var", (1.0 / variances.double()).float())
        self.register_buffer("rotation", rotation.float())
        self._var = variances.double()
        self._rot = rotation.double()
        self._mean = mean.double().reshape(d)
        self.offset = float(offset)
        self.log_z = 0.5 * d * LOG_2PI + 0.5 * float(variances.double().log().sum()) - self.offset
        self.prior = Prior((d,), "gaussian", mean=0.0, std=float(prior_std))
        self.condition = float(variances.max() / variances.min())

    def forward(self, x: Tensor) -> Tensor:
        y = (x - self.mean) @ self.rotation
        return 0.5 * (y.square() * self.inv_var).sum(dim=1) + self.offset

    def sample(self, n, *, generator=None):
        z = torch.randn(n, self._mean.numel(), generator=generator, dtype=torch.float64)
        return (self._mean + (z * self._var.sqrt()) @ self._rot.T).float()


def gaussian_target(dim: int, condition: float = 1.0, *, seed: int = 0, max_var: float = 1.0,
                    offset: float = 2.0, prior_std: float | None = None) -> GaussianTarget:
    """A Gaussian in ``dim`` dimensions whose covariance has condition number ``condition``:
    variances log-spaced in ``[max_var/condition, max_var]``, a random rotation and a random
    mean (seeded), ``U`` shifted by ``offset``. The prior is ``N(0, prior_std²)`` (default
    ``√max_var``: as wide as the target's widest direction, wider than the others)."""
    g = torch.Generator().manual_seed(seed)
    var = torch.logspace(math.log10(max_var / condition), math.log10(max_var), dim,
                         dtype=torch.float64) if dim > 1 else torch.tensor([max_var], dtype=torch.float64)
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # a Haar rotation
    mean = 0.3 * math.sqrt(max_var) * torch.randn(dim, generator=g, dtype=torch.float64)
    std = prior_std if prior_std is not None else math.sqrt(max_var)
    return GaussianTarget(mean, var, q, offset=offset, prior_std=std,
                          name=f"gaussian D={dim} cond={condition:g}")


# --------------------------------------------------------------------------------------------
def _ndtr(x: Tensor) -> Tensor:
    return torch.special.ndtr(x)


class TruncatedGaussianTarget(Target):
    """A diagonal Gaussian times the box ``[low, high]^D`` (the uniform prior's support):
    ``log Z_box = Σᵢ log(√(2π) sᵢ (Φ((high − μᵢ)/sᵢ) − Φ((low − μᵢ)/sᵢ))) − offset``."""

    def __init__(self, mean: Tensor, std: Tensor, *, low: float = -1.0, high: float = 1.0,
                 offset: float = 0.0, name: str = "gaussian x box"):
        super().__init__()
        self.name = name
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())
        self._mean, self._std = mean.double(), std.double()
        self.low, self.high, self.offset = float(low), float(high), float(offset)
        a = _ndtr((self.low - self._mean) / self._std)
        b = _ndtr((self.high - self._mean) / self._std)
        self._a, self._b = a, b
        self.log_z = float((0.5 * LOG_2PI + self._std.log() + (b - a).log()).sum()) - self.offset
        self.prior = Prior((mean.numel(),), "uniform", low=self.low, high=self.high)

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * ((x - self.mean) / self.std).square().sum(dim=1) + self.offset

    def sample(self, n, *, generator=None):
        u = torch.rand(n, self._mean.numel(), generator=generator, dtype=torch.float64)
        p = self._a + u * (self._b - self._a)
        x = self._mean + self._std * torch.special.ndtri(p)
        return x.clamp(self.low, self.high).float()


# --------------------------------------------------------------------------------------------
class MixtureTarget(Target):
    """``U(x) = −log Σ_k a_k exp(−|x − μ_k|² / (2 s_k²)) + offset`` (isotropic components):
    ``log Z = log Σ_k a_k (2π s_k²)^{D/2} − offset``."""

    def __init__(self, means: Tensor, stds: Tensor, amplitudes: Tensor, *, offset: float = 0.0,
                 prior_std: float = 1.0, name: str = "mixture"):
        super().__init__()
        means = means.double()
        if means.ndim == 1:
            means = means[:, None]
        self.name = name
        k, d = means.shape
        self.register_buffer("means", means.float())
        self.register_buffer("log_amp", amplitudes.double().log().float())
        self.register_buffer("var", stds.double().square().float())
        self._means, self._stds, self._amp = means, stds.double(), amplitudes.double()
        self.offset = float(offset)
        self.log_z = float(torch.logsumexp(self._amp.log() + d * (0.5 * LOG_2PI + self._stds.log()),
                                           dim=0)) - self.offset
        self.prior = Prior((d,), "gaussian", mean=0.0, std=float(prior_std))

    def forward(self, x: Tensor) -> Tensor:
        d2 = (x[:, None, :] - self.means[None]).square().sum(dim=2)  # [B, K]
        return -torch.logsumexp(self.log_amp - d2 / (2 * self.var), dim=1) + self.offset

    def sample(self, n, *, generator=None):
        k, d = self._means.shape
        w = self._amp * self._stds.pow(d)
        comp = torch.multinomial(w / w.sum(), n, replacement=True, generator=generator)
        z = torch.randn(n, d, generator=generator, dtype=torch.float64)
        return (self._means[comp] + self._stds[comp, None] * z).float()


def mixture_1d(*, offset: float = 1.0) -> MixtureTarget:
    """Two well-separated 1-D modes of different widths and masses (0.25·N(−2, 0.3²) +
    0.75·N(1.5, 0.6²) up to scale); prior ``N(0, 2²)``."""
    stds = torch.tensor([0.3, 0.6], dtype=torch.float64)
    mass = torch.tensor([0.25, 0.75], dtype=torch.float64)
    amp = mass / stds  # a_k (2π)^{1/2} s_k ∝ mass
    return MixtureTarget(torch.tensor([-2.0, 1.5]), stds, 3.0 * amp, offset=offset, prior_std=2.0,
                         name="mixture 1-D")


def ring8(*, radius: float = 1.0, sd: float = 0.15, offset: float = -1.0) -> MixtureTarget:
    """Eight equal Gaussians (sd 0.15) on a circle of radius 1 (anatomy Fig. 6's ``gmm2d``);
    prior ``N(0, 1.5²)``."""
    angle = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    return MixtureTarget(means, torch.full((8,), sd, dtype=torch.float64),
                         torch.ones(8, dtype=torch.float64), offset=offset, prior_std=1.5,
                         name="8-mode ring")


# --------------------------------------------------------------------------------------------
class RingsTarget(Target):
    """Concentric rings: ``U(x) = −log Σ_k exp(−(|x| − k·r)² / (2 s²)) + offset``, ``k = 1..K``
    (anatomy Fig. 6's ``rings2d`` shape). In polar coordinates
    ``Z = 2π Σ_k ∫₀^∞ ρ exp(−(ρ − μ_k)²/(2s²)) dρ = 2π Σ_k [s² e^{−μ_k²/(2s²)} + μ_k s √(2π) Φ(μ_k/s)]``
    (closed form); exact samples invert the radial CDF (bisection, float64)."""

    def __init__(self, rings: int = 4, radius: float = 1.0, sd: float = 0.15, *,
                 offset: float = 0.5, prior_std: float = 3.0):
        super().__init__()
        self.name = f"{rings} rings"
        self._mu = radius * torch.arange(1, rings + 1, dtype=torch.float64)
        self.register_buffer("mu", self._mu.float())
        self.sd, self.offset = float(sd), float(offset)
        s = self.sd
        self._zk = (s * s * torch.exp(-self._mu.square() / (2 * s * s))
                    + self._mu * s * math.sqrt(2 * math.pi) * _ndtr(self._mu / s))  # radial masses
        self.log_z = math.log(2 * math.pi) + float(self._zk.sum().log()) - self.offset
        self.prior = Prior((2,), "gaussian", mean=0.0, std=float(prior_std))

    def forward(self, x: Tensor) -> Tensor:
        rho = x.norm(dim=1, keepdim=True)
        return -torch.logsumexp(-(rho - self.mu).square() / (2 * self.sd**2), dim=1) + self.offset

    def _radial_cdf(self, r: Tensor, k: Tensor) -> Tensor:
        s, mu = self.sd, self._mu[k]
        part = (s * s * (torch.exp(-mu.square() / (2 * s * s)) - torch.exp(-(r - mu).square() / (2 * s * s)))
                + mu * s * math.sqrt(2 * math.pi) * (_ndtr((r - mu) / s) - _ndtr(-mu / s)))
        return part / self._zk[k]

    def sample(self, n, *, generator=None):
        comp = torch.multinomial(self._zk / self._zk.sum(), n, replacement=True, generator=generator)
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        lo = torch.zeros(n, dtype=torch.float64)
        hi = self._mu[comp] + 12 * self.sd
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            below = self._radial_cdf(mid, comp) < u
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        r = 0.5 * (lo + hi)
        theta = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        return torch.stack([r * theta.cos(), r * theta.sin()], dim=1).float()


def rings(**kwargs) -> RingsTarget:
    return RingsTarget(**kwargs)


# --------------------------------------------------------------------------------------------
@torch.no_grad()
def grid_log_z(energy: nn.Module, bounds: tuple[float, float], *, dim: int = 2, points: int = 2001,
               chunk: int = 1 << 18) -> float:
    """``log ∫ exp(−U)`` over ``[lo, hi]^dim`` (``dim`` 1 or 2) by a Riemann sum on a regular
    grid of ``points`` per axis, in float64 (the energy is evaluated in float64 when it allows)."""
    lo, hi = bounds
    axis = torch.linspace(lo, hi, points, dtype=torch.float64)
    h = float(axis[1] - axis[0])
    if dim == 1:
        pts = axis[:, None]
    elif dim == 2:
        a, b = torch.meshgrid(axis, axis, indexing="ij")
        pts = torch.stack([a.reshape(-1), b.reshape(-1)], dim=1)
    else:
        raise ValueError("grid_log_z integrates 1-D and 2-D energies")
    e64 = _as_double(energy)
    neg_u = torch.cat([-e64(pts[i:i + chunk]).double() for i in range(0, pts.shape[0], chunk)])
    return float(torch.logsumexp(neg_u, dim=0)) + dim * math.log(h)


def _as_double(energy: nn.Module):
    import copy

    try:
        e = copy.deepcopy(energy).double()
    except Exception:  # pragma: no cover - a module that cannot be copied
        return lambda x: energy(x.float())
    return e
