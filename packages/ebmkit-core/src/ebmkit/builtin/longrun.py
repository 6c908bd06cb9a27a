"""Long-run chains from a trained model (anatomy §3.3): steady-state energy, snapshots."""

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


class LongRun(Evaluator):
    """Anatomy §3.3 steady-state check: continue the short-run chains for many more steps.

    A non-convergent model's long-run samples fall to much lower energy than the data and look
    oversaturated; a convergent model's stay at the data's energy and keep their appearance.
    Reports energies (data, short-run, long-run), the fraction of saturated pixels and, for MH
    samplers, the acceptance rate; draws the energy trajectory and snapshots along the chain.
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
        snaps, energies, done, acc = {0: x}, [], 0, []
        for mark in marks:
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


@hookimpl
def ebmkit_register(register):
    register(LongRun)
