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

Gradient coefficient (:attr:`Underdamped.grad_coef`, for the trainer's ``r_t = a·v_t``): the
part of one step's position move that is linear in the gradient ``g = ∇V(x)`` at the step's
start. BAOAB: ``x' = x + (h/2)(1 + c) p − (1 + c)(h²/4) g + (h/2) s ξ`` with ``c = exp(−γh)``,
so ``a = (1 + c) h²/4`` — ``h²/2`` without friction (velocity Verlet, HMC's ``ε²/2``),
``h²/4`` in the overdamped limit. OBABO: ``x' = x + h(c' p + s' ξ) − (h²/2) g`` with
``c' = exp(−γh/2)``, so ``a = h²/2``. From rest (``p = 0``, the default start) with the noise
off, the first step moves ``x`` by exactly ``−a g``. The momentum also carries the earlier
steps' gradients: in a constant gradient field both splittings settle to a drift of
``(h²/2)(1 + c)/(1 − c) ≈ h/γ`` (small ``γh``) times ``g`` per step; ``a`` measures only the
current gradient's direct share.

Randomness: every draw goes through :func:`ebmkit.mcmc.randn_like_on` — on the generator's
device, in the standard layout, then moved — so a CPU generator drives chains on any device
and the same seed gives the same chain in any memory layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from ebmkit.interfaces import Sampler
from ebmkit.mcmc import ChainState, StepInfo, chain_grad_norm, energy_and_grad, randn_like_on
from ebmkit.params import param
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

    @property
    def grad_coef(self) -> float:
        """Gradient coefficient ``a`` of one step: the position moves by ``−a·∇U/T`` plus the
        momentum's and the noise's share (BAOAB ``(1 + e^{−γh}) h²/4``, OBABO ``h²/2``; the
        derivation is in the module docstring)."""
        h = self.h
        if self.config.integrator == "baoab":
            return (1.0 + self.c) * h * h / 4
        return h * h / 2

    def _ou(self, p: Tensor, noise: bool, generator: torch.Generator | None) -> Tensor:
        p = self.c * p
        if noise and self.s > 0:
            p = p + self.s * randn_like_on(p, generator)
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
            p = randn_like_on(x, generator)
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
        divergent = ~(torch.isfinite(u.detach()) & torch.isfinite(gn))
        new = ChainState(x=x, energy=u, grad=g, extra={"momentum": p})
        return new, StepInfo(grad_norm=gn, energy=u, divergent=divergent)

    # --- known bias -------------------------------------------------------------------------
    def step_map(self, variance: float) -> tuple[list[list[float]], list[list[float]]]:
        """The one-step map on a Gaussian target ``U = x²/(2σ²)`` (``σ² = variance``), per
        coordinate: ``(x, p) ← M (x, p) + noise`` with noise covariance ``Q``; returns (M, Q)."""
        w2 = 1.0 / (variance * self.temperature)  # V = U/T = x² w2 / 2
        h, c, s2 = self.h, self.c, self.s**2

        def kick(t):
            return [[1.0, 0.0], [-t * w2, 1.0]], [[0.0, 0.0], [0.0, 0.0]]

        def drift(t):
            return [[1.0, t], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]

        ou = ([[1.0, 0.0], [0.0, c]], [[0.0, 0.0], [0.0, s2]])
        if self.config.integrator == "baoab":
            parts = [kick(h / 2), drift(h / 2), ou, drift(h / 2), kick(h / 2)]
        else:
            parts = [ou, kick(h / 2), drift(h), kick(h / 2), ou]
        M, Q = [[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]
        for Mi, Qi in parts:  # compose: Σ ← Mi Σ Miᵀ + Qi
            M, Q = _mm(Mi, M), _add(_mm(_mm(Mi, Q), _t(Mi)), Qi)
        return M, Q

    def gaussian_covariance(self, variance: float, steps: int,
                            initial_variance: float = 0.0) -> list[list[float]]:
        """Covariance of ``(x, p)`` per coordinate after ``steps`` steps on ``U = x²/(2σ²)``,
        from ``x0`` with variance ``initial_variance`` and the configured initial momentum."""
        M, Q = self.step_map(variance)
        p0 = 1.0 if self.config.init_momentum == "gaussian" else 0.0
        S = [[float(initial_variance), 0.0], [0.0, p0]]
        for _ in range(int(steps)):
            S = _add(_mm(_mm(M, S), _t(M)), Q)
        return S

    def gaussian_variance(self, variance: float, steps: int | None = None,
                          initial_variance: float = 0.0) -> float:
        """Position variance on ``U = x²/(2σ²)`` after ``steps`` steps (``None``: stationary,
        :func:`gaussian_stationary_variance`); the exact law is ``σ²T``. Used by the conformance
        kit's Gaussian check. Returns ``inf`` outside the stability region ``h < 2·sqrt(σ²T)``."""
        target = variance * self.temperature
        if self.h**2 >= 4 * target:
            return math.inf
        if steps is None:
            return gaussian_stationary_variance(self.config.integrator, self.h, target)[0]
        return self.gaussian_covariance(variance, steps, initial_variance)[0][0]


def _mm(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    return [[sum(a[i][k] * b[k][j] for k in range(2)) for j in range(2)] for i in range(2)]


def _t(a: list[list[float]]) -> list[list[float]]:
    return [[a[0][0], a[1][0]], [a[0][1], a[1][1]]]


def _add(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    return [[a[i][j] + b[i][j] for j in range(2)] for i in range(2)]


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
