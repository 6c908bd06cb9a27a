"""The ``drl-progressive`` sampler: progressive sampling through the noise levels (Gao et al.
2021, §3.4 and Alg. 2).

The chain starts are ``x_T`` (Gaussian noise: the run's ``noise`` initializer with
``distribution = "gaussian"``). Level by level from the top, ``t = T−1 … 0``, the state ``x_{t+1}``
gives the recovery conditional's centre ``x̃ = x_{t+1}/a_{t+1}`` (the top level: ``x_T``
itself), the chain jumps there and takes ``K`` Langevin steps ``x ← x − (s_t²/2)·∇U_rec(x) +
s_t·z`` on ``p(x_t | x_{t+1})``; the last level's state is the sample (as in the paper's code).

``steps`` (``K``) counts the Langevin steps *per level*: ``run(energy, x0, K)`` takes ``T·K``
steps and ``T·(K+1)`` energy gradients (one at each level's start). ``K = 0`` returns ``x0``
unchanged (no gradient): the ``drl-quick`` preset's training chain, a no-op, since the ``drl``
objective runs its own chains; ``train.sample_steps`` is then the sampling ``K``.

``init`` / ``step`` are the same chain one Langevin step at a time (``K`` = the config's
``steps``; ``run`` uses its own): after ``K`` steps at a level, the next step first moves to the
level below. ``state.energy`` / ``state.grad`` are those of the recovery energy being sampled;
``run``'s ``energy`` is the sample's level-0 energy ``U(x, 0)``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from ebmkit import (
    MEMORY_FORMATS,
    ChainResult,
    ChainState,
    ChainStats,
    Sampler,
    StepInfo,
    chain_grad_norm,
    energy_and_grad,
    frozen,
    param,
    randn_like_on,
)
from torch import Tensor, nn

from .energies import noise_conditional
from .recovery import Recovery
from .schedule import recovery_centre


@dataclass(frozen=True, kw_only=True)
class ProgressiveConfig:
    steps: int = param(30, "Langevin steps K at each noise level (paper: 30; 0 = return the "
                           "starts: the training chain of the drl objective's runs).", min=0)
    memory_format: str = param("auto", "Memory layout the chains run in: auto = channels-last "
                                       "for image batches on the CPU, preserve, channels_last.",
                               choices=MEMORY_FORMATS)


class Progressive(Sampler):
    name = "drl-progressive"
    summary = ("Progressive sampling of a noise-conditional energy (diffusion recovery "
               "likelihood): from Gaussian noise, K Langevin steps on each level's recovery "
               "conditional.")
    Config = ProgressiveConfig
    exact = False

    def __init__(self, config: ProgressiveConfig):
        super().__init__(config)
        self._levels = 1  # the levels of the energy the last run sampled (gradient_evals)

    def gradient_evals(self, steps: int) -> int:
        """``T·(K+1)`` per chain for ``K`` steps per level (``T`` of the energy this sampler last
        ran on); 0 for ``K = 0``."""
        return 0 if int(steps) == 0 else self._levels * (int(steps) + 1)

    # the chain, one step at a time -------------------------------------------------------
    def _enter(self, inner: nn.Module, x: Tensor, level: int, centre: Tensor,
               differentiable: bool) -> ChainState:
        u, g = energy_and_grad(Recovery(inner, level, centre), x, create_graph=differentiable)
        return ChainState(x=x, energy=u, grad=g, extra={"level": level, "done": 0,
                                                        "centre": centre})

    def _start(self, energy: nn.Module, x0: Tensor, per_level: int,
               differentiable: bool) -> ChainState:
        inner = noise_conditional(energy, f"sampler '{self.name}'")
        x = x0 if differentiable else x0.detach()
        state = self._enter(inner, x, inner.levels - 1, x, differentiable)
        state.extra["per_level"] = int(per_level)
        return state

    def init(self, energy: nn.Module, x0: Tensor, *, differentiable: bool = False) -> ChainState:
        return self._start(energy, x0, self.default_steps, differentiable)

    def step(self, energy: nn.Module, state: ChainState, *, generator=None, noise=True,
             differentiable=False):
        inner = noise_conditional(energy, f"sampler '{self.name}'")
        extra = state.extra
        level, done, k = extra["level"], extra["done"], extra["per_level"]
        if done >= k and level > 0:  # this level's K steps are done: down to the next
            level -= 1
            centre = recovery_centre(inner.diffusion, state.x, level)
            state = self._enter(inner, centre, level, centre, differentiable)
            done = 0
        centre = state.extra["centre"]
        x, g = state.x, state.grad
        gn = chain_grad_norm(g.detach())
        s2 = inner.diffusion.at("step_var", level, x)
        x = x - 0.5 * s2 * g
        if noise:
            x = x + s2.sqrt() * randn_like_on(x, generator)
        u, g = energy_and_grad(Recovery(inner, level, centre), x, create_graph=differentiable)
        divergent = ~(torch.isfinite(u.detach()) & torch.isfinite(gn))
        new = ChainState(x=x, energy=u, grad=g, extra={"level": level, "done": done + 1,
                                                       "per_level": k, "centre": centre})
        return new, StepInfo(grad_norm=gn, energy=u.detach(), divergent=divergent)

    # the whole chain -----------------------------------------------------------------------
    def run(self, energy: nn.Module, x0: Tensor, steps: int | None = None, *, generator=None,
            noise: bool = True, differentiable: bool = False, record: bool = False) -> ChainResult:
        """``K`` (``steps``) Langevin steps at each of the energy's ``T`` levels, from ``x0``
        (``x_T``); ``energy`` of the result is ``U(x, 0)``. Nothing syncs with the host."""
        k = self.default_steps if steps is None else int(steps)
        inner = noise_conditional(energy, f"sampler '{self.name}'")
        self._levels = inner.levels
        stats = ChainStats(x0, steps=k, record=record)
        grad_ctx = contextlib.nullcontext() if differentiable else torch.no_grad()
        with contextlib.nullcontext() if differentiable else frozen(inner):
            x = self.prepare(x0, differentiable=differentiable)
            state = None
            if k > 0:
                state = self._start(energy, x, k, differentiable)
                for _ in range(inner.levels * k):
                    state, info = self.step(energy, state, generator=generator, noise=noise,
                                            differentiable=differentiable)
                    stats.add(info)
                x = state.x if differentiable else state.x.detach()
            with grad_ctx:
                u = inner(x)
            if k == 0:
                stats.add(StepInfo(grad_norm=torch.zeros(x.shape[0], device=x.device),
                                   energy=u.detach()), count=False)
            else:
                stats.flag(~torch.isfinite(x.detach()).flatten(1).all(dim=1))
        return stats.result(self.restore_layout(x, x0), u if differentiable else u.detach(),
                            state=state)
