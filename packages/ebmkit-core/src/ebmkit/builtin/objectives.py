"""The built-in objective: the papers' maximum-likelihood loss.

``ml`` is the loss of both papers (short-run eq. 4, anatomy eq. 8): the gradient of the
log-likelihood of an EBM ``p(x) ∝ exp(−U(x))`` is estimated by the energy of the data minus the
energy of MCMC samples, so one iteration minimises

    L = mean U(x+) − mean U(x−)

Optionally with the energy-magnitude regulariser of IGEBM (Du & Mordatch 2019, §3.3):
``α · (mean U(x+)² + mean U(x−)²)`` (``alpha``, off by default as in both papers), which keeps
the energies near zero without changing the ML gradient's fixed point much. The convergent
recipe (anatomy App. A) rescales the energy and the learning rate, not this loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..hookspecs import hookimpl
from ..interfaces import Objective, ObjectiveOutput
from ..params import param


@dataclass(frozen=True, kw_only=True)
class MLConfig:
    alpha: float = param(0.0, "Energy-magnitude penalty alpha * (mean U(x+)^2 + mean U(x-)^2) "
                              "(IGEBM: 1; 0 = the papers' loss).", min=0.0)


class MaximumLikelihood(Objective):
    name = "ml"
    summary = "MCMC maximum likelihood: mean U(x+) - mean U(x-) (both papers), optional energy-magnitude penalty."
    Config = MLConfig

    def __call__(self, energy, x_pos, x_neg, *, labels=None) -> ObjectiveOutput:
        u = energy(torch.cat([x_pos, x_neg]))  # one forward: DDP reduces the gradient once
        if u.dtype in (torch.float16, torch.bfloat16):  # reduce half-precision energies in fp32
            u = u.float()
        u_pos, u_neg = u.split([x_pos.shape[0], x_neg.shape[0]])
        loss = u_pos.mean() - u_neg.mean()
        metrics = {}
        alpha = self.config.alpha
        if alpha > 0:
            reg = u_pos.pow(2).mean() + u_neg.pow(2).mean()
            loss = loss + alpha * reg
            metrics["energy_reg"] = reg.detach()
        return ObjectiveOutput(loss=loss, u_pos=u_pos, u_neg=u_neg, metrics=metrics)


@hookimpl
def ebmkit_register(register):
    register(MaximumLikelihood)
