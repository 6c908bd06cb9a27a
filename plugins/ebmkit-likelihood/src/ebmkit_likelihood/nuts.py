"""The multinomial no-U-turn sampler (NUTS), batched: one independent tree per chain.

What one transition does, per chain (Betancourt 2017, "A Conceptual Introduction to Hamiltonian
Monte Carlo", §A.4; Stan's ``base_nuts``):

1. draw a momentum ``p ~ N(0, M)``; ``H = U/T + pᵀM⁻¹p/2``;
2. double the trajectory in a random direction (forward or backward in time) by building a
   balanced subtree of ``2^j`` leapfrog steps, ``j = 0, 1, ...``, until the trajectory makes a
   U-turn, a subtree goes invalid, or the depth reaches ``max_depth`` (at most
   ``2^max_depth − 1`` leapfrog steps);
3. the new state is drawn from the whole trajectory with probability ``∝ exp(−H)``:
   *multinomial* sampling, progressive — uniformly within a subtree (the final half's proposal
   replaces the first half's with probability ``w_final / w_subtree``) and *biased* between the
   old trajectory and each new subtree (the new subtree's proposal is taken with probability
   ``min(1, w_new / w_old)``), which favours moving away from the start;
4. the generalised no-U-turn criterion: a trajectory with end momenta ``p⁻, p⁺`` and summed
   momentum ``ρ`` continues while ``(M⁻¹p⁻)·ρ > 0`` and ``(M⁻¹p⁺)·ρ > 0``; it is checked on
   every merged subtree and on the whole trajectory, plus the two extra checks across each
   merge (the left subtree extended by the first point of the right one, and the right subtree
   extended by the last point of the left one) that Stan added in 2.23;
5. a leapfrog step whose energy error ``H − H₀`` exceeds 1000 (or is not finite) is a
   *divergence*: its subtree is invalid, so no state of it can be drawn; the chain is flagged.

Batching: every row of ``[B, ...]`` is an independent chain with its own momentum, directions,
tree and sample. All chains run the same doubling ``j`` together; at the start of each doubling
the chains whose trees have stopped are dropped from the batch the energy sees (compaction: one
host sync per doubling), and within a subtree a chain that goes invalid is frozen (masked) and the
rest of a subtree is skipped once no chain of the batch is alive in it (one sync per inner node).
With one chain the energy is therefore evaluated exactly once per leapfrog step counted; with
many chains, a chain that dies inside a subtree may still ride along (unchanged, uncounted) until
the end of the batch's current half-subtree.

Costs and reports (per chain): ``n_leapfrog`` gradient evaluations per transition (the gradient
at the start is cached from the previous transition); ``init`` costs one. :class:`NUTSStepInfo`
(the :class:`~ebmkit.StepInfo` of :meth:`NUTS.step`) adds ``n_leapfrog``, ``tree_depth`` and
``accept_stat`` per chain; the chain state's ``extra`` keeps ``grad_evals`` (cumulative per
chain, ``init`` included), and the last transition's ``n_leapfrog``, ``tree_depth`` and
``accept_stat``. ``StepInfo.accept_prob`` is Stan's ``accept_stat`` (the mean Metropolis
probability ``min(1, exp(H₀ − H))`` over the new trajectory points: what the step-size
adaptation aims at ``target_accept``); ``StepInfo.accepted`` is whether the chain moved (the
multinomial draw picked a point other than the start — NUTS's accepted proposal), so
``ChainResult.accept_rate`` is the fraction of transitions that moved.

Step size: fixed, or adapted during the first ``adapt_steps`` transitions by dual averaging
(Hoffman & Gelman 2014, Alg. 5/6, with the built-in MALA/HMC's constants γ = 0.05, t₀ = 10,
κ = 0.75, μ = log 10ε₀) of the chains' mean ``accept_stat``, one step size shared by the batch;
afterwards it is frozen at the averaged iterate.

``noise=False`` (the deterministic map): zero momentum, trajectories extended forward only and
every valid proposal taken (all uniforms read as 0). From rest the U-turn criterion stops after
one leapfrog step, so a noise-free transition is the gradient step ``x − (ε²/2)M⁻¹∇U/T``.
On the ``meta`` device (shapes only: no data to decide with) a tree stops after its first
doubling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from ebmkit.interfaces import Sampler
from ebmkit.mcmc import (
    MEMORY_FORMATS,
    ChainState,
    StepInfo,
    chain_grad_norm,
    chain_sum,
    dual_averaging_state,
    dual_averaging_update,
    energy_and_grad,
    rand_chains,
    randn_like_on,
)
from ebmkit.params import param
from torch import Tensor, nn

#: A leapfrog step whose energy error H − H₀ exceeds this is a divergence (Stan's max_deltaH).
MAX_ENERGY_ERROR = 1000.0

_MEMORY_HELP = (
    "Memory layout the chains run in. auto = channels-last for image batches on the CPU "
    "(faster oneDNN convolutions), otherwise the input's; preserve = the input's layout; "
    "channels_last = always for 4-D states. Results come back in the input's layout."
)


@dataclass(frozen=True, kw_only=True)
class NUTSConfig:
    steps: int = param(100, "Transitions K per chain; each costs one gradient per leapfrog step "
                            "its tree takes (at most 2^max_depth - 1).", min=0)
    step_size: float = param(0.1, "Leapfrog step size eps (the initial one when adapting).",
                             min=0.0, min_exclusive=True)
    max_depth: int = param(10, "Maximum tree depth: at most 2^max_depth - 1 leapfrog steps per "
                               "transition (Stan's max_treedepth).", min=1, max=30)
    adapt_steps: int = param(0, "Warm-up transitions that adapt step_size toward target_accept by "
                                "dual averaging (0 = off). Acceptance is reported over the later "
                                "transitions.", min=0)
    target_accept: float = param(0.8, "Mean Metropolis acceptance statistic over the trajectory "
                                      "that the warm-up aims for (Stan's adapt_delta).",
                                 min=0.0, max=1.0, min_exclusive=True)
    inv_mass: tuple[float, ...] | None = param(
        None, "Diagonal of the inverse mass matrix M^-1: one value, or one per coordinate of an "
              "example (C order). None = identity.", min=0.0, min_exclusive=True)
    temperature: float = param(1.0, "Temperature T: the chains sample p(x) ∝ exp(-U(x)/T).",
                               min=0.0, min_exclusive=True)
    memory_format: str = param("auto", _MEMORY_HELP, choices=MEMORY_FORMATS)

    def __post_init__(self):
        if self.inv_mass is not None and len(self.inv_mass) == 0:
            raise ValueError("inv_mass: give one value or one per coordinate (or leave it unset)")


@dataclass
class NUTSStepInfo(StepInfo):
    """:class:`~ebmkit.StepInfo` of one NUTS transition, with the tree's statistics per chain."""

    n_leapfrog: Tensor | None = None  # [B] leapfrog steps = gradient evaluations of the transition
    tree_depth: Tensor | None = None  # [B] doublings of the trajectory that were kept
    accept_stat: Tensor | None = None  # [B] mean min(1, exp(H0 - H)) over the new points


