"""MCMC building blocks for samplers: chain state and statistics types, the energy-and-gradient
evaluation, per-chain reductions, RNG draws and memory-layout helpers.

Everything here is public API for plugin authors, in particular for a sampler with its own fused
loop (as the built-in ``langevin``'s ``run``):

* :func:`energy_and_grad` — ``(U(x)/T, ∇ₓU(x)/T)`` in one forward and one input-gradient;
* :func:`frozen` — sample without accumulating weight gradients;
* :func:`randn_like_on` / :func:`rand_like_on` / :func:`rand_chains` — the RNG draws;
* :func:`memory_format_of` / :func:`chain_layout_for` / :func:`restore_layout` — the layout
  chains run in, and the caller's layout back;
* :func:`chain_grad_norm` / :func:`chain_sum` — per-chain reductions without copies;
* :class:`ChainStats` — accumulate :class:`StepInfo` into a :class:`ChainResult` with no host sync.

The RNG rules every sampler follows (the conformance kit, ``ebmkit_testing.SamplerConformance``,
checks them):

1. **All randomness comes from the** ``generator`` **argument** (the global RNG only when it is
   ``None``).
2. **Draws happen on the generator's device, then move to the chains' device.** A CPU
   generator may drive CUDA chains (one seed gives the same chains on any device, and a CPU
   generator is what a user seeds by default). Never write
   ``torch.randn(x.shape, generator=g, device=x.device)``: it fails, or on devices that ignore
   generators silently draws elsewhere, whenever ``g`` lives on another device than ``x``.
3. **Draws are made in the standard (contiguous) layout**, whatever layout the chains run in, so
   the same seed gives the same chain for a contiguous and a channels-last batch. Never fill a
   tensor shaped *like* the chains (``torch.randn_like(x)``, ``torch.empty_like(x).normal_()``):
   those fill memory in ``x``'s stride order.

The helpers below implement both rules; a sampler that draws only through them follows them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = [
    "MEMORY_FORMATS", "ChainResult", "ChainState", "ChainStats", "StepInfo", "chain_grad_norm",
    "chain_layout_for", "chain_sum", "dual_averaging_state", "dual_averaging_update",
    "energy_and_grad", "frozen", "memory_format_of",
    "rand_chains", "rand_like_on", "randn_like_on", "restore_layout",
]


# --------------------------------------------------------------------------------------------
# chain state and statistics
# --------------------------------------------------------------------------------------------
@dataclass
class ChainState:
    """What one step needs, cached so nothing is recomputed.

    ``energy`` and ``grad`` are ``U(x)/T`` and its gradient at ``x`` (MALA and HMC reuse them for
    the next proposal). ``extra`` holds sampler-specific tensors (momentum, adapted step size).
    """

    x: Tensor
    energy: Tensor
    grad: Tensor
    extra: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class StepInfo:
    """Per-chain information about one step; producing it needs no host sync."""

    grad_norm: Tensor  # [B] ‖∇U‖₂ at the start of the step (per chain) -> v_t
    energy: Tensor  # [B] energy after the step
    accepted: Tensor | None = None  # [B] bool, Metropolis (exact) samplers only
    accept_prob: Tensor | None = None  # [B] min(1, exp(log α)), Metropolis samplers only
    divergent: Tensor | None = None  # [B] bool: the chain's state, energy or gradient went non-finite


@dataclass
class ChainResult:
    """A whole chain's outcome: final states plus statistics aggregated over the steps."""

    x: Tensor  # [B, ...] final states
    energy: Tensor  # [B] U(x_K)/T
    grad_norm: Tensor  # scalar: mean over steps and chains of ‖∇U‖₂ (this is v_t)
    accept_rate: Tensor | None  # scalar, Metropolis samplers only (post-warm-up steps when adapting)
    steps: int
    per_step_grad_norm: Tensor | None = None  # [K] when record=True
    per_step_energy: Tensor | None = None  # [K] mean energy per step when record=True
    divergent: Tensor | None = None  # [B] bool, any non-finite step
    per_chain_grad_norm: Tensor | None = None  # [B] mean over steps of ‖∇U‖₂
    per_chain_accept_rate: Tensor | None = None  # [B], Metropolis samplers only
    state: ChainState | None = None  # final state (continue with `step`; adapted step size)
    #: record=True: mixing of the chains' energies over the second half of the run
    #: (:func:`ebmkit.mixing.summarize`: ``ess_energy``, ``rhat_energy``, ``ess_per_draw``,
    #: plus ``mixing_draws``); None when fewer than 4 recorded steps fall in that half.
    mixing: dict[str, float] | None = None


