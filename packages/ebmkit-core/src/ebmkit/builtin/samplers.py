"""Built-in samplers: unadjusted Langevin (ULA), MH-adjusted Langevin (MALA) and HMC.

All three work on batched states of any shape ``[B, ...]`` with one independent chain per row,
target ``p(x) ∝ exp(-U(x)/T)`` and keep ``U/T`` and its gradient in the :class:`ChainState`, so

* ``langevin`` costs K energy gradients for K steps (its fused ``run`` never computes the unused
  gradient at the final state; the final energy is one forward pass),
* ``mala`` costs one gradient per step (plus one at the start),
* ``hmc`` costs L gradients per transition (plus one at the start).

MALA and HMC accept or reject per chain (Metropolis–Hastings), report acceptance per chain,
flag divergent proposals, and can adapt their step size toward a target acceptance rate during
a warm-up (dual averaging, Hoffman & Gelman 2014, Alg. 5; off by default).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..hookspecs import hookimpl
from ..interfaces import Sampler
from ..mcmc import (
    MEMORY_FORMATS,
    ChainState,
    ChainStats,
    StepInfo,
    chain_grad_norm,
    chain_sum,
    dual_averaging_state,
    dual_averaging_update,
    energy_and_grad,
    frozen,
    rand_chains,
    randn_like_on,
)
from ..params import param

_TEMPERATURE_HELP = "Temperature T: the chains sample p(x) ∝ exp(-U(x)/T)."
_MEMORY_HELP = (
    "Memory layout the chains run in. auto = channels-last for image batches on the CPU "
    "(faster oneDNN convolutions), otherwise the input's; preserve = the input's layout; "
    "channels_last = always for 4-D states. Results come back in the input's layout."
)


# --------------------------------------------------------------------------------------------
# unadjusted Langevin
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class LangevinConfig:
    steps: int = param(100, "Langevin steps K per chain (training K; `ebmkit sample --steps` overrides).", min=0)
    step_size: float | None = param(
        None,
        "Anatomy parameterisation (eq. 9): step size eps, update x <- x - (eps^2/2) dU/dx + tau*eps*z. "
        "Leave unset to use grad_coef/noise_std.",
        min=0.0, min_exclusive=True,
    )
    tau: float = param(1.0, "Noise indicator/scale tau for the eps parameterisation (0 = gradient descent).", min=0.0)
    grad_coef: float | None = param(
        None,
        "Short-run parameterisation: x <- x - grad_coef * dU/dx + noise_std * z. Default 1.0 when "
        "step_size is unset (the short-run paper's code).",
        min=0.0,
    )
    noise_std: float | None = param(None, "Short-run parameterisation noise std. Default 0.01.", min=0.0)
    temperature: float = param(1.0, _TEMPERATURE_HELP + " The gradient is divided by T.",
                               min=0.0, min_exclusive=True)
    clamp: bool = param(False, "Clamp states to [clamp_min, clamp_max] after each step (off in the papers).")
    clamp_min: float = param(-1.0, "Lower clamp bound.")
    clamp_max: float = param(1.0, "Upper clamp bound.")
    memory_format: str = param("auto", _MEMORY_HELP, choices=MEMORY_FORMATS)
    precision: str = param(
        "fp32",
        "Arithmetic of the energy's forward/backward: fp32 (the reference) or bf16 (autocast; "
        "states, noise and updates stay in the input's dtype). bf16 is ~2x faster on CPUs with "
        "AVX512-BF16/AMX and on recent GPUs; check it against fp32 for your model.",
        choices=("fp32", "bf16"),
    )

    def __post_init__(self):
        if self.step_size is not None and (self.grad_coef is not None or self.noise_std is not None):
            raise ValueError(
                "set either step_size (with tau) or grad_coef/noise_std, not both"
            )
        if self.clamp and self.clamp_min >= self.clamp_max:
            raise ValueError("clamp_min must be < clamp_max")

    @property
    def coefficients(self) -> tuple[float, float]:
        """(a, b) in x <- x - a dU/dx + b z."""
        if self.step_size is not None:
            return self.step_size**2 / 2, self.tau * self.step_size
        a = 1.0 if self.grad_coef is None else self.grad_coef
        b = 0.01 if self.noise_std is None else self.noise_std
        return a, b


def _nonfinite(energy: Tensor, grad_norm: Tensor) -> Tensor:
    """``[B]`` bool: the chain's energy or gradient norm is inf/NaN (two ``[B]`` checks: cheap)."""
    return ~(torch.isfinite(energy) & torch.isfinite(grad_norm))