class _Point(NamedTuple):
    """A phase-space point per chain: position, momentum, ``U/T`` and its gradient."""

    x: Tensor
    p: Tensor
    v: Tensor
    g: Tensor


class _Subtree(NamedTuple):
    end: _Point  # the outermost point (where the next subtree continues)
    p_beg: Tensor  # momentum at the first point built (next to the existing trajectory)
    p_end: Tensor  # momentum at the outermost point
    rho: Tensor  # summed momenta
    log_w: Tensor  # [n] log Σ exp(H0 − H) over the subtree
    prop: tuple[Tensor, Tensor, Tensor]  # proposal (x, U/T, grad)
    valid: Tensor  # [n] bool: no divergence, no U-turn inside


class _Tree:
    """What one transition shares while it builds the (compacted) batch's subtrees."""

    def __init__(self, sampler: NUTS, energy: nn.Module, eps: Tensor, h0: Tensor, minv: Tensor | None,
                 generator: torch.Generator | None, noise: bool, differentiable: bool):
        self.sampler, self.energy, self.eps, self.h0, self.minv = sampler, energy, eps, h0, minv
        self.generator, self.noise, self.differentiable = generator, noise, differentiable
        n = h0.shape[0]
        self.n_leapfrog = torch.zeros(n, dtype=torch.int64, device=h0.device)
        self.metro = torch.zeros(n, dtype=h0.dtype, device=h0.device)
        self.divergent = torch.zeros(n, dtype=torch.bool, device=h0.device)


def _col(t: Tensor, ndim: int) -> Tensor:
    """A per-chain ``[n]`` tensor viewed to broadcast against ``[n, ...]`` states."""
    return t.view((-1,) + (1,) * (ndim - 1))


