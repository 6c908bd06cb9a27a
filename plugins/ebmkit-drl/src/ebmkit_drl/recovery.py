"""The recovery conditional and the Langevin chains on it (Gao et al. 2021, eq. 5 and §3.3).

For level ``t`` and a noisier ``x_{t+1}``, the recovery conditional's energy is

    U_rec(x) = U(x, t) + (precision_t / 2)·‖x − x̃‖²,     x̃ = centre_scale_t · x_{t+1}

(:mod:`ebmkit_drl.schedule`; no quadratic at the top level). Its chains start at ``x̃`` and take
``K`` unadjusted Langevin steps ``x ← x − (s_t²/2)·∇U_rec(x) + s_t·z``, ``s_t`` the level's
step size (the paper's code: 30 steps).
"""

from __future__ import annotations

import torch
from ebmkit import randn_like_on
from torch import Tensor, nn

from .energies import levels_like
from .schedule import DiffusionBuffers


class Recovery(nn.Module):
    """``x -> U_rec(x)`` ``[B]`` for levels ``t`` (``[B]`` or an int) and centres ``x̃``
    ``[B, ...]``: the closure the chains (and a sampler's ``init``/``step``) see. A module with
    the energy as its submodule, so freezing it freezes the energy."""

    def __init__(self, energy: nn.Module, t: Tensor | int, centre: Tensor):
        super().__init__()
        self.energy = energy
        self.t = t
        self.centre = centre

    def forward(self, x: Tensor) -> Tensor:
        tables: DiffusionBuffers = self.energy.diffusion
        u = self.energy(x, t=levels_like(x, self.t))
        prec = tables.at("precision", self.t, x)
        quad = (x - self.centre).square() * prec
        return u + 0.5 * quad.flatten(1).sum(1).to(u.dtype)


def recovery_chains(energy: nn.Module, centre: Tensor, t: Tensor, steps: int,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``steps`` Langevin steps on each example's recovery conditional, from ``x̃ = centre``.

    ``energy`` is the noise-conditional module itself (never a DDP wrapper: the caller freezes
    it and puts it in eval mode), ``centre`` ``[B, ...]``, ``t`` ``[B]`` levels. ``steps``
    energy gradients per chain (the gradient at the final state is never computed), all
    randomness from ``generator``. Returns the end states (detached) and the mean over steps of
    each chain's ``‖∇U_rec‖`` ``[B]``.
    """
    tables: DiffusionBuffers = energy.diffusion
    s2 = tables.at("step_var", t, centre)
    s = s2.sqrt()
    prec = tables.at("precision", t, centre)
    x = centre.detach().clone().requires_grad_(True)
    gsum = torch.zeros(centre.shape[0], device=centre.device, dtype=centre.dtype)
    for _ in range(steps):
        with torch.enable_grad():
            u = energy(x, t=t)
            (g,) = torch.autograd.grad(u.sum(), x)
        with torch.no_grad():
            g = g.to(x.dtype) + prec * (x - centre)
            gsum += g.flatten(1).norm(dim=1)
            x.add_(-0.5 * s2 * g)
            x.add_(s * randn_like_on(x, generator))
    return x.detach(), gsum / max(steps, 1)
