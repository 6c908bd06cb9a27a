"""Figure for docs/samplers.md: ULA's discretisation bias next to MALA/HMC, and acceptance vs
step size on an anisotropic Gaussian.

    .venv/bin/python tools/plot_samplers.py            # writes docs/figures/samplers.png
"""

from __future__ import annotations

import argparse
import math

import torch
from ebmkit.builtin.samplers import HMC, MALA, Langevin
from ebmkit.params import build
from ebmkit.plotting import new_figure, save_figure
from ebmkit_testing.samplers import DiagonalGaussianEnergy


def make(cls, **cfg):
    return cls(build(cls.Config, cfg, where="sampler"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="docs/figures/samplers.png")
    args = ap.parse_args()
    torch.set_num_threads(1)
    fig = new_figure(figsize=(11, 4))
    ax1, ax2 = fig.subplots(1, 2)

    # (a) N(0, 1), eps = 1: ULA's stationary law is N(0, 4/3); MALA and HMC are exact.
    e = DiagonalGaussianEnergy([1.0])
    x0 = torch.zeros(20000, 1)
    grid = torch.linspace(-4.5, 4.5, 400)
    for s, color in ((make(Langevin, step_size=1.0), "tab:red"),
                     (make(MALA, step_size=1.0), "tab:blue"),
                     (make(HMC, step_size=1.0, leapfrog_steps=3, step_jitter=0.2), "tab:green"),
                     (make(HMC, step_size=1.0, leapfrog_steps=3), "tab:olive")):
        r = s.run(e, x0, 200, generator=torch.Generator().manual_seed(0))
        acc = "" if r.accept_rate is None else f", acceptance {float(r.accept_rate):.2f}"
        name = s.name
        if s.name == "hmc":
            name += f" L=3, jitter {s.config.step_jitter}"
        if float(r.x.var()) < 1e-3:  # a periodic orbit: a spike, drawn as a marker
            ax1.axvline(float(r.x.mean()), color=color, lw=3, alpha=0.6,
                        label=f"{name}: var {float(r.x.var()):.3f} (stuck: ε·L resonance)")
            continue
        ax1.hist(r.x[:, 0].numpy(), bins=80, range=(-4.5, 4.5), density=True, histtype="step",
                 color=color, lw=1.5, label=f"{name}: var {float(r.x.var()):.3f}{acc}")
    for var, style, label in ((1.0, "k-", "target N(0, 1)"),
                              (4 / 3, "k:", "ULA theory N(0, 1/(1-η/2)) = N(0, 4/3)")):
        ax1.plot(grid, torch.exp(-grid**2 / (2 * var)) / math.sqrt(2 * math.pi * var), style,
                 lw=1, label=label)
    ax1.set_title("N(0, 1), step size ε = 1, 20,000 chains × 200 steps")
    ax1.legend(fontsize=7, loc="upper left")

    # (b) acceptance vs step size, 50-D Gaussian with variances from 0.01 to 4
    var = torch.logspace(math.log10(0.01), math.log10(4.0), 50)
    e = DiagonalGaussianEnergy(var)
    x0 = e.sample(1000, torch.Generator().manual_seed(1))
    eps = torch.logspace(-2, 0, 12)
    for cls, kw, color in ((MALA, {}, "tab:blue"), (HMC, {"leapfrog_steps": 5}, "tab:green")):
        rates = [float(make(cls, step_size=float(h), **kw).run(
            e, x0, 20, generator=torch.Generator().manual_seed(2)).accept_rate) for h in eps]
        ax2.semilogx(eps.numpy(), rates, "o-", color=color, label=cls.name)
    ax2.axhline(0.574, color="tab:blue", ls=":", lw=1, label="MALA target 0.574")
    ax2.axhline(0.65, color="tab:green", ls=":", lw=1, label="HMC target 0.65")
    ax2.set_xlabel("step size ε")
    ax2.set_ylabel("acceptance rate")
    ax2.set_title("50-D Gaussian, σ² from 0.01 to 4")
    ax2.legend(fontsize=8)
    print(save_figure(fig, args.out, dpi=110))


if __name__ == "__main__":
    main()