def _where(m: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(_col(m, a.ndim) if a.ndim > 1 else m, a, b)


def _pick(t: Tensor, idx: Tensor | None) -> Tensor:
    """The rows of the chains still building (all of them when ``idx`` is ``None``)."""
    return t if idx is None else t.index_select(0, idx)


def _put(full: Tensor, idx: Tensor, part: Tensor) -> Tensor:
    """``full`` with the rows ``idx`` replaced by ``part`` (out of place: differentiable)."""
    return full.index_copy(0, idx, part)


def _any(mask: Tensor) -> bool:
    """Host decision "is any chain still going?" (``True`` on ``meta``: no data to decide with)."""
    return True if mask.device.type == "meta" else bool(mask.any())


class NUTS(Sampler):
    """Multinomial NUTS with the generalised U-turn criterion, batched with masks."""

    name = "nuts"
    summary = ("No-U-turn sampler (multinomial, generalised U-turn criterion, dual-averaging "
               "step size): exact, adaptive trajectory length.")
    Config = NUTSConfig
    exact = True

    def __init__(self, config: NUTSConfig):
        super().__init__(config)
        self._last_run: tuple[int, Tensor] | None = None

    # --- interface ---------------------------------------------------------------------------
    @property
    def grad_coef(self) -> float:
        """ε²/2 (times the mean of M⁻¹ with a diagonal mass): a noise-free transition from rest
        is the single leapfrog step ``x − (ε²/2)M⁻¹∇U/T``."""
        m = self.config.inv_mass
        scale = 1.0 if m is None else sum(m) / len(m)
        return float(self.config.step_size) ** 2 / 2 * scale

    def gradient_evals(self, steps: int) -> int:
        """Gradients per chain of a ``steps``-transition run: not fixed for NUTS. Measured: the
        per-chain mean of this sampler's most recent :meth:`run` (scaled to ``steps``), plus one
        for ``init``; before any run, the cap ``steps·(2^max_depth − 1) + 1``."""
        steps = int(steps)
        if self._last_run is None or steps == 0:
            return steps * (2 ** int(self.config.max_depth) - 1) + 1
        k, total = self._last_run
        per_step = (float(total.float().mean()) - 1.0) / max(k, 1)
        return int(math.ceil(per_step * steps)) + 1

    def run(self, energy, x0, steps=None, *, generator=None, noise=True, differentiable=False,
            record=False):
        result = super().run(energy, x0, steps, generator=generator, noise=noise,
                             differentiable=differentiable, record=record)
        if result.state is not None and "grad_evals" in result.state.extra:
            self._last_run = (result.steps, result.state.extra["grad_evals"].detach())
        return result

    def init(self, energy: nn.Module, x0: Tensor, *, differentiable: bool = False) -> ChainState:
        state = super().init(energy, x0, differentiable=differentiable)
        b = x0.shape[0]
        state.extra["grad_evals"] = torch.ones(b, dtype=torch.int64, device=x0.device)
        if self.warmup_steps > 0:
            state.extra.update(dual_averaging_state(self.config.step_size, x0.device))
        return state

    # --- pieces ------------------------------------------------------------------------------
    def _inv_mass(self, x: Tensor) -> Tensor | None:
        m = self.config.inv_mass
        if m is None:
            return None
        shape = x.shape[1:]
        t = torch.tensor(m, dtype=x.dtype, device=x.device)
        if t.numel() == 1:
            return t.reshape(())
        if t.numel() != math.prod(shape):
            raise ValueError(f"nuts: inv_mass has {t.numel()} values but an example has "
                             f"{math.prod(shape)} coordinates {tuple(shape)}")
        return t.reshape(shape)

    def _step_size(self, state: ChainState, x: Tensor) -> Tensor | float:
        eps = state.extra.get("step_size")
        return float(self.config.step_size) if eps is None else eps.to(x.dtype)

    @staticmethod
    def _sharp(p: Tensor, minv: Tensor | None) -> Tensor:
        return p if minv is None else p * minv

    def _kinetic(self, p: Tensor, minv: Tensor | None) -> Tensor:
        return 0.5 * chain_sum(p * self._sharp(p, minv))

    def _criterion(self, p_minus: Tensor, p_plus: Tensor, rho: Tensor,
                   minv: Tensor | None) -> Tensor:
        """The generalised no-U-turn criterion: ``(M⁻¹p⁻)·ρ > 0`` and ``(M⁻¹p⁺)·ρ > 0``."""
        return ((chain_sum(self._sharp(p_minus, minv) * rho) > 0)
                & (chain_sum(self._sharp(p_plus, minv) * rho) > 0))

    def _take(self, log_ratio: Tensor, like: Tensor, t: _Tree) -> Tensor:
        """Progressive sampling: take the new proposal with probability ``min(1, exp(ratio))``
        (``u < exp(ratio)``, ``u`` uniform per chain; ``u = 0`` with the noise off)."""
        prob = torch.nan_to_num(log_ratio.detach(), nan=-math.inf).exp()
        if not t.noise:
            return prob > 0
        return rand_chains(like, t.generator).to(prob.dtype) < prob

    def _leaf(self, z: _Point, alive: Tensor, t: _Tree, eps: Tensor) -> _Subtree:
        """One leapfrog step of every chain of the batch (the dead ones are frozen)."""
        e = _col(eps, z.x.ndim)
        p_half = z.p - (e / 2) * z.g
        x = z.x + e * self._sharp(p_half, t.minv)
        v, g = energy_and_grad(t.energy, x, temperature=self.temperature,
                               create_graph=t.differentiable)
        v = v.to(x.dtype)
        p = p_half - (e / 2) * g
        x, p, g, v = (_where(alive, x, z.x), _where(alive, p, z.p), _where(alive, g, z.g),
                      _where(alive, v, z.v))
        h = v + self._kinetic(p, t.minv)
        h = torch.where(torch.isfinite(h), h, torch.full_like(h, math.inf))
        log_w = t.h0 - h
        divergent = (h - t.h0).detach() > MAX_ENERGY_ERROR
        t.n_leapfrog += alive.long()
        t.metro += torch.where(alive, log_w.detach().clamp(max=0.0).exp(),
                               torch.zeros_like(t.metro))
        t.divergent |= alive & divergent
        point = _Point(x, p, v, g)
        return _Subtree(point, p, p, p, log_w, (x, v, g), alive & ~divergent)

    def _build(self, depth: int, z: _Point, alive: Tensor, t: _Tree, eps: Tensor) -> _Subtree:
        """A subtree of ``2^depth`` leapfrog steps from ``z`` (Stan's ``build_tree``)."""
        if depth == 0:
            return self._leaf(z, alive, t, eps)
        first = self._build(depth - 1, z, alive, t, eps)
        if not _any(first.valid):  # nothing of the batch alive: skip the final half
            return first._replace(valid=torch.zeros_like(first.valid))
        final = self._build(depth - 1, first.end, first.valid, t, eps)
        log_w = torch.logaddexp(first.log_w, final.log_w)
        take = self._take(final.log_w - log_w, z.v, t)  # uniform progressive sampling
        prop = tuple(_where(take, a, b) for a, b in zip(final.prop, first.prop, strict=True))
        rho = first.rho + final.rho
        m = t.minv
        persist = (self._criterion(first.p_beg, final.p_end, rho, m)
                   & self._criterion(first.p_beg, final.p_beg, first.rho + final.p_beg, m)
                   & self._criterion(first.p_end, final.p_end, final.rho + first.p_end, m))
        return _Subtree(final.end, first.p_beg, final.p_end, rho, log_w, prop,
                        final.valid & persist)

    # --- one transition ----------------------------------------------------------------------
    def step(self, energy: nn.Module, state: ChainState, *, generator=None, noise=True,
             differentiable=False):
        x0, v0, g0 = state.x, state.energy, state.grad
        b, dev = x0.shape[0], x0.device
        gn = chain_grad_norm(g0.detach())
        eps = self._step_size(state, x0)
        minv = self._inv_mass(x0)
        if noise:
            p0 = randn_like_on(x0, generator)
            if minv is not None:
                p0 = p0 / minv.sqrt()
        else:
            p0 = torch.zeros_like(x0)
        h0 = v0 + self._kinetic(p0, minv)
        eps_t = torch.as_tensor(eps, dtype=x0.dtype, device=dev)

        # the trajectory, per chain: both ends, summed momentum, log Σ weights, the sample
        fwd = _Point(x0, p0, v0, g0)
        bck = fwd
        rho = p0
        log_w = torch.zeros_like(h0)  # log exp(H0 - H0)
        sample = (x0, v0, g0)
        moved = torch.zeros(b, dtype=torch.bool, device=dev)
        active = torch.ones(b, dtype=torch.bool, device=dev)
        depth = torch.zeros(b, dtype=torch.int64, device=dev)
        n_leapfrog = torch.zeros(b, dtype=torch.int64, device=dev)
        metro = torch.zeros_like(h0)
        divergent = torch.zeros(b, dtype=torch.bool, device=dev)
        meta = dev.type == "meta"

        for j in range(int(self.config.max_depth)):
            if meta:
                if j > 0:
                    break
                idx = None
            else:
                idx = active.nonzero().squeeze(1)
                if idx.numel() == 0:
                    break
                if idx.numel() == b:
                    idx = None
            f = _Point(*(_pick(a, idx) for a in fwd))
            k = _Point(*(_pick(a, idx) for a in bck))
            rho_c, log_w_c, h0_c = _pick(rho, idx), _pick(log_w, idx), _pick(h0, idx)
            n = h0_c.shape[0]
            if noise:
                forward = rand_chains(f.v, generator) > 0.5
            else:
                forward = torch.ones(n, dtype=torch.bool, device=dev)
            start = _Point(*(_where(forward, a, c) for a, c in zip(f, k, strict=True)))
            near = _where(forward, f.p, k.p)  # the old trajectory's end next to the new subtree
            far = _where(forward, k.p, f.p)
            signed = torch.where(forward, eps_t, -eps_t)
            t = _Tree(self, energy, signed, h0_c, minv, generator, noise, differentiable)
            sub = self._build(j, start, torch.ones(n, dtype=torch.bool, device=dev), t, signed)

            valid = sub.valid
            take = valid & self._take(sub.log_w - log_w_c, f.v, t)  # biased progressive sampling
            log_w_c = torch.where(valid, torch.logaddexp(log_w_c, sub.log_w), log_w_c)
            rho_new = rho_c + sub.rho
            persist = (self._criterion(far, sub.p_end, rho_new, minv)
                       & self._criterion(far, sub.p_beg, rho_c + sub.p_beg, minv)
                       & self._criterion(near, sub.p_end, sub.rho + near, minv))
            go_f, go_b = valid & forward, valid & ~forward
            f = _Point(*(_where(go_f, a, c) for a, c in zip(sub.end, f, strict=True)))
            k = _Point(*(_where(go_b, a, c) for a, c in zip(sub.end, k, strict=True)))
            rho_c = _where(valid, rho_new, rho_c)
            still = valid & persist

            if idx is None:
                fwd, bck, rho, log_w = f, k, rho_c, log_w_c
                sample = tuple(_where(take, a, c) for a, c in zip(sub.prop, sample, strict=True))
                moved = moved | take
                depth = depth + valid.long()
                n_leapfrog = n_leapfrog + t.n_leapfrog
                metro = metro + t.metro
                divergent = divergent | t.divergent
                active = active & still
            else:
                fwd = _Point(*(_put(a, idx, c) for a, c in zip(fwd, f, strict=True)))
                bck = _Point(*(_put(a, idx, c) for a, c in zip(bck, k, strict=True)))
                rho, log_w = _put(rho, idx, rho_c), _put(log_w, idx, log_w_c)
                sample = tuple(_put(s, idx, _where(take, a, _pick(s, idx)))
                               for a, s in zip(sub.prop, sample, strict=True))
                moved = _put(moved, idx, _pick(moved, idx) | take)
                depth = _put(depth, idx, _pick(depth, idx) + valid.long())
                n_leapfrog = _put(n_leapfrog, idx, _pick(n_leapfrog, idx) + t.n_leapfrog)
                metro = _put(metro, idx, _pick(metro, idx) + t.metro)
                divergent = _put(divergent, idx, _pick(divergent, idx) | t.divergent)
                active = _put(active, idx, still)

        x, v, g = sample
        accept_stat = (metro / n_leapfrog.clamp(min=1).to(metro.dtype)).detach()
        accept_stat = torch.where(n_leapfrog > 0, accept_stat, torch.zeros_like(accept_stat))
        divergent = divergent | ~torch.isfinite(v.detach())
        extra = dict(state.extra)
        extra["grad_evals"] = extra.get("grad_evals", torch.zeros_like(n_leapfrog)) + n_leapfrog
        extra["n_leapfrog"] = n_leapfrog
        extra["tree_depth"] = depth
        extra["accept_stat"] = accept_stat
        if "da_m" in extra:
            self._adapt(extra, accept_stat)
        new = ChainState(x=x, energy=v, grad=g, extra=extra)
        info = NUTSStepInfo(grad_norm=gn, energy=v, accepted=moved,
                            accept_prob=accept_stat.clamp(0.0, 1.0), divergent=divergent,
                            n_leapfrog=n_leapfrog, tree_depth=depth, accept_stat=accept_stat)
        return new, info

    def _adapt(self, extra: dict[str, Tensor], accept_stat: Tensor) -> None:
        """One dual-averaging update on the device (no host sync) during the warm-up (Hoffman &
        Gelman 2014, Alg. 5); afterwards the step size is frozen at the averaged iterate ε̄."""
        dual_averaging_update(extra, accept_stat, target=self.config.target_accept,
                              warmup=self.warmup_steps)
