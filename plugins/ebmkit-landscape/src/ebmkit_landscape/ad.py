"""Attraction–diffusion (AD) chains, batched: the minima search and the AD trials.

Both run many independent chains as **one batch** through an ebmkit sampler's public
``init`` / ``step`` API (any registered sampler, MALA by default), on a wrapper energy

    V(x) = U(x)/T + α_j ‖x − x_j‖₂          (per chain j: its own target x_j and magnet α_j)

with the *unsquared* distance (a pull of constant strength α, not divided by T). The sampler
runs at its own temperature 1: the landscape's temperature lives in the wrapper. ``α_j = 0``
gives the plain low-temperature chain ``U/T`` of the minima search.

Per step the chains' energies ``U(x) = T·(V(x) − α‖x − x_j‖)`` come from the sampler's cached
``state.energy`` (no extra forward pass); the bookkeeping (lowest energy, distance to the target,
largest energy on the path, patience counters) stays on the device, and the host looks at it
only every ``check_every`` steps, when finished chains are dropped from the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from ebmkit import ChainState, Sampler, frozen
from torch import Tensor, nn

#: Added under the square root of the distance so that its gradient stays finite at x = x_j.
_DIST_EPS = 1e-12


class MagnetizedEnergy(nn.Module):
    """``V(x) = U(x)/T + α_j ‖x − x_j‖₂`` for a batch of chains, each with its target ``x_j``
    and magnet strength ``α_j`` (set with :meth:`aim`; ``α = 0``: the plain ``U/T``)."""

    def __init__(self, energy: nn.Module, temperature: float):
        super().__init__()
        self.energy = energy
        self.temperature = float(temperature)
        self.targets: Tensor | None = None
        self.alpha: Tensor | None = None

    def aim(self, targets: Tensor | None, alpha: Tensor | None) -> None:
        self.targets, self.alpha = targets, alpha

    def distance(self, x: Tensor) -> Tensor:
        """``‖x − x_j‖₂`` per chain ``[B]`` (zeros without targets)."""
        if self.targets is None:
            return torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        diff = (x - self.targets).reshape(x.shape[0], -1)
        return (diff.square().sum(dim=1) + _DIST_EPS).sqrt()

    def forward(self, x: Tensor) -> Tensor:
        v = self.energy(x) / self.temperature
        if self.targets is not None and self.alpha is not None:
            v = v + self.alpha.to(v.dtype) * self.distance(x)
        return v

    def base_energy(self, state_energy: Tensor, x: Tensor) -> Tensor:
        """``U(x)`` from the sampler's cached ``V(x)``: ``T·(V − α‖x − x_j‖)``."""
        v = state_energy.detach()
        if self.targets is not None and self.alpha is not None:
            v = v - self.alpha.to(v.dtype) * self.distance(x.detach())
        return self.temperature * v


def check_sampler(sampler: Sampler) -> None:
    from ebmkit import ConfigError

    if abs(sampler.temperature - 1.0) > 1e-12:
        raise ConfigError(
            f"the landscape sampler '{sampler.name}' has temperature {sampler.temperature}; the "
            "landscape's temperature is set with temperature= (--temperature), so leave the "
            "sampler's at 1")


def _take(state: ChainState, keep: Tensor, batch: int) -> ChainState:
    """The rows ``keep`` of a chain state (per-chain tensors in ``extra`` — those whose first
    dimension is the batch — are indexed too; scalars such as an adapted step size are kept)."""
    extra = {k: (v[keep] if isinstance(v, Tensor) and v.ndim >= 1 and v.shape[0] == batch else v)
             for k, v in state.extra.items()}
    return ChainState(x=state.x[keep], energy=state.energy[keep], grad=state.grad[keep],
                      extra=extra)


Tick = Callable[[int], None]


class _Acceptance:
    """Running sum of the live chains' Metropolis acceptance probabilities (on the device)."""

    def __init__(self, device):
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.seen = False

    def add(self, info, live: Tensor) -> None:
        p = getattr(info, "accept_prob", None)
        if p is None:
            return
        self.seen = True
        self.total += torch.where(live, p.detach().double(), 0.0).sum()
        self.count += live.sum()

    @staticmethod
    def merge(parts: list[_Acceptance]) -> float | None:
        seen = [a for a in parts if a.seen]
        if not seen:
            return None
        n = float(sum(a.count for a in seen))
        return float(sum(a.total for a in seen)) / n if n else None


