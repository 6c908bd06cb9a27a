"""A Gaussian data distribution's true noise-conditional energy, and the closed-form laws the
tests hold the objective's chains and the progressive sampler to.

For data ``x ~ N(μ, diag v)`` the level-``t`` marginal is ``N(ᾱ_t μ, diag(ᾱ_t² v + σ̄_t²))``, so
:class:`DiffusedGaussian` is ``U(x, t)`` exactly (optionally plus a quartic term, which is no
longer the true energy but makes second derivatives vary). Every Langevin step on a Gaussian
energy is linear, so the law of a chain, and of the whole progressive sampler, is Gaussian in
closed form, discretisation and finite ``K`` included (:func:`recovery_chain_law`,
:func:`progressive_law`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .energies import levels_like
from .schedule import DiffusionBuffers, DiffusionSchedule, gaussian_step_law


class DiffusedGaussian(nn.Module):
    """The noise-conditional energy of ``N(μ, diag v)`` data: ``U(x, t) = Σ (x − ᾱ_t μ)² /
    (2 V_t)`` with ``V_t = ᾱ_t² v + σ̄_t²`` (+ ``quartic · Σ (x − ᾱ_t μ)⁴``); ``forward(x)`` is
    level 0. ``mean`` is an ``nn.Parameter`` (gradient leakage shows); ``variances`` broadcast
    against one example's shape. Not scaled by ``1/s_t²``: this is the true energy."""

    def __init__(self, variances: Sequence[float] | Tensor, mean: Sequence[float] | Tensor | float = 0.0,
                 *, schedule: DiffusionSchedule | None = None, quartic: float = 0.0):
        super().__init__()
        v = torch.as_tensor(variances, dtype=torch.float32)
        self.register_buffer("variances", v)
        self.mean = nn.Parameter(torch.as_tensor(mean, dtype=torch.float32).expand_as(v).clone())
        self.diffusion = DiffusionBuffers(schedule or DiffusionSchedule())
        self.quartic = float(quartic)

    @property
    def levels(self) -> int:
        return self.diffusion.levels

    def level_law(self, t: Tensor | int, like: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of ``q(x_t)`` broadcast against ``like`` ``[B, ...]``."""
        ab = self.diffusion.at("alpha_bar", t, like)
        sb = self.diffusion.at("sigma_bar", t, like)
        return ab * self.mean, ab.square() * self.variances + sb.square()

    def forward(self, x: Tensor, t: Tensor | int | None = None) -> Tensor:
        t = levels_like(x, 0 if t is None else t)
        m, var = self.level_law(t, x)
        d = x - m
        u = d.square() / (2 * var)
        if self.quartic:
            u = u + self.quartic * d.pow(4)
        return u.flatten(1).sum(1)


def recovery_chain_law(target: DiffusedGaussian, x_next: Tensor, t: int, steps: int
                       ) -> tuple[Tensor, Tensor]:
    """Mean ``[B, ...]`` and variance ``[...]`` per coordinate of the ``drl`` objective's chain
    at level ``t`` after ``steps`` Langevin steps from ``x̃``, given ``x_{t+1}`` ``[B, ...]``, on
    ``target`` (quartic 0): finite ``K`` and the step-size bias included."""
    tab = target.diffusion
    m, var = target.level_law(t, x_next)  # [...]: t is one level
    prec, s2 = float(tab.precision[t]), float(tab.step_var[t])
    centre = x_next * float(tab.centre_scale[t])
    p = 1 / var + prec  # the recovery conditional's precision
    cond_mean = (m / var + prec * centre) / p
    rho = 1 - s2 * p / 2
    rk = rho**steps
    return rk * centre + (1 - rk) * cond_mean, s2 * (1 - rk.square()) / (1 - rho.square())


def recovery_conditional(target: DiffusedGaussian, x_next: Tensor, t: int) -> tuple[Tensor, Tensor]:
    """The exact ``p(x_t | x_{t+1})`` of ``target`` (quartic 0): mean ``[B, ...]``, variance
    ``[...]``."""
    tab = target.diffusion
    m, var = target.level_law(t, x_next)
    prec = float(tab.precision[t])
    centre = x_next * float(tab.centre_scale[t])
    p = 1 / var + prec
    return (m / var + prec * centre) / p, 1 / p


def progressive_law(target: DiffusedGaussian, steps: int, start_mean: float = 0.0,
                    start_var: float = 1.0) -> tuple[Tensor, Tensor]:
    """Mean and variance per coordinate (``[*shape]``) of ``drl-progressive``'s samples on
    ``target`` (quartic 0) with ``steps`` Langevin steps per level, from ``x_T ~ N(start_mean,
    start_var)``: at each level the jump to the centre is ``x ← c_t·x`` and the ``K`` steps the
    linear map of :func:`~ebmkit_drl.schedule.gaussian_step_law`, composed from the top down."""
    tab = target.diffusion
    v = target.variances.double()
    mean = torch.full_like(v, float(start_mean))
    var = torch.full_like(v, float(start_var))
    mu = target.mean.detach().double()
    for t in reversed(range(target.levels)):
        ab, sb = float(tab.alpha_bar[t]), float(tab.sigma_bar[t])
        m_t, v_t = ab * mu, ab * ab * v + sb * sb
        prec, s2, c = float(tab.precision[t]), float(tab.step_var[t]), float(tab.centre_scale[t])
        mean, var = c * mean, c * c * var  # the jump to the centre
        new_mean, new_var = torch.empty_like(v), torch.empty_like(v)
        for i in range(v.numel()):
            p = 1 / float(v_t.flatten()[i]) + prec
            # x_K = ρ^K x + (1 − ρ^K)(m_t/V_t + prec·x)/p + N(0, q): linear in x
            rk, const, q = gaussian_step_law(float(m_t.flatten()[i] / v_t.flatten()[i]), p, s2, steps)
            slope = rk + (1 - rk) * prec / p
            new_mean.view(-1)[i] = slope * mean.view(-1)[i] + const
            new_var.view(-1)[i] = slope * slope * var.view(-1)[i] + q
        mean, var = new_mean, new_var
    return mean, var
