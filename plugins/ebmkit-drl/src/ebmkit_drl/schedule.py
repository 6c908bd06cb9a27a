"""The noise levels of diffusion recovery likelihood (Gao, Song, Poole, Wu & Kingma, ICLR 2021).

The forward process (the paper's eq. 1) adds Gaussian noise level by level::

    x_{i} = a_i · x_{i−1} + σ_i · ε_i,        a_i = sqrt(1 − σ_i²),   ε_i ~ N(0, I)

starting from the data (``x_{−1}``). Level ``t`` (``0 … T−1``) has its own energy ``U(x, t)``
(one network, the level embedded), the energy of the marginal ``q(x_t)``; ``x_T`` is practically
pure noise. So the marginal of level ``t`` is ``x_t = ᾱ_t·x + σ̄_t·ε`` with ``ᾱ_t = Π_{i≤t} a_i``
and ``σ̄_t = sqrt(1 − ᾱ_t²)``.

**The σ schedule** is the paper's (its code's ``get_sigma_schedule``): DDPM's linear β schedule
over 1,000 steps (``beta_start`` 1e-4 to ``beta_end`` 0.02) cut into segments, each level's
``a_i`` the product of ``sqrt(1 − β)`` over its segment. Level 0 is the first DDPM step alone
(``σ_0 = sqrt(β_1) = 0.01``: the data with a trace of noise), levels ``1 … T−1`` split the first
half of the 1,000 steps evenly, and the last segment runs to step 1,000, where
``ᾱ ≈ 0.006``: ``x_T`` is N(0, I) to within 0.01 %.

**The recovery conditional** of level ``t < T−1``, from Bayes' rule with
``q(x_{t+1} | x_t) = N(a·x_t, σ² I)`` (``a, σ`` of level ``t+1``)::

    p(x_t | x_{t+1}) ∝ exp(−U(x_t, t) − a²‖x_t − x̃‖² / (2σ²)),    x̃ = x_{t+1} / a

(the paper writes it for ``y = a·x_t``, where the quadratic is ``‖y − x_{t+1}‖² / (2σ²)``; the
two are the same law). Its precision ``a²/σ²`` is :attr:`DiffusionSchedule.precision`, its
centre's scale ``1/a`` :attr:`DiffusionSchedule.centre_scale`. The top level ``T−1`` has no
quadratic, as in the paper's code: ``x_T`` is pure noise, so its EBM is the marginal of
``x_{T−1}``, sampled from ``x_T`` itself.

**Step sizes** (the paper's code): ``s_t² = b² · (σ̄_t / σ̄_0) · σ_{t+1}²`` with ``b² = 2e-4``
(``step_b2``). The network's output is divided by ``s_t²`` (the paper's ``f = g / s_t²``), so one
Langevin step ``x ← x − (s²/2)·∇U + s·z`` moves by half the network's gradient at every level.
**Loss weights** (the paper's code): level ``t`` weighted by ``σ_1 / σ_{t+1}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from ebmkit import randn_like_on
from torch import Tensor, nn

DDPM_STEPS = 1000
MAX_LEVELS = 100


@dataclass(frozen=True)
class DiffusionSchedule:
    """The noise levels, step sizes and loss weights of a noise-conditional energy (float64).

    ``levels`` = T energies (levels ``0 … T−1``); the tables below are ``[T + 1]`` (``sigma``,
    ``alpha``, ``alpha_bar``, ``sigma_bar``: index ``i`` is level ``i``'s step from ``i − 1``,
    ``T`` the final step to noise) or ``[T]`` (per level: everything the recovery conditional of
    level ``t`` needs).

    Tables (float64 tensors, set at construction): ``sigma`` ``[T+1]`` σ_i; ``alpha`` ``[T+1]``
    ``a_i = sqrt(1 − σ_i²)``; ``alpha_bar`` ``[T+1]`` ``ᾱ_i = Π a``; ``sigma_bar`` ``[T+1]``
    ``sqrt(1 − ᾱ_i²)``; ``step_var`` ``[T]`` ``s_t²``; ``precision`` ``[T]``
    ``a_{t+1}²/σ_{t+1}²`` (0 at the top); ``centre_scale`` ``[T]`` ``1/a_{t+1}`` (1 at the top);
    ``weight`` ``[T]`` ``σ_1/σ_{t+1}``.
    """

    levels: int = 6
    beta_start: float = 1e-4
    beta_end: float = 0.02
    step_b2: float = 2e-4

    def __post_init__(self):
        if not 1 <= int(self.levels) <= MAX_LEVELS:
            raise ValueError(f"levels must be in 1 .. {MAX_LEVELS}, got {self.levels}")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start <= beta_end < 1; got beta_start = "
                             f"{self.beta_start}, beta_end = {self.beta_end}")
        if not self.step_b2 > 0:
            raise ValueError(f"step_b2 must be > 0, got {self.step_b2}")
        t = int(self.levels)
        betas = torch.linspace(self.beta_start, self.beta_end, DDPM_STEPS, dtype=torch.float64)
        log_a = 0.5 * torch.log1p(-betas)  # log sqrt(1 - beta) per DDPM step
        # the segment ends (inclusive): step 0 alone, then T-1 even cuts of the first half, then
        # the rest up to the last step (the paper's code: idx = [0, k, 2k, ...] + [999])
        if t == 1:
            ends = [0, DDPM_STEPS - 1]
        else:
            k = DDPM_STEPS // (2 * (t - 1))
            ends = [i * k for i in range(t)] + [DDPM_STEPS - 1]
        starts = [0] + [e + 1 for e in ends[:-1]]
        alpha = torch.stack([log_a[s:e + 1].sum() for s, e in zip(starts, ends, strict=True)]).exp()
        sigma = (1 - alpha.square()).sqrt()
        alpha_bar = alpha.cumprod(0)
        sigma_bar = (1 - alpha_bar.square()).sqrt()
        c = sigma_bar[:t] / sigma_bar[0]
        step_var = self.step_b2 * c * sigma[1:].square()
        precision = alpha[1:].square() / sigma[1:].square()
        precision[t - 1] = 0.0  # the top level: the marginal, no recovery term
        centre_scale = 1 / alpha[1:]
        centre_scale[t - 1] = 1.0
        weight = sigma[1] / sigma[1:]
        tables = {"sigma": sigma, "alpha": alpha, "alpha_bar": alpha_bar, "sigma_bar": sigma_bar,
                  "step_var": step_var, "precision": precision, "centre_scale": centre_scale,
                  "weight": weight}
        for name, value in tables.items():
            object.__setattr__(self, name, value)

    @classmethod
    def of(cls, config) -> DiffusionSchedule:
        """The schedule a noise-conditional energy's config describes."""
        return cls(levels=int(config.levels), beta_start=float(config.beta_start),
                   beta_end=float(config.beta_end), step_b2=float(config.step_b2))

    def describe(self) -> str:
        s = ", ".join(f"{float(v):.3g}" for v in self.sigma)
        return f"T = {self.levels}: sigma = [{s}]"


