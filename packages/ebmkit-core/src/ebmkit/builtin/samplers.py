"""Built-in samplers: unadjusted Langevin (ULA), MH-adjusted Langevin (MALA) and HMC."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..components import ChainState, Sampler, StepInfo, chain_grad_norm, energy_and_grad
from ..config import param
from ..hookspecs import hookimpl


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
    temperature: float = param(1.0, "Temperature T: samples p(x) ∝ exp(-U(x)/T).", min=0.0, min_exclusive=True)
    clamp: bool = param(False, "Clamp states to [clamp_min, clamp_max] after each step (off in the papers).")
    clamp_min: float = param(-1.0, "Lower clamp bound.")
    clamp_max: float = param(1.0, "Upper clamp bound.")

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


class Langevin(Sampler):
    name = "langevin"
    summary = "Unadjusted Langevin (ULA) in the (eps, tau) or (grad_coef, noise_std) parameterisation."
    Config = LangevinConfig

    def __init__(self, config: LangevinConfig):
        super().__init__(config)
        self.a, self.b = config.coefficients

    def step(self, energy: nn.Module, state: ChainState, *, generator=None, noise=True,
             differentiable=False):
        g = state.grad
        gn = chain_grad_norm(g.detach())
        x = state.x - self.a * g
        if noise and self.b > 0:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + self.b * z
        if self.config.clamp:
            x = x.clamp(self.config.clamp_min, self.config.clamp_max)
        u, g = energy_and_grad(energy, x, temperature=self.temperature, create_graph=differentiable)
        return ChainState(x=x, energy=u, grad=g), StepInfo(grad_norm=gn, energy=u)


@hookimpl
def ebmkit_register(register):
    register(Langevin)
