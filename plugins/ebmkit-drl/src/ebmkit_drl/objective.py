"""The ``drl`` objective: diffusion recovery likelihood (Gao et al. 2021, eq. 6 and Alg. 1).

One iteration, for a batch of data ``x`` (the trainer's positives):

1. a level ``t`` per example, stratified: ``t_i = (i + r) mod T`` with one uniform offset ``r``
   (every level in every batch of at least T; the paper draws each ``t_i`` uniformly);
2. the pair ``x_t = ᾱ_t·x + σ̄_t·ε``, ``x_{t+1} = a·x_t + σ·ε'`` (:func:`~ebmkit_drl.schedule.diffuse`);
3. negatives: ``K`` Langevin steps on the recovery conditional ``p(x_t | x_{t+1})`` from
   ``x̃ = x_{t+1}/a`` (:func:`~ebmkit_drl.recovery.recovery_chains`), on the unwrapped energy in
   eval mode with its parameters frozen (sampling through a DDP wrapper deadlocks when the
   energy has buffers);
4. the loss through ``energy`` (the DDP-wrapped one: one forward on both halves), the paper's
   per-level weighting ``w_t = σ_1/σ_{t+1}`` on the network output ``h = s_t²·U``::

       L = mean_i w_{t_i}·h(x_t,i, t_i) − mean_i w_{t_i}·h(x⁻_i, t_i)

   which maximises each level's recovery log-likelihood (the quadratic term of the recovery
   conditional does not depend on θ, so its gradient is ``E_data ∇U − E_model ∇U`` at each
   level, the ML gradient of the conditional).

The objective runs as many chains as the trainer has negatives (``n = len(x_neg)``,
``train_step``'s ``n_chains``; ``fit`` uses the batch size), for the first ``n`` examples, and
ignores the trainer's negatives themselves (the ``drl-quick`` preset makes that chain a no-op:
``sampler.steps = 0``). ``u_pos`` ``[B]`` / ``u_neg`` ``[n]`` are the weighted energies
``w_t·h = w_t s_t² U(·, t)`` of ``x_t`` and of the chains' end states, so the trainer's ``d_t``
is the loss.

Metrics: ``gap_t<l>``, the mean of ``w_t·h`` over the positives at level ``l`` minus that over
the negatives at level ``l`` (a level without examples counts 0: batches smaller than the
levels); ``disp``, the root-mean-square distance per coordinate the chains moved from ``x̃``
(the paper's code logs the distance too). ``grad_evals`` counts the chains' ``n·K`` gradients
and the loss pass's ``B + n`` examples.

Its random numbers come from its own generator (``generator``): seeded with ``seed`` on first
use; inside :func:`ebmkit.fit` the plugin's :class:`ObjectiveRandomState` callback seeds it
from ``train.seed`` and the process rank and saves its state in every checkpoint, so a resumed
run draws the same levels and noise as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from ebmkit import Callback, ConfigError, Objective, ObjectiveOutput, frozen, param
from ebmkit.model import eval_mode
from torch import Tensor

from .energies import noise_conditional
from .recovery import recovery_chains
from .schedule import diffuse, recovery_centre


@dataclass(frozen=True, kw_only=True)
class DRLConfig:
    steps: int = param(30, "Langevin steps K per chain on the recovery conditional (paper: 30).",
                       min=1)
    seed: int = param(0, "Seed of the objective's own generator (levels, diffusion noise, "
                         "Langevin noise) when used outside ebmkit.fit; in fit it follows "
                         "train.seed and is restored on resume.", min=0)


class DRL(Objective):
    name = "drl"
    summary = ("Diffusion recovery likelihood (Gao et al. 2021): K-step Langevin on the recovery "
               "conditional of each example's noise level, per-level weighted ML loss.")
    Config = DRLConfig

    def __init__(self, config: DRLConfig):
        super().__init__(config)
        #: the generator of every draw (None: made on first use, seeded with ``config.seed``)
        self.generator: torch.Generator | None = None

    def generator_for(self, device: torch.device) -> torch.Generator:
        """The objective's generator (made and seeded on first use, on ``device``; on the CPU
        for devices without generators, such as ``meta``)."""
        dev = device if device.type in ("cpu", "cuda") else torch.device("cpu")
        if self.generator is None:
            self.generator = torch.Generator(device=dev).manual_seed(int(self.config.seed))
        return self.generator

    def __call__(self, energy, x_pos: Tensor, x_neg: Tensor, *, labels=None) -> ObjectiveOutput:
        inner = noise_conditional(energy, "objective 'drl'")
        tables = inner.diffusion
        levels = tables.levels
        gen = self.generator_for(x_pos.device)
        b = x_pos.shape[0]
        offset = torch.randint(levels, (1,), generator=gen, device=gen.device).to(x_pos.device)
        t = (torch.arange(b, device=x_pos.device) + offset) % levels
        n = x_neg.shape[0]  # chains: as many as the trainer's negatives (its n_chains)
        if n > b:
            raise ConfigError(f"objective 'drl' runs one recovery chain per data example, so "
                              f"it can run at most {b} (the batch), not {n}: use as many chains "
                              "as the batch (train_step's n_chains)")
        x = x_pos.detach()
        x_t, x_next = diffuse(tables, x, t, gen)
        tn = t[:n]
        centre = recovery_centre(tables, x_next[:n], tn)
        with eval_mode(inner), frozen(inner):
            neg, _ = recovery_chains(inner, centre, tn, self.config.steps, gen)
        u = energy(torch.cat([x_t, neg]), t=torch.cat([t, tn]))  # one forward: one DDP reduction
        if u.dtype not in (torch.float32, torch.float64):
            u = u.float()
        w = tables.at("weight", t, u) * tables.at("step_var", t, u)
        u_pos, u_neg = u.split([b, n])
        u_pos, u_neg = w * u_pos, w[:n] * u_neg
        loss = u_pos.mean() - u_neg.mean()
        metrics = {f"gap_t{level}": gap for level, gap in
                   enumerate(_per_level(u_pos.detach(), t, levels)
                             - _per_level(u_neg.detach(), tn, levels))}
        metrics["disp"] = (neg - centre).square().mean().sqrt().detach()
        return ObjectiveOutput(loss=loss, u_pos=u_pos, u_neg=u_neg, metrics=metrics,
                               grad_evals=n * int(self.config.steps) + b + n)


def _per_level(v: Tensor, t: Tensor, levels: int) -> Tensor:
    """The mean of ``v`` ``[B]`` over the examples of each level ``[levels]`` (0 for a level
    without examples), with no host sync."""
    sums = torch.zeros(levels, dtype=v.dtype, device=v.device).index_add(0, t, v)
    counts = torch.zeros(levels, dtype=v.dtype, device=v.device).index_add(0, t, torch.ones_like(v))
    return sums / counts.clamp(min=1)


class ObjectiveRandomState(Callback):
    """Seeds the ``drl`` objective's generator from ``train.seed`` and the process rank at the
    start of a fit, and keeps its state in every checkpoint (restored on resume): the run's
    levels and noise are reproducible and a resumed run continues them exactly."""

    state_key = "drl-objective-rng"

    def __init__(self):
        self._objective: DRL | None = None
        self._restored: Tensor | None = None

    def on_fit_start(self, run) -> None:
        obj = run.objective
        if not isinstance(obj, DRL):
            return
        gen = obj.generator_for(torch.device(run.device))
        if self._restored is not None:
            gen.set_state(self._restored)
        else:
            gen.manual_seed(int(run.train.seed) * 7919 + 104729 + int(run.rank))
        self._objective = obj

    def state_dict(self) -> dict:
        if self._objective is None or self._objective.generator is None:
            return {}
        return {"state": self._objective.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "state" in state:
            self._restored = state["state"].cpu().to(torch.uint8)
