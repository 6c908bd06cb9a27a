"""Underdamped (kinetic) Langevin dynamics with a BAOAB or OBABO splitting.

The chain evolves a position ``x`` and a momentum ``p`` (unit mass) under

    dx = p dt,    dp = -∇V(x) dt - γ p dt + √(2γ) dW,        V = U / T,

whose stationary law is ``exp(-V(x) - |p|²/2)``, so the ``x``-marginal is ``p(x) ∝ exp(-U/T)``.
(Working with ``V = U/T`` at unit temperature is the convention of :class:`ebmkit.ChainState`,
which caches ``U/T`` and its gradient; it only rescales time.) One step of length ``h`` is split
into exactly solvable pieces (Leimkuhler & Matthews, 2013):

* ``B(t)``: kick, ``p ← p − t ∇V(x)``
* ``A(t)``: drift, ``x ← x + t p``
* ``O(t)``: Ornstein–Uhlenbeck, ``p ← c p + √(1 − c²) ξ`` with ``c = exp(−γ t)``

BAOAB is ``B(h/2) A(h/2) O(h) A(h/2) B(h/2)``; OBABO is ``O(h/2) B(h/2) A(h) B(h/2) O(h/2)``.
Both cost one energy gradient per step: the closing kick's gradient is cached in the state and
reused by the next step's opening kick.

Known bias on a Gaussian target ``N(0, s²)`` per coordinate (stable for ``h < 2s``); solving the
stationary Lyapunov equation of the linear one-step map gives, for any friction γ:

* BAOAB: ``Var x = s²`` exactly, ``Var p = 1 − h²/(4s²)``;
* OBABO: ``Var x = s² / (1 − h²/(4s²))``, ``Var p = 1`` exactly.

:func:`gaussian_stationary_variance` returns these; the tests check the sampler against them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from ebmkit import ChainState, Sampler, StepInfo, chain_grad_norm, energy_and_grad, param
from torch import Tensor, nn

INTEGRATORS = ("baoab", "obabo")


@dataclass(frozen=True, kw_only=True)
class UnderdampedConfig:
    steps: int = param(100, "Integrator steps K per chain.", min=0)
    step_size: float = param(
        0.1, "Step size h of the splitting (time units of V = U/T with unit mass).",
        min=0.0, min_exclusive=True)
    friction: float = param(
        1.0, "Friction gamma: momentum keeps exp(-gamma*h) of itself per step (large = overdamped).",
        min=0.0)
    integrator: str = param(
        "baoab", "Splitting: baoab (exact position variance on Gaussians) or obabo (exact momentum"
        " variance).", choices=INTEGRATORS)
    temperature: float = param(1.0, "Temperature T: samples p(x) ∝ exp(-U(x)/T).", min=0.0,
                               min_exclusive=True)
    init_momentum: str = param(
        "zero", "Momentum at the chain start: zero (deterministic with noise off) or gaussian"
        " (drawn from N(0, 1) with the chain's generator at the first step).",
        choices=("zero", "gaussian"))


class Underdamped(Sampler):
    """Underdamped Langevin; the momentum lives in ``ChainState.extra["momentum"]``."""

    name = "underdamped"
    summary = "Underdamped (kinetic) Langevin, BAOAB/OBABO splitting; friction and step size."
    Config = UnderdampedConfig
    exact = False  # unadjusted: a step-size bias, known in closed form for Gaussians

    def __init__(self, config: UnderdampedConfig):
        super().__init__(config)
        h, gamma = config.step_size, config.friction
        self.h = h
        # O over the full step (BAOAB) or over each half step (OBABO).
        t = h if config.integrator == "baoab" else h / 2
        self.c = math.exp(-gamma * t)
        self.s = math.sqrt(max(0.0, 1.0 - self.c**2))

    def init(self, energy: nn.Module, x0: Tensor, *, differentiable: bool = False) -> ChainState:
        state = super().init(energy, x0, differentiable=differentiable)
        state.extra["momentum"] = torch.zeros_like(state.x)
        if self.config.init_momentum == "gaussian":
            state.extra["fresh"] = torch.ones((), dtype=torch.bool, device=x0.device)
        return state

    def _ou(self, p: Tensor, noise: bool, generator: torch.Generator | None) -> Tensor:
        p = self.c * p
        if noise and self.s > 0:
            p = p + self.s * torch.randn(p.shape, generator=generator, device=p.device,
                                         dtype=p.dtype)
        return p

    def step(
        self,
        energy: nn.Module,
        state: ChainState,
        *,
        generator: torch.Generator | None = None,
        noise: bool = True,
        differentiable: bool = False,
    ) -> tuple[ChainState, StepInfo]:
        h, x, g = self.h, state.x, state.grad
        p = state.extra["momentum"]
        if "fresh" in state.extra and noise:
            p = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        gn = chain_grad_norm(g.detach())
        T = self.temperature
        if self.config.integrator == "baoab":
            p = p - (h / 2) * g
            x = x + (h / 2) * p
            p = self._ou(p, noise, generator)
            x = x + (h / 2) * p
            u, g = energy_and_grad(energy, x, temperature=T, create_graph=differentiable)
            p = p - (h / 2) * g
        else:
            p = self._ou(p, noise, generator)
            p = p - (h / 2) * g
            x = x + h * p
            u, g = energy_and_grad(energy, x, temperature=T, create_graph=differentiable)
            p = p - (h / 2) * g
            p = self._ou(p, noise, generator)
        divergent = ~torch.isfinite(u)
        new = ChainState(x=x, energy=u, grad=g, extra={"momentum": p})
        return new, StepInfo(grad_norm=gn, energy=u, divergent=divergent)


def gaussian_stationary_variance(
    integrator: str, step_size: float, variance: float
) -> tuple[float, float]:
    """``(Var x, Var p)`` of the chain's stationary law on a Gaussian target ``N(0, variance)``
    (per coordinate, ``V = x²/(2·variance)``), for any friction. Raises ``ValueError`` outside
    the stability region ``step_size < 2·sqrt(variance)``."""
    r = step_size**2 / (4 * variance)
    if r >= 1:
        raise ValueError(f"step_size {step_size} is unstable for variance {variance}: need h < 2s")
    if integrator == "baoab":
        return variance, 1.0 - r
    if integrator == "obabo":
        return variance / (1.0 - r), 1.0
    raise ValueError(f"unknown integrator {integrator!r}; expected one of {INTEGRATORS}")