# --------------------------------------------------------------------------------------------
# minima
# --------------------------------------------------------------------------------------------
@dataclass
class MinimaResult:
    x: Tensor  # [N, *shape] the lowest state each chain visited
    energy: Tensor  # [N] U at those states
    steps: Tensor  # [N] steps each chain ran
    accept_rate: float | None = None  # mean Metropolis acceptance (MH samplers)


def find_minima(energy: nn.Module, sampler: Sampler, x0: Tensor, *, temperature: float,
                max_steps: int = 5000, patience: int = 30, generator: torch.Generator | None = None,
                batch_size: int = 256, check_every: int = 20,
                tick: Tick | None = None) -> MinimaResult:
    """Low-temperature chains from ``x0`` (``[N, *shape]``, batched by ``batch_size``): each
    stops after ``patience`` steps without a new lowest energy, or after ``max_steps``; returns
    the lowest state each visited and its energy ``U``."""
    check_sampler(sampler)
    wrapper = MagnetizedEnergy(energy, temperature)
    xs, us, ks, accs = [], [], [], []
    with frozen(energy):
        for start in range(0, x0.shape[0], batch_size):
            chunk = x0[start:start + batch_size]
            x, u, k, acc = _descend(wrapper, sampler, chunk, max_steps, patience, generator,
                                    check_every, tick)
            xs.append(x)
            us.append(u)
            ks.append(k)
            accs.append(acc)
    return MinimaResult(torch.cat(xs), torch.cat(us), torch.cat(ks), _Acceptance.merge(accs))


def _descend(wrapper, sampler, x0, max_steps, patience, generator, check_every, tick):
    n, dev = x0.shape[0], x0.device
    wrapper.aim(None, None)
    state = sampler.init(wrapper, x0.detach().clone())
    rows = torch.arange(n, device=dev)                       # the job of each live row
    # per job (written back at the end of each segment)
    best_x = state.x.detach().clone()
    best_u = wrapper.base_energy(state.energy, state.x).clone()
    steps = torch.zeros(n, dtype=torch.long, device=dev)
    # per live row (the host compacts them every check_every steps)
    r_x, r_u, r_steps = best_x.clone(), best_u.clone(), steps.clone()
    r_since = torch.zeros(n, dtype=torch.long, device=dev)
    acc = _Acceptance(dev)
    step = 0
    while step < max_steps and rows.numel() > 0:
        r_done = torch.zeros(rows.numel(), dtype=torch.bool, device=dev)
        for _ in range(min(check_every, max_steps - step)):
            state, info = sampler.step(wrapper, state, generator=generator)
            step += 1
            u = wrapper.base_energy(state.energy, state.x)
            live = ~r_done
            acc.add(info, live)
            better = live & (u < r_u)  # NaN compares False: a diverged chain never improves
            r_u = torch.where(better, u, r_u)
            r_x = torch.where(better.view((-1,) + (1,) * (r_x.ndim - 1)), state.x.detach(), r_x)
            r_since = torch.where(better, 0, r_since + 1)
            stop = live & ((r_since >= patience) | ~torch.isfinite(u))
            r_steps = torch.where(stop, step, r_steps)
            r_done = r_done | stop
        if step >= max_steps:
            r_steps = torch.where(r_done, r_steps, step)
            r_done = torch.ones_like(r_done)
        best_x[rows], best_u[rows], steps[rows] = r_x, r_u, r_steps
        if tick is not None:
            tick(int(r_done.sum()))
        keep = ~r_done
        if not bool(keep.any()):
            break
        if not bool(keep.all()):
            state = _take(state, keep, rows.numel())
            rows, r_x, r_u = rows[keep], r_x[keep], r_u[keep]
            r_steps, r_since = r_steps[keep], r_since[keep]
    return best_x, best_u, steps, acc


# --------------------------------------------------------------------------------------------
# AD trials
# --------------------------------------------------------------------------------------------
@dataclass
class TrialResult:
    success: Tensor  # [J] bool: came within delta of the target
    barrier: Tensor  # [J] the largest U on the path (>= max(U_a, U_b)); inf where it failed
    steps: Tensor  # [J] steps run
    closest: Tensor  # [J] the smallest distance to the target reached
    accept_rate: float | None = None  # mean Metropolis acceptance (MH samplers)


