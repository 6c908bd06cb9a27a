"""Long-run chains from a trained model (anatomy §3.3): steady-state energy, snapshots, mixing."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import DataError
from ..evaluation import data_batch, write_metrics
from ..hookspecs import hookimpl
from ..images import save_grid
from ..interfaces import EvalResult, Evaluator
from ..mcmc import ChainResult, ChainStats, frozen
from ..mixing import MIN_DRAWS, random_directions, summarize
from ..params import param


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class LongRunConfig:
    n: int = param(64, "Chains.", min=1)
    steps: int = param(2000, "Long-run steps after the short-run samples.", min=1)
    snapshots: int = param(6, "Grids saved along the chain (log-spaced).", min=2)
    saturation: float = param(0.95, "|x| above this counts as a saturated pixel.", min=0.0)
    sampler: str | None = param(None, "Sampler for the long run (default: the model's own).")
    seed: int = param(0, "Seed of the chains.")
    mixing_draws: int = param(
        1000, "Draws per chain kept (evenly thinned) from the second half of the long run for "
              "the mixing numbers (ESS, split-R-hat of the energy and of `projections` random "
              "directions of the state); 0 = off.", min=0)
    projections: int = param(4, "Fixed random unit directions (seeded by `seed`) the states are "
                                "projected on at each kept draw, for ess_proj_min / rhat_proj_max.",
                             min=0)


class LongRun(Evaluator):
    """Anatomy §3.3 steady-state check: continue the short-run chains for many more steps.

    A non-convergent model's long-run samples fall to much lower energy than the data and look
    oversaturated; a convergent model's stay at the data's energy and keep their appearance.
    Reports energies (data, short-run, long-run), the fraction of saturated pixels and, for MH
    samplers, the acceptance rate; draws the energy trajectory and snapshots along the chain.

    Mixing (:mod:`ebmkit.mixing`): over the **second half** of the long run (steps
    ``steps//2 + 1 .. steps``, the first half being burn-in), each chain's energy is kept at up to
    ``mixing_draws`` evenly spaced steps (every ``mixing_thin``-th step, ending at the last),
    together with the state's projections on ``projections`` fixed random unit directions (a
    few numbers per chain, never the states). Across the ``n`` chains that gives ``ess_energy``
    (bulk-ESS of the energy among the ``mixing_draws × n`` kept draws), ``rhat_energy``
    (split-R̂, rank-normalised and folded), ``ess_per_draw`` and, with ``projections``,
    ``ess_proj_min`` / ``rhat_proj_max`` (worst over the directions); ``mixing_draws`` and
    ``mixing_thin`` say what they were computed from. Absent when fewer than 4 draws per chain
    are kept (``steps`` < 7) or ``mixing_draws = 0``.

    The segments that reach into the recorded half are run step by step through the sampler's
    ``init``/``step`` (the :class:`~ebmkit.interfaces.Sampler` contract: the same chain as its
    ``run``, and the same statistics, gathered with :class:`~ebmkit.mcmc.ChainStats`); the
    others through ``run``, as before.
    """

    name = "longrun"
    summary = "Steady-state check (anatomy §3.3): long-run energies vs data, oversaturation, snapshots."
    Config = LongRunConfig

    @torch.no_grad()
    def evaluate(self, model, data, out_dir):
        c = self.config
        dev = model.device
        g = torch.Generator(device=dev).manual_seed(c.seed)
        sampler = model.sampler
        if c.sampler:
            sampler = model.component("sampler", c.sampler)
        x = model.sample(c.n, generator=g)
        model.energy.eval()
        u_short = float(model.energy(x).mean())
        marks = sorted({int(round(v)) for v in torch.logspace(0, math.log10(c.steps), c.snapshots).tolist()})
        rec = _Recorder(c, x, sampler.temperature)
        snaps, energies, done, acc = {0: x}, [], 0, []
        for mark in marks:
            if rec.wants(done, mark):
                res = rec.run(sampler, model.energy, x, done, mark - done, generator=g)
            else:
                res = sampler.run(model.energy, x, mark - done, generator=g, record=True)
            x, done = res.x, mark
            energies.append(res.per_step_energy * sampler.temperature)
            if res.accept_rate is not None:
                acc.append(float(res.accept_rate))
            snaps[mark] = x
        traj = torch.cat(energies).cpu()
        sat = lambda t: float((t.abs() > c.saturation).float().mean())  # noqa: E731
        m = {"energy_short": u_short, "energy_long": float(model.energy(x).mean()),
             "saturation_short": sat(snaps[0]), "saturation_long": sat(x), "long_steps": c.steps}
        if acc:
            m["accept_rate"] = sum(acc) / len(acc)
        m.update(rec.metrics())
        if data is not None:
            try:
                xd = data_batch(data, c.n, c.seed).to(dev)
                m["energy_data"] = float(model.energy(xd).mean())
                m["saturation_data"] = sat(xd)
                m["long_minus_data"] = m["energy_long"] - m["energy_data"]
            except DataError:
                pass
        write_metrics(out_dir, self.name, m)  # nothing written for out_dir=None
        figures = {}
        if out_dir is not None:
            out_dir = Path(out_dir)
            figures["energy"] = self._plot(traj, m, out_dir / "longrun_energy.png")
            if x.dim() == 4:
                k = min(c.n, 8)
                strip = torch.stack([snaps[s][:k] for s in sorted(snaps)], 1).reshape(-1, *x.shape[1:])
                figures["snapshots"] = save_grid(strip, out_dir / "longrun_snapshots.png",
                                                 nrow=len(snaps), scale=2)
        return EvalResult(metrics=m, figures=figures)

    @staticmethod
    def _plot(traj: Tensor, m: dict, path: Path) -> Path:
        from ..plotting import new_figure, save_figure

        fig = new_figure(figsize=(6, 3.5))
        ax = fig.subplots()
        ax.plot(range(1, len(traj) + 1), traj.numpy(), lw=1, label="mean U along the long run")
        ax.axhline(m["energy_short"], color="C1", ls="--", lw=1, label="short-run samples")
        if "energy_data" in m:
            ax.axhline(m["energy_data"], color="C2", ls=":", lw=1.5, label="data")
        ax.set_xscale("log")
        ax.set_xlabel("additional MCMC steps")
        ax.set_ylabel("energy U")
        ax.legend(fontsize=8)
        return save_figure(fig, path)


class _Recorder:
    """Keeps each chain's energy and a few projections of its state at the kept steps of the
    long run's second half, for :func:`ebmkit.mixing.summarize`."""

    def __init__(self, c: LongRunConfig, x: Tensor, temperature: float):
        self.start = c.steps // 2  # steps after this one are recorded
        span = c.steps - self.start
        self.on = c.mixing_draws > 0 and span >= MIN_DRAWS
        self.thin = max(1, math.ceil(span / c.mixing_draws)) if self.on else 0
        self.end = c.steps
        self.t = temperature
        self.u = None
        if self.on and c.projections > 0:
            dim = math.prod(x.shape[1:])
            self.u = random_directions(dim, c.projections, seed=c.seed).to(x.device, torch.float32)
        self.energies: list[Tensor] = []
        self.projected: list[Tensor] = []

    def keeps(self, step: int) -> bool:
        return self.on and step > self.start and (self.end - step) % self.thin == 0

    def wants(self, done: int, mark: int) -> bool:
        """Whether the segment of steps ``done+1 .. mark`` holds a kept step."""
        if not self.on or mark <= self.start:
            return False
        last_kept = mark - (self.end - mark) % self.thin  # the last kept step <= mark
        return last_kept > max(done, self.start)

    def run(self, sampler, energy, x: Tensor, done: int, k: int, *, generator) -> ChainResult:
        """``sampler.run(energy, x, k, generator=, record=True)`` step by step (as the base
        ``Sampler.run`` does), keeping the energies and projections of the kept steps."""
        stats = ChainStats(x, steps=k, warmup=sampler.warmup_steps, record=True)
        with frozen(energy):
            state = sampler.init(energy, sampler.prepare(x))
            for i in range(1, k + 1):
                state, info = sampler.step(energy, state, generator=generator)
                stats.add(info)
                if self.keeps(done + i):
                    self.energies.append(info.energy.detach().float() * self.t)
                    if self.u is not None:
                        xs = state.x.detach()
                        self.projected.append(xs.reshape(xs.shape[0], -1).float() @ self.u)
        xk = sampler.restore_layout(state.x.detach(), x)
        return stats.result(xk, state.energy, state=state)

    def metrics(self) -> dict[str, float]:
        if len(self.energies) < MIN_DRAWS:
            return {}
        e = torch.stack(self.energies).cpu()
        p = torch.stack(self.projected).cpu() if self.projected else None
        m = summarize(e, projected=p)
        m.update(mixing_draws=int(e.shape[0]), mixing_thin=self.thin)
        return m


@hookimpl
def ebmkit_register(register):
    register(LongRun)