#: the per-level tables a :class:`DiffusionBuffers` holds as buffers (``[T]`` each)
LEVEL_TABLES = ("alpha_bar", "sigma_bar", "alpha_next", "sigma_next", "step_var", "precision",
                "centre_scale", "weight")


class DiffusionBuffers(nn.Module):
    """A schedule's per-level tables as non-persistent buffers of a noise-conditional energy:
    they follow the energy's device and dtype (``.to``, ``.double()``), are rebuilt from the
    config (never saved in the state dict), and are what the objective and the sampler read.

    ``alpha_bar[t]``, ``sigma_bar[t]``: the marginal ``x_t = ᾱ_t·x + σ̄_t·ε``; ``alpha_next[t]``,
    ``sigma_next[t]``: the step ``x_{t+1} = a·x_t + σ·ε``; ``step_var[t]`` = ``s_t²``;
    ``precision[t]``, ``centre_scale[t]``: the recovery term ``precision/2 · ‖x − centre_scale ·
    x_{t+1}‖²``; ``weight[t]``: the loss weight ``σ_1 / σ_{t+1}``.
    """

    def __init__(self, schedule: DiffusionSchedule):
        super().__init__()
        self.schedule = schedule
        t = schedule.levels
        values = {
            "alpha_bar": schedule.alpha_bar[:t], "sigma_bar": schedule.sigma_bar[:t],
            "alpha_next": schedule.alpha[1:], "sigma_next": schedule.sigma[1:],
            "step_var": schedule.step_var, "precision": schedule.precision,
            "centre_scale": schedule.centre_scale, "weight": schedule.weight,
        }
        for name in LEVEL_TABLES:
            self.register_buffer(name, values[name].to(torch.float32), persistent=False)

    @property
    def levels(self) -> int:
        return self.schedule.levels

    def at(self, name: str, t: Tensor | int, like: Tensor) -> Tensor:
        """Table ``name`` at levels ``t`` (``[B]`` int64, or one int for all), shaped to broadcast
        against ``like`` ``[B, ...]`` and in its dtype and device."""
        table = getattr(self, name)
        if isinstance(t, int):
            v = table[t]
            return v.to(device=like.device, dtype=like.dtype)
        v = table.to(like.device)[t].to(like.dtype)
        return v.view(-1, *[1] * (like.dim() - 1))


def diffuse(tables: DiffusionBuffers, x: Tensor, t: Tensor,
            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The training pair ``(x_t, x_{t+1})`` of each example of ``x`` (data ``[B, ...]``) at its
    level ``t`` ``[B]``: ``x_t = ᾱ_t·x + σ̄_t·ε``, ``x_{t+1} = a_{t+1}·x_t + σ_{t+1}·ε'``. Noise
    drawn from ``generator`` (on its device, then moved: the rules of :mod:`ebmkit.mcmc`)."""
    e1 = randn_like_on(x, generator)
    e2 = randn_like_on(x, generator)
    x_t = tables.at("alpha_bar", t, x) * x + tables.at("sigma_bar", t, x) * e1
    x_next = tables.at("alpha_next", t, x) * x_t + tables.at("sigma_next", t, x) * e2
    return x_t, x_next


def recovery_centre(tables: DiffusionBuffers, x_next: Tensor, t: Tensor | int) -> Tensor:
    """``x̃ = x_{t+1} / a_{t+1}`` (the top level: ``x_T`` itself): where the recovery term is
    centred and where the chains of level ``t`` start."""
    return x_next * tables.at("centre_scale", t, x_next)


def gaussian_step_law(mean_prec: float, precision: float, step_var: float, steps: int
                      ) -> tuple[float, float, float]:
    """One coordinate of ``steps`` unadjusted Langevin steps ``x ← x − (s²/2)·∇U + s·z`` on the
    Gaussian ``U = precision/2 · (x − m)²`` with ``m = mean_prec / precision``: the chain is
    linear, ``x_K = ρ^K·x_0 + (1 − ρ^K)·m + N(0, q)`` with ``ρ = 1 − s²·precision/2`` and
    ``q = s²(1 − ρ^{2K}) / (1 − ρ²)``. Returns ``(ρ^K, (1 − ρ^K)·m, q)``."""
    rho = 1 - step_var * precision / 2
    rk = rho**steps
    q = step_var * steps if math.isclose(rho * rho, 1.0) else step_var * (1 - rk * rk) / (1 - rho * rho)
    return rk, (1 - rk) * mean_prec / precision, q