def ad_trials(energy: nn.Module, sampler: Sampler, sources: Tensor, targets: Tensor,
              alpha: Tensor | float, *, temperature: float, delta: float,
              u_sources: Tensor | None = None, u_targets: Tensor | None = None,
              max_steps: int = 5000, patience: int = 40,
              generator: torch.Generator | None = None, batch_size: int = 256,
              check_every: int = 20, tick: Tick | None = None) -> TrialResult:
    """AD trials ``sources[j] → targets[j]`` with magnet ``alpha[j]``, run as batches of chains.

    A trial succeeds when its chain comes within ``delta`` of its target; it gives up after
    ``max_steps`` steps, after ``patience`` steps without getting closer than before, or when
    its energy goes non-finite. The barrier of a successful trial is the largest energy ``U``
    on its path (start and end included), and never below ``max(U_a, U_b)``.
    """
    check_sampler(sampler)
    j = sources.shape[0]
    dev, dt = sources.device, sources.dtype
    a = alpha if isinstance(alpha, Tensor) else torch.full((j,), float(alpha))
    a = a.to(device=dev, dtype=dt)
    wrapper = MagnetizedEnergy(energy, temperature)
    with frozen(energy):
        if u_sources is None:
            u_sources = _energies(energy, sources, batch_size)
        if u_targets is None:
            u_targets = _energies(energy, targets, batch_size)
        parts = []
        for start in range(0, j, batch_size):
            sl = slice(start, start + batch_size)
            parts.append(_attract(wrapper, sampler, sources[sl], targets[sl], a[sl],
                                  torch.maximum(u_sources[sl], u_targets[sl]).to(dt), delta,
                                  max_steps, patience, generator, check_every, tick))
    return TrialResult(*(torch.cat([p[i] for p in parts]) for i in range(4)),
                       accept_rate=_Acceptance.merge([p[4] for p in parts]))


@torch.no_grad()
def _energies(energy: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([energy(x[s:s + batch_size]).detach()
                      for s in range(0, x.shape[0], batch_size)]) if x.shape[0] else x.new_zeros(0)


def _attract(wrapper, sampler, src, tgt, alpha, floor, delta, max_steps, patience, generator,
             check_every, tick):
    n, dev = src.shape[0], src.device
    wrapper.aim(tgt, alpha)
    state = sampler.init(wrapper, src.detach().clone())
    rows = torch.arange(n, device=dev)
    d = wrapper.distance(state.x)
    u = wrapper.base_energy(state.energy, state.x)
    # per job (written back at the end of each segment)
    success = d <= delta
    barrier = torch.maximum(floor, u)
    steps = torch.zeros(n, dtype=torch.long, device=dev)
    closest = d.clone()
    # per live row
    r_ok, r_top, r_best, r_steps = success.clone(), barrier.clone(), d.clone(), steps.clone()
    r_since = torch.zeros(n, dtype=torch.long, device=dev)
    r_done = success.clone()
    acc = _Acceptance(dev)
    step = 0
    while True:
        if tick is not None:
            tick(int(r_done.sum()))
        keep = ~r_done
        if step >= max_steps or not bool(keep.any()):
            break
        if not bool(keep.all()):
            state = _take(state, keep, rows.numel())
            rows, r_ok, r_top = rows[keep], r_ok[keep], r_top[keep]
            r_best, r_steps, r_since = r_best[keep], r_steps[keep], r_since[keep]
            wrapper.aim(tgt[rows], alpha[rows])
        r_done = torch.zeros(rows.numel(), dtype=torch.bool, device=dev)
        for _ in range(min(check_every, max_steps - step)):
            state, info = sampler.step(wrapper, state, generator=generator)
            step += 1
            d = wrapper.distance(state.x)
            u = wrapper.base_energy(state.energy, state.x)
            live = ~r_done
            acc.add(info, live)
            r_top = torch.where(live, torch.maximum(r_top, u), r_top)
            hit = live & (d <= delta)
            closer = d < r_best
            r_best = torch.where(live, torch.minimum(r_best, d), r_best)
            r_since = torch.where(closer, 0, r_since + 1)
            bad = live & ~torch.isfinite(u)
            stop = hit | (live & (r_since >= patience)) | bad
            r_ok = r_ok | (hit & ~bad)
            r_steps = torch.where(stop, step, r_steps)
            r_done = r_done | stop
        if step >= max_steps:
            r_steps = torch.where(r_done, r_steps, step)
            r_done = torch.ones_like(r_done)
        success[rows], barrier[rows], closest[rows], steps[rows] = r_ok, r_top, r_best, r_steps
    barrier = torch.where(success, barrier, torch.full_like(barrier, math.inf))
    return success, barrier, steps, closest, acc