class ChainStats:
    """Accumulates :class:`StepInfo` records on the device (no host sync) into a
    :class:`ChainResult`. Samplers with their own fused loop use it too::

        stats = ChainStats(x0, steps=k, warmup=self.warmup_steps, record=record)
        for _ in range(k):
            ...
            stats.add(StepInfo(grad_norm=gn, energy=u, divergent=bad))
        return stats.result(restore_layout(x, x0), u)

    ``divergent`` flags are OR-ed over the steps; acceptances are averaged over the steps after
    the warm-up (all steps when the warm-up covers the run).
    """

    def __init__(self, x0: Tensor, *, steps: int, warmup: int = 0, record: bool = False):
        b, dev = x0.shape[0], x0.device
        self.steps, self.record = steps, record
        # acceptance counts after the warm-up (all steps when the warm-up covers the run)
        self.accept_from = warmup if steps > warmup else 0
        self.i = 0
        self.gsum = torch.zeros(b, device=dev, dtype=torch.float32)
        self.asum: Tensor | None = None
        self.div = torch.zeros(b, device=dev, dtype=torch.bool)
        self.rec_g: list[Tensor] = []
        self.rec_u: list[Tensor] = []
        self.rec_chain_u: list[Tensor] = []  # [B] per recorded step (record=True): the mixing

    def add(self, info: StepInfo, *, count: bool = True) -> None:
        gn = info.grad_norm.detach().float()
        self.gsum += gn
        if info.accepted is not None and self.i >= self.accept_from:
            a = info.accepted.detach().float()
            self.asum = a if self.asum is None else self.asum + a
        if info.divergent is not None:
            self.div |= info.divergent
        if self.record and count:
            self.rec_g.append(gn.mean())
            u = info.energy.detach().float()
            self.rec_u.append(u.mean())
            self.rec_chain_u.append(u)
        self.i += 1

    def flag(self, divergent: Tensor) -> None:
        """OR extra per-chain divergence flags ``[B]`` into the result (e.g. a final-state check)."""
        self.div |= divergent

    def result(self, x: Tensor, energy: Tensor, *, state: ChainState | None = None) -> ChainResult:
        n = max(self.i, 1)
        per_chain_g = self.gsum / n
        n_acc = max(self.i - self.accept_from, 1)
        per_chain_a = None if self.asum is None else self.asum / n_acc
        return ChainResult(
            x=x,
            energy=energy,
            grad_norm=per_chain_g.mean(),
            accept_rate=None if per_chain_a is None else per_chain_a.mean(),
            steps=self.steps,
            per_step_grad_norm=torch.stack(self.rec_g) if self.rec_g else None,
            per_step_energy=torch.stack(self.rec_u) if self.rec_u else None,
            divergent=self.div,
            per_chain_grad_norm=per_chain_g,
            per_chain_accept_rate=per_chain_a,
            state=state,
            mixing=self._mixing(),
        )

    def _mixing(self) -> dict[str, float] | None:
        """ESS / split-R̂ of the per-chain energies over the second half of the recorded steps
        (the first half is burn-in), as :class:`~ebmkit.builtin.longrun.LongRun` reports them."""
        if not self.rec_chain_u:  # not recording (training): nothing to do, nothing imported
            return None
        from .mixing import MIN_DRAWS, summarize

        kept = self.rec_chain_u[len(self.rec_chain_u) // 2:]
        if len(kept) < MIN_DRAWS or kept[0].numel() < 1:
            return None
        e = torch.stack(kept).double().cpu()
        if not bool(torch.isfinite(e).all()):
            return None
        m = summarize(e)
        m["mixing_draws"] = float(len(kept))
        return m


# --------------------------------------------------------------------------------------------
# energy evaluation
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Temporarily stop ``module``'s parameters from requiring gradients (no weight-grad work,
    nothing accumulated into ``.grad`` while sampling); restored afterwards."""
    ps = [p for p in module.parameters() if p.requires_grad]
    for p in ps:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in ps:
            p.requires_grad_(True)


def energy_and_grad(
    energy: nn.Module, x: Tensor, *, temperature: float = 1.0, create_graph: bool = False
) -> tuple[Tensor, Tensor]:
    """``(U(x)/T, ∇ₓ U(x)/T)``: one forward and one input-gradient.

    With ``create_graph=False`` both results are detached (the sampling hot path). With
    ``create_graph=True`` both results stay differentiable (second-order autograd), for
    reconstruction and flow densities; if ``x`` does not require grad, a new leaf is made from it
    (``x`` itself is never modified).
    """
    with torch.enable_grad():
        if create_graph:
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
        else:
            xg = x.detach().requires_grad_(True)
        u = energy(xg)
        if temperature != 1.0:
            u = u / temperature
        (g,) = torch.autograd.grad(u.sum(), xg, create_graph=create_graph)
    if create_graph:
        return u, g
    return u.detach(), g


# --------------------------------------------------------------------------------------------
# per-chain reductions
# --------------------------------------------------------------------------------------------
def chain_grad_norm(g: Tensor) -> Tensor:
    """Per-chain ‖g‖₂ over all non-batch dimensions: ``[B, ...] -> [B]``.

    Reduces in place of flattening, so a channels-last gradient is not copied. Non-finite where
    ``g`` has a non-finite entry (a cheap per-chain divergence signal: it is computed anyway).
    """
    if g.ndim == 1:
        return g.abs()
    return torch.linalg.vector_norm(g, dim=tuple(range(1, g.ndim)))


def chain_sum(t: Tensor) -> Tensor:
    """Per-chain sum over all non-batch dimensions: ``[B, ...] -> [B]``."""
    return t.sum(dim=tuple(range(1, t.ndim))) if t.ndim > 1 else t


# --------------------------------------------------------------------------------------------
# RNG draws (the rules are in the module docstring)
# --------------------------------------------------------------------------------------------
def _draw_device(x: Tensor, generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else x.device


def randn_like_on(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """``N(0, I)`` noise with ``x``'s shape, dtype and device, drawn from ``generator``.

    Drawn on the generator's device (a CPU generator for CUDA chains is fine) in the standard
    contiguous layout, then moved to ``x``'s device: the same seed gives the same noise on any
    device and in any layout of ``x``. The result is contiguous; adding it to a channels-last
    ``x`` in place keeps ``x``'s layout. ``generator=None`` draws from the global RNG of ``x``'s
    device.
    """
    z = torch.randn(x.shape, generator=generator, device=_draw_device(x, generator), dtype=x.dtype)
    return z if z.device == x.device else z.to(x.device)


def rand_like_on(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """``Uniform[0, 1)`` draws with ``x``'s shape, dtype and device; the same rules as
    :func:`randn_like_on` (generator's device, standard layout, then moved)."""
    r = torch.rand(x.shape, generator=generator, device=_draw_device(x, generator), dtype=x.dtype)
    return r if r.device == x.device else r.to(x.device)


def rand_chains(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """One ``Uniform[0, 1)`` draw per chain, ``[B]`` in ``x``'s dtype and on its device (a
    Metropolis test's uniform, a per-chain step-size jitter); drawn on the generator's device
    and moved, as :func:`randn_like_on`."""
    r = torch.rand(x.shape[0], generator=generator, device=_draw_device(x, generator),
                   dtype=x.dtype)
    return r if r.device == x.device else r.to(x.device)


# --------------------------------------------------------------------------------------------
# memory layout
# --------------------------------------------------------------------------------------------
MEMORY_FORMATS = ("auto", "preserve", "channels_last")
"""The values of a sampler's ``memory_format`` config field (see :func:`chain_layout_for`)."""


def memory_format_of(x: Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a 4-D tensor stored channels-last (and not also contiguous),
    else ``torch.contiguous_format``."""
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def chain_layout_for(x0: Tensor, memory_format: str = "preserve") -> torch.memory_format:
    """The memory format chains run in: ``memory_format`` is ``auto`` (channels-last for 4-D
    states on the CPU, where oneDNN convolutions are faster in it), ``preserve`` (``x0``'s own
    layout) or ``channels_last`` (always, for 4-D states). The layout changes speed only, never
    the chain: draws are layout-independent (see the module docstring)."""
    if x0.ndim != 4 or memory_format == "preserve":
        return memory_format_of(x0)
    if memory_format == "channels_last" or (memory_format == "auto" and x0.device.type == "cpu"):
        return torch.channels_last
    return memory_format_of(x0)


def restore_layout(x: Tensor, like: Tensor) -> Tensor:
    """``x`` in ``like``'s memory layout (no copy when it already is): results go back to the
    caller in the layout of its ``x0``."""
    fmt = memory_format_of(like)
    return x if memory_format_of(x) == fmt else x.contiguous(memory_format=fmt)


# --------------------------------------------------------------------------------------------
# step-size adaptation
# --------------------------------------------------------------------------------------------
#: Dual-averaging constants (Hoffman & Gelman 2014, Alg. 5): γ, t₀, κ (shrinkage to log 10·ε₀).
DA_GAMMA, DA_T0, DA_KAPPA = 0.05, 10.0, 0.75


def dual_averaging_state(step_size: float, device: torch.device | str) -> dict[str, Tensor]:
    """The ``ChainState.extra`` entries of dual-averaging step-size adaptation, started at
    ``step_size`` (scalars on ``device``: updated without a host sync)."""
    z = dict(device=device, dtype=torch.float32)
    return {"step_size": torch.tensor(float(step_size), **z), "da_m": torch.zeros((), **z),
            "da_hbar": torch.zeros((), **z), "da_log_eps_bar": torch.zeros((), **z),
            "da_mu": torch.tensor(math.log(10 * float(step_size)), **z)}


def dual_averaging_update(extra: dict[str, Tensor], accept_prob: Tensor, *, target: float,
                          warmup: int) -> None:
    """One dual-averaging update of ``extra["step_size"]`` towards the mean acceptance
    ``target`` (Hoffman & Gelman 2014, Alg. 5), in place and on the device, during the first
    ``warmup`` updates only; afterwards the step size is frozen at the averaged iterate ``ε̄``."""
    m_old = extra["da_m"]
    active = m_old < warmup
    m = m_old + 1
    alpha = accept_prob.float().mean()
    w = 1.0 / (m + DA_T0)
    hbar = (1 - w) * extra["da_hbar"] + w * (float(target) - alpha)
    log_eps = extra["da_mu"] - m.sqrt() / DA_GAMMA * hbar
    mk = m.pow(-DA_KAPPA)
    log_eps_bar = mk * log_eps + (1 - mk) * extra["da_log_eps_bar"]
    eps = torch.where(m >= warmup, log_eps_bar, log_eps).exp()
    extra["da_m"] = torch.where(active, m, m_old)
    extra["da_hbar"] = torch.where(active, hbar, extra["da_hbar"])
    extra["da_log_eps_bar"] = torch.where(active, log_eps_bar, extra["da_log_eps_bar"])
    extra["step_size"] = torch.where(active, eps, extra["step_size"])