def _nonfinite_states(x: Tensor) -> Tensor:
    """``[B]`` bool: some coordinate of the chain's state is inf/NaN (one pass over ``x``)."""
    ok = torch.isfinite(x)
    return ~(ok.all(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else ok)


class Langevin(Sampler):
    """``x ← x − a·∇U(x)/T + b·z`` with ``(a, b) = (ε²/2, τε)`` or ``(grad_coef, noise_std)``.

    Unadjusted: its stationary law is biased by the discretisation (see
    :meth:`gaussian_variance`). ``run`` is a fused loop with exactly K gradient evaluations and
    in-place updates; ``step`` is the explicit one-step API and gives the same chain.

    Divergence: a chain is flagged in ``ChainResult.divergent`` / ``StepInfo.divergent`` when its
    energy ``U(x_{k+1})`` or gradient norm ``‖∇U(x_k)‖`` becomes inf/NaN (each step: two checks of
    ``[B]`` vectors it computes anyway, accumulated on the device, no host sync), or its state
    does (``run``: one check of the final states; ``step``: of each new state). A non-finite
    state makes the next gradient non-finite, so ``run`` misses a non-finite intermediate state
    only where clamping turned an infinite coordinate finite.
    """

    name = "langevin"
    summary = "Unadjusted Langevin (ULA) in the (eps, tau) or (grad_coef, noise_std) parameterisation."
    Config = LangevinConfig
    exact = False

    def __init__(self, config: LangevinConfig):
        super().__init__(config)
        self.a, self.b = config.coefficients

    @property
    def grad_coef(self) -> float:
        """``a`` in ``x ← x − a·∇U/T + b·z``."""
        return self.a

    def _move(self, x: Tensor, g: Tensor, generator, noise: bool, inplace: bool) -> Tensor:
        cfg = self.config
        if inplace:
            x.add_(g, alpha=-self.a)
            if noise and self.b > 0:
                x.add_(randn_like_on(x, generator), alpha=self.b)
            if cfg.clamp:
                x.clamp_(cfg.clamp_min, cfg.clamp_max)
            return x
        x = x - self.a * g
        if noise and self.b > 0:
            x = x + self.b * randn_like_on(x, generator)
        if cfg.clamp:
            x = x.clamp(cfg.clamp_min, cfg.clamp_max)
        return x

    def _autocast(self, x: Tensor):
        if self.config.precision != "bf16":  # no autocast context at all in fp32 (any device)
            return contextlib.nullcontext()
        return torch.autocast(x.device.type, dtype=torch.bfloat16)

    def step(self, energy: nn.Module, state: ChainState, *, generator=None, noise=True,
             differentiable=False):
        gn = chain_grad_norm(state.grad.detach())
        x = self._move(state.x, state.grad, generator, noise, inplace=False)
        with self._autocast(x):
            u, g = energy_and_grad(energy, x, temperature=self.temperature,
                                   create_graph=differentiable)
        u = u.to(x.dtype)
        divergent = _nonfinite(u.detach(), gn) | _nonfinite_states(x.detach())
        return ChainState(x=x, energy=u, grad=g), StepInfo(grad_norm=gn, energy=u,
                                                           divergent=divergent)

    def init(self, energy: nn.Module, x0: Tensor, *, differentiable: bool = False) -> ChainState:
        with self._autocast(x0):
            state = super().init(energy, x0, differentiable=differentiable)
        state.energy = state.energy.to(x0.dtype)
        return state

    def gradient_evals(self, steps: int) -> int:
        """K: the fused loop never computes the gradient at the final state."""
        return int(steps)

    def run(self, energy: nn.Module, x0: Tensor, steps: int | None = None, *, generator=None,
            noise: bool = True, differentiable: bool = False, record: bool = False):
        """K steps with K gradient evaluations (the short-run paper's loop) and one final
        forward pass for ``U(x_K)``. ``result.state`` is ``None`` here: ``∇U(x_K)`` is never
        computed. ``differentiable=True`` falls back to the step-by-step graph-keeping loop."""
        if differentiable:
            return super().run(energy, x0, steps, generator=generator, noise=noise,
                               differentiable=True, record=record)
        steps = self.default_steps if steps is None else int(steps)
        t = self.temperature
        stats = ChainStats(x0, steps=steps, record=record)
        with frozen(energy):
            # The chains' own leaf, updated in place under no_grad; x0 is never touched.
            x = self.prepare(x0).requires_grad_(True)
            pending: Tensor | None = None  # ‖∇U(x_k)‖ waiting for U(x_{k+1}) (record mode)
            for _ in range(steps):
                with torch.enable_grad(), self._autocast(x):
                    u = energy(x)
                    if t != 1.0:
                        u = u / t
                    (g,) = torch.autograd.grad(u.sum(), x)
                u = u.to(x.dtype).detach()
                if pending is not None:
                    stats.add(StepInfo(grad_norm=pending, energy=u,
                                       divergent=_nonfinite(u, pending)))
                pending = chain_grad_norm(g)
                with torch.no_grad():
                    self._move(x, g, generator, noise, inplace=True)
            x = x.detach()
            if steps == 0:
                with self._autocast(x):
                    u, g = energy_and_grad(energy, x, temperature=t)
                u = u.to(x.dtype)
                stats.add(StepInfo(grad_norm=chain_grad_norm(g), energy=u), count=False)
            else:
                with torch.no_grad(), self._autocast(x):
                    u = energy(x)
                    u = u / t if t != 1.0 else u
                u = u.to(x.dtype)
                stats.add(StepInfo(grad_norm=pending, energy=u, divergent=_nonfinite(u, pending)))
                stats.flag(_nonfinite_states(x))
        return stats.result(self.restore_layout(x, x0), u)

    def gaussian_variance(self, variance: float, steps: int | None = None,
                          initial_variance: float = 0.0) -> float:
        """Per-coordinate variance of this chain on ``U = x²/(2σ²)`` (``σ² = variance``).

        One step is the AR(1) map ``x ← ρx + bz`` with ``ρ = 1 − a/(σ²T)``, so after K steps
        ``v_K = ρ^{2K}·v_0 + b²(1 − ρ^{2K})/(1 − ρ²)``, and ``steps=None`` gives the stationary
        ``b²/(1 − ρ²)`` (for ``(ε, τ=1)`` at T = 1: ``σ²/(1 − η/2)`` with ``η = ε²/(2σ²)``),
        which differs from the exact σ²·T: the discretisation bias. Clamping is ignored.
        """
        rho = 1.0 - self.a / (variance * self.temperature)
        if abs(rho) >= 1:
            return math.inf
        stationary = self.b**2 / (1 - rho**2)
        if steps is None:
            return stationary
        r = rho ** (2 * steps)
        return r * initial_variance + (1 - r) * stationary


# --------------------------------------------------------------------------------------------
# Metropolis-adjusted samplers
# --------------------------------------------------------------------------------------------
#: An HMC proposal whose total energy rises by more than this is flagged divergent.
_MAX_ENERGY_ERROR = 1000.0


class _Metropolis(Sampler):
    """Shared machinery of MALA and HMC: per-chain Metropolis test on a proposal, cached energy
    and gradient, divergence flags and optional dual-averaging step-size adaptation.

    Subclasses implement :meth:`propose`, returning the proposal, its ``U/T`` and gradient, and
    the log acceptance ratio without the energy difference's sign conventions to worry about.
    """

    exact = True

    @property
    def grad_coef(self) -> float:
        """Gradient coefficient ε²/2 of a proposal (of HMC's first leapfrog step), for ``r_t = a·v_t``."""
        return float(self.config.step_size) ** 2 / 2

    def init(self, energy: nn.Module, x0: Tensor, *, differentiable: bool = False) -> ChainState:
        state = super().init(energy, x0, differentiable=differentiable)
        if self.warmup_steps > 0:
            state.extra.update(dual_averaging_state(self.config.step_size, x0.device))
        return state

    def _step_size(self, state: ChainState, x: Tensor) -> float | Tensor:
        eps = state.extra.get("step_size")
        return float(self.config.step_size) if eps is None else eps.to(x.dtype)

    def propose(self, energy, state, eps, generator, noise, differentiable):
        """Return ``(y, U(y)/T, ∇U(y)/T, log α, divergent)`` for a proposal from ``state``."""
        raise NotImplementedError

    def step(self, energy: nn.Module, state: ChainState, *, generator=None, noise=True,
             differentiable=False):
        x = state.x
        gn = chain_grad_norm(state.grad.detach())
        eps = self._step_size(state, x)
        y, u_y, g_y, log_alpha, divergent = self.propose(
            energy, state, eps, generator, noise, differentiable)
        finite = torch.isfinite(log_alpha) & torch.isfinite(u_y)
        divergent = divergent | ~finite
        log_alpha = torch.where(finite, log_alpha, torch.full_like(log_alpha, -math.inf))
        accept_prob = log_alpha.detach().clamp(max=0.0).exp()
        if noise:
            accepted = rand_chains(x, generator) < accept_prob
        else:  # the deterministic map: every finite proposal is taken
            accepted = finite
        shape = (-1,) + (1,) * (x.ndim - 1)
        m = accepted.view(shape)
        new = ChainState(
            x=torch.where(m, y, x),
            energy=torch.where(accepted, u_y, state.energy),
            grad=torch.where(m, g_y, state.grad),
            extra=dict(state.extra),
        )
        if "da_m" in state.extra:
            self._adapt(new.extra, accept_prob)
        info = StepInfo(grad_norm=gn, energy=new.energy, accepted=accepted,
                        accept_prob=accept_prob, divergent=divergent)
        return new, info

    def _adapt(self, extra: dict[str, Tensor], accept_prob: Tensor) -> None:
        """One dual-averaging update on the device (no host sync), during the warm-up only;
        afterwards the step size is frozen at the averaged iterate ``ε̄``."""
        dual_averaging_update(extra, accept_prob, target=self.config.target_accept,
                              warmup=self.warmup_steps)


def _mh_params(step_default: float, target: float, target_help: str) -> dict:
    return dict(
        steps=param(100, "Transitions K per chain (training K; `ebmkit sample --steps` overrides).", min=0),
        step_size=param(step_default, "Step size eps of the proposal (anatomy eq. 9 with tau = 1).",
                        min=0.0, min_exclusive=True),
        temperature=param(1.0, _TEMPERATURE_HELP, min=0.0, min_exclusive=True),
        adapt_steps=param(0, "Warm-up transitions that adapt step_size toward target_accept by dual "
                             "averaging (0 = off). Acceptance is reported over the later steps.",
                          min=0),
        target_accept=param(target, target_help, min=0.0, max=1.0, min_exclusive=True),
        memory_format=param("auto", _MEMORY_HELP, choices=MEMORY_FORMATS),
    )


_MALA = _mh_params(0.015, 0.574, "Acceptance rate the warm-up aims for (0.574 is optimal for MALA "
                                 "in high dimension, Roberts & Rosenthal 1998).")


@dataclass(frozen=True, kw_only=True)
class MALAConfig:
    steps: int = _MALA["steps"]
    step_size: float = _MALA["step_size"]
    temperature: float = _MALA["temperature"]
    adapt_steps: int = _MALA["adapt_steps"]
    target_accept: float = _MALA["target_accept"]
    memory_format: str = _MALA["memory_format"]


class MALA(_Metropolis):
    """Proposal ``y = x − (ε²/2)∇U(x)/T + ε z``, accepted with probability
    ``min(1, π(y) q(x|y) / (π(x) q(y|x)))``. One gradient per step: ``∇U(y)`` is needed for
    ``q(x|y)`` and becomes the cached gradient when ``y`` is accepted."""

    name = "mala"
    summary = "Metropolis-adjusted Langevin: exact for exp(-U/T), one energy gradient per step."
    Config = MALAConfig

    def propose(self, energy, state, eps, generator, noise, differentiable):
        x, g_x, u_x = state.x, state.grad, state.energy
        a = eps * eps / 2
        y = x - a * g_x
        if noise:
            z = randn_like_on(x, generator)
            y = y + eps * z
        u_y, g_y = energy_and_grad(energy, y, temperature=self.temperature,
                                   create_graph=differentiable)
        # log q(x'|x) = -|x' - x + a∇U(x)|² / (2ε²); forward residual is ε z.
        fwd = chain_sum((y - x + a * g_x).square())
        bwd = chain_sum((x - y + a * g_y).square())
        log_alpha = (u_x - u_y) + (fwd - bwd) / (2 * eps * eps)
        divergent = torch.zeros_like(u_y, dtype=torch.bool)
        return y, u_y, g_y, log_alpha, divergent


_HMC = _mh_params(0.015, 0.65, "Acceptance rate the warm-up aims for (0.65 is optimal for HMC in "
                               "high dimension, Beskos et al. 2013).")


@dataclass(frozen=True, kw_only=True)
class HMCConfig:
    steps: int = param(20, "Transitions K per chain; each costs leapfrog_steps gradients "
                           "(default 20 x 5 = the gradient budget of 100 Langevin steps).", min=0)
    step_size: float = _HMC["step_size"]
    leapfrog_steps: int = param(5, "Leapfrog steps L per transition (L = 1 is MALA).", min=1)
    step_jitter: float = param(
        0.0,
        "Draw each chain's step size uniformly in [eps(1-j), eps(1+j)] every transition (0 = off). "
        "Breaks the periodic orbits a fixed eps*L can fall into (e.g. eps=1, L=3 on N(0,1)).",
        min=0.0, max=0.99)
    temperature: float = _HMC["temperature"]
    adapt_steps: int = _HMC["adapt_steps"]
    target_accept: float = _HMC["target_accept"]
    memory_format: str = _HMC["memory_format"]


class HMC(_Metropolis):
    """Hamiltonian Monte Carlo: momentum ``p ~ N(0, I)``, L leapfrog steps of size ε on
    ``H = U/T + |p|²/2``, Metropolis test on ``H``. L gradients per transition (the one at the
    start is cached). ``noise=False`` starts from zero momentum and takes every proposal."""

    name = "hmc"
    summary = "Hamiltonian Monte Carlo (leapfrog, Gaussian momentum, Metropolis test): L gradients per transition."
    Config = HMCConfig

    def gradient_evals(self, steps: int) -> int:
        """L per transition, plus one at the start."""
        return int(steps) * int(self.config.leapfrog_steps) + 1

    def propose(self, energy, state, eps, generator, noise, differentiable):
        x, g, u_x = state.x, state.grad, state.energy
        t = self.temperature
        p0 = randn_like_on(x, generator) if noise else torch.zeros_like(x)
        j = float(self.config.step_jitter)
        if noise and j > 0:  # per-chain step size, drawn independently of the state
            r = rand_chains(x, generator)
            eps = (eps * (1 + j * (2 * r - 1))).view((-1,) + (1,) * (x.ndim - 1))
        h0 = u_x + 0.5 * chain_sum(p0.square())
        p = p0 - (eps / 2) * g
        y = x
        for i in range(self.config.leapfrog_steps):
            y = y + eps * p
            u, g = energy_and_grad(energy, y, temperature=t, create_graph=differentiable)
            last = i == self.config.leapfrog_steps - 1
            p = p - (eps / 2 if last else eps) * g
        h1 = u + 0.5 * chain_sum(p.square())
        log_alpha = h0 - h1
        divergent = (h1 - h0).detach() > _MAX_ENERGY_ERROR
        return y, u, g, log_alpha, divergent


@hookimpl
def ebmkit_register(register):
    register(Langevin)
    register(MALA)
    register(HMC)
