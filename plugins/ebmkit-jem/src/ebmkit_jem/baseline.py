"""The plain classifier: the same network trained by cross-entropy alone, with no MCMC.

``ebmkit.fit`` always runs the chains (``sampler.steps = 0`` with the ``ce`` objective still pays
one energy-gradient pass for the chain starts and a forward of the negatives per iteration, about
three times a plain step), so the baseline of a fair same-wall-time comparison is this loop: batches
drawn with replacement as the trainer draws them, Adam, the data noise of the run, until the
wall-clock (or CPU) budget or the iteration count is spent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from ebmkit import ConfigError
from ebmkit.interfaces import classes_of
from torch import Tensor, nn

__all__ = ["BaselineRun", "train_classifier"]


@dataclass
class BaselineRun:
    iterations: int
    wall_seconds: float
    cpu_seconds: float
    final_ce: float


def train_classifier(energy: nn.Module, x: Tensor, y: Tensor, *, iterations: int = 1_000_000,
                     time_budget: float = 0.0, cpu_budget: float = 0.0, batch_size: int = 64,
                     lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.999),
                     data_noise: float = 0.0, seed: int = 0) -> BaselineRun:
    """Train the classifier energy ``energy`` (``energy(x, logits=True)`` -> ``[B, K]``) in place by
    cross-entropy on ``(x, y)`` until ``iterations``, ``time_budget`` wall seconds or
    ``cpu_budget`` process CPU seconds (0 = no budget), whichever comes first."""
    if classes_of(energy) is None:
        raise ConfigError("train_classifier needs a classifier energy (n_classes, logits=True)")
    if time_budget <= 0 and cpu_budget <= 0 and iterations >= 1_000_000:
        raise ConfigError("give train_classifier an iteration count or a time/CPU budget")
    g = torch.Generator().manual_seed(seed)
    device = next(energy.parameters()).device
    opt = torch.optim.Adam(energy.parameters(), lr=lr, betas=betas)
    energy.train()
    t0, c0 = time.perf_counter(), time.process_time()
    ce = torch.tensor(float("nan"))
    it = 0
    while it < iterations:
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        xb, yb = x[idx].to(device), y[idx].to(device)
        if data_noise > 0:
            xb = xb + data_noise * torch.randn(xb.shape, generator=g).to(device)
        ce = F.cross_entropy(energy(xb, logits=True), yb)
        opt.zero_grad(set_to_none=True)
        ce.backward()
        opt.step()
        it += 1
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if (time_budget > 0 and wall >= time_budget) or (cpu_budget > 0 and cpu >= cpu_budget):
            break
    energy.eval()
    return BaselineRun(iterations=it, wall_seconds=time.perf_counter() - t0,
                       cpu_seconds=time.process_time() - c0, final_ce=float(ce.detach()))
