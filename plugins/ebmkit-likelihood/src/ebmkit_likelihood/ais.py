"""Annealed importance sampling (AIS) for an EBM's normaliser, and reverse AIS (the other bound).

The model is ``p(x) = exp(−U(x)) / Z`` (temperature 1: the density maximum-likelihood learning
fits, whatever temperature the run's sampler draws at). AIS (Neal 2001) anneals from the
model's chain-start prior ``p₀`` (its :class:`~ebmkit.Prior`: normalised, so ``Z₀ = 1``) to
``exp(−U)`` along the geometric path

    π_β(x) ∝ f_β(x) = p₀(x)^{1−β} · exp(−β U(x)),      0 = β₀ < β₁ < … < β_T = 1,

with one exact Metropolis–Hastings kernel ``K_t`` (a registered sampler: ``mala`` or ``hmc``)
leaving each ``π_{β_t}`` invariant. A forward chain ``x₀ ~ p₀``, ``x_t ~ K_t(x_{t−1}, ·)``
carries the log weight

    log w = Σ_{t=1}^{T} (β_t − β_{t−1}) · h(x_{t−1}),      h(x) = −U(x) − log p₀(x),

and ``E[w] = Z``: ``log Ẑ = log mean w`` is a *stochastic lower bound* on ``log Z`` (Jensen:
``E[log Ẑ] ≤ log Z``), so the held-out log-likelihood ``−U(x) − log Ẑ`` it gives is a
stochastic *upper* bound on the true one (the known optimism of AIS likelihoods).

Reverse AIS (bidirectional Monte Carlo, Grosse, Ghahramani & Adams 2015; RAISE, Burda, Grosse &
Salakhutdinov 2015) starts chains at ``β = 1`` and runs the same kernels backwards to ``β = 0``
with ``log w_rev = −Σ_t (β_t − β_{t−1}) · h(x_t)``. From *exact* samples of the model
``E[w_rev] = 1/Z``, so ``−log mean w_rev`` is a stochastic *upper* bound on ``log Z``: the pair
sandwiches ``log Z`` (and the held-out log-likelihood) and the gap bounds the error of both. From
held-out *data* (all an evaluator has for a trained EBM) the upper bound is heuristic: data stand
in for model samples, exact only as far as the model fits the data. RAISE's reading of the same
numbers is exact, for a slightly different model: ``exp(−U(x)) · w_rev(x)`` is an unbiased
estimate of ``p_ann(x)``, the density of the *annealing model* (the law of the forward chain's
final state), so ``−U(x) + log w_rev(x)`` is a stochastic lower bound on ``log p_ann(x)`` for
every example ``x``, data or not; ``p_ann → p`` as the annealing gets slower.

Support of a uniform prior: ``−log p₀ = D log(high − low)`` inside the box and ``+∞`` outside,
so every ``π_β`` (``β = 1`` included, with ``0⁰ = 1_box``) lives on the box and the normaliser
estimated is ``Z_box = ∫_box exp(−U)``: the EBM restricted to the prior's support (for images
in ``[−1, 1]`` that is the data space). The chain energy is ``+∞`` outside the box, so a
proposal that leaves it is rejected by the Metropolis test (an exact kernel for the truncated
target; reflection would change MALA's proposal density). A Gaussian prior has full support:
``Z`` is then over ``ℝ^D``.

Step sizes: a *pilot* pass (its own chains, never used in the weights) anneals along the same
path and adapts ``log ε`` after every transition by a Robbins–Monro step toward the kernel's
target acceptance; it records one ε per β. The weighted run then uses those ε fixed, so every
``K_t`` is a fixed exact kernel and ``E[w] = Z`` holds exactly (adapting inside the weighted
run would make the kernels depend on the chains).

Standard error: the delta method on ``Ẑ = mean(w)``: ``SE(log Ẑ) ≈ sd(w) / (√n · mean(w)) =
√((n/ESS − 1)/(n − 1))`` with ``ESS = (Σw)²/Σw²``, computed from ``w / max w`` (no overflow).
It understates the error when the weights are heavy-tailed (small ESS): read it with the ESS.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ebmkit import ConfigError, DataError, EvalResult, Evaluator, Prior, Sampler, param
from ebmkit.evaluation import data_batch, figure_path, write_json, write_metrics
from ebmkit.mcmc import energy_and_grad, frozen
from ebmkit.mixing import MIN_DRAWS, random_directions, summarize
from torch import Tensor, nn

__all__ = [
    "AIS", "AISConfig", "AISResult", "LEVELS_8BIT", "Pilot", "SCHEDULES", "ais_log_z",
    "annealing_schedule", "base_distribution", "bits_per_dim", "heldout_log_likelihood", "effective_sample_size", "log_mean_exp", "log_mean_exp_se",
    "reverse_ais_log_z", "tune_step_sizes",
]

SCHEDULES = ("sigmoid", "linear")
#: The 8-bit scale of bits/dim, as ebmkit's ``flow-likelihood`` evaluator: data in ``[−1, 1]``
#: are the 256 levels ``k/127.5 − 1``, so one level is ``1/127.5`` wide and a density on
#: ``[−1, 1]^D`` becomes one on the 0..255 pixel scale by ``− D log 127.5``.
LEVELS_8BIT = 127.5
#: Robbins–Monro gain of the pilot's ``log ε`` update (per transition).
_GAIN = 1.0
_LOG_EPS_RANGE = (math.log(1e-7), math.log(1e3))


# --------------------------------------------------------------------------------------------
# schedules and weight statistics
# --------------------------------------------------------------------------------------------
def annealing_schedule(temperatures: int | Sequence[float] = 1000, schedule: str = "sigmoid", *,
                       delta: float = 4.0) -> Tensor:
    """``β₀ = 0 < β₁ < … < β_T = 1`` as a float64 tensor ``[T + 1]``.

    ``temperatures`` is ``T`` (the number of annealing steps: ``T`` weight increments, ``T − 1``
    distributions strictly between ``p₀`` and the model, each with its MH transitions) and
    ``schedule`` ``linear`` (``β_t = t/T``) or ``sigmoid`` (Grosse, Maddison & Salakhutdinov
    2013: ``β̃_t = σ(δ(2t/T − 1))`` rescaled to ``[0, 1]``; dense at both ends). A sequence is a
    user schedule: strictly increasing values in ``[0, 1]``; 0 and 1 are added when missing.
    """
    if not isinstance(temperatures, int):
        betas = [float(b) for b in temperatures]
        if not betas or any(not (0.0 <= b <= 1.0) or math.isnan(b) for b in betas):
            raise ConfigError("a user annealing schedule needs values in [0, 1]")
        if any(b1 <= b0 for b0, b1 in zip(betas, betas[1:], strict=False)):
            raise ConfigError("a user annealing schedule must be strictly increasing")
        if betas[0] != 0.0:
            betas.insert(0, 0.0)
        if betas[-1] != 1.0:
            betas.append(1.0)
        return torch.tensor(betas, dtype=torch.float64)
    t_max = int(temperatures)
    if t_max < 1:
        raise ConfigError(f"AIS needs at least one annealing step, got temperatures={t_max}")
    t = torch.arange(t_max + 1, dtype=torch.float64) / t_max
    if schedule == "linear":
        return t
    if schedule == "sigmoid":
        if delta <= 0:
            raise ConfigError(f"the sigmoid schedule needs delta > 0, got {delta}")
        s = torch.sigmoid(delta * (2 * t - 1))
        b = (s - s[0]) / (s[-1] - s[0])
        b[0], b[-1] = 0.0, 1.0
        return b
    raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")


def _normalised(log_w: Tensor) -> tuple[Tensor, float]:
    """``(w / max w, log max w)`` in float64."""
    lw = log_w.detach().double().reshape(-1).cpu()
    m = float(lw.max()) if lw.numel() else -math.inf
    if not math.isfinite(m):
        return torch.zeros_like(lw), m
    return (lw - m).exp(), m


def log_mean_exp(log_w: Tensor) -> float:
    """``log mean exp(log_w)``, computed stably (``−inf`` when every weight is 0)."""
    w, m = _normalised(log_w)
    if not math.isfinite(m):
        return m
    return m + math.log(float(w.sum()) / w.numel())


def effective_sample_size(log_w: Tensor) -> float:
    """Kish's effective sample size ``(Σw)² / Σw²`` of the weights (1 … n)."""
    w, m = _normalised(log_w)
    if not math.isfinite(m):
        return 0.0
    return float(w.sum()) ** 2 / float(w.square().sum())


def log_mean_exp_se(log_w: Tensor) -> float:
    """Delta-method standard error of ``log mean w``: ``sd(w) / (√n mean(w))``, i.e.
    ``√((n/ESS − 1)/(n − 1))`` with the unbiased variance (``inf`` for fewer than 2 weights or
    all weights 0)."""
    n = log_w.numel()
    ess = effective_sample_size(log_w)
    if n < 2 or ess <= 0:
        return math.inf
    return math.sqrt(max(n / ess - 1.0, 0.0) / (n - 1))


def bits_per_dim(ll_nats: float, dims: int) -> float:
    """Bits/dim on the 8-bit scale of a mean log-likelihood in nats of data in ``[−1, 1]``:
    ``(−ll + D log 127.5) / (D log 2)`` (the ``flow-likelihood`` evaluator's convention)."""
    return (-ll_nats + dims * math.log(LEVELS_8BIT)) / (dims * math.log(2))


# --------------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AISResult:
    """One AIS run. ``direction`` is ``forward`` (from ``p₀``) or ``reverse`` (from ``β = 1``).

    ``log_w`` ``[n]`` are the per-chain log weights (float64, CPU): forward they estimate ``Z``
    (``E[w] = Z``), reverse ``1/Z`` (``E[w] = 1/Z`` from exact model samples). ``betas``
    ``[T+1]`` the schedule, ``step_sizes`` ``[T+1]`` the ε of each β's transitions and
    ``accept`` ``[T+1]`` their mean Metropolis acceptance probability (NaN at the β that have no
    transitions: ``β₀`` and ``β_T``). ``x`` the chains' final states (forward: the chains at
    ``β_{T−1}``, which weighted by ``w`` approximate the model; reverse: near ``p₀``).
    ``evaluations`` the energy-gradient evaluations per chain, ``seconds`` the wall time (of
    this run, not the pilot). ``heldout``: given data, :func:`heldout_log_likelihood`'s numbers
    with this run's ``log_z`` (reverse: of its own starting points, with RAISE's
    ``ll_raise_nats``).
    """

    direction: str
    log_w: Tensor
    betas: Tensor
    step_sizes: Tensor
    accept: Tensor
    x: Tensor
    evaluations: int = 0
    seconds: float = 0.0
    heldout: dict[str, float] | None = None
    #: forward with ``mixing_steps``: :func:`transition_mixing`'s numbers at β = 1.
    mixing: dict[str, float] | None = None

    @property
    def n(self) -> int:
        return int(self.log_w.numel())

    @property
    def temperatures(self) -> int:
        return int(self.betas.numel()) - 1

    @property
    def log_z(self) -> float:
        """``log Ẑ``: forward ``log mean w`` (a stochastic lower bound), reverse
        ``−log mean w_rev`` (a stochastic upper bound when the chains started from exact model
        samples)."""
        lme = log_mean_exp(self.log_w)
        return lme if self.direction == "forward" else -lme

    @property
    def log_z_se(self) -> float:
        """Delta-method standard error of :attr:`log_z` (see :func:`log_mean_exp_se`)."""
        return log_mean_exp_se(self.log_w)

    @property
    def ess(self) -> float:
        """Effective sample size ``(Σw)²/Σw²`` of the weights."""
        return effective_sample_size(self.log_w)

    @property
    def log_z_single(self) -> float:
        """The single-chain bound: forward ``mean log w ≤ log Z`` (in expectation), reverse
        ``−mean log w_rev ≥ log Z`` (from exact samples). Looser than :attr:`log_z` but with a
        reliable standard error; their difference (reverse − forward) is the symmetrised KL
        between the forward and reverse chains (BDMC)."""
        lw = self.log_w.double()
        m = float(lw.mean())
        return m if self.direction == "forward" else -m

    @property
    def log_z_single_se(self) -> float:
        lw = self.log_w.double()
        return float(lw.std() / math.sqrt(lw.numel())) if lw.numel() > 1 else math.inf

    @property
    def accept_mean(self) -> float:
        a = self.accept[~self.accept.isnan()]
        return float(a.mean()) if a.numel() else math.nan

    @property
    def accept_min(self) -> float:
        a = self.accept[~self.accept.isnan()]
        return float(a.min()) if a.numel() else math.nan

    def summary(self) -> dict[str, float]:
        return {"log_z": self.log_z, "log_z_se": self.log_z_se, "ess": self.ess,
                "log_z_single": self.log_z_single, "log_z_single_se": self.log_z_single_se,
                "accept_mean": self.accept_mean, "accept_min": self.accept_min}


# --------------------------------------------------------------------------------------------
# the annealed energy
# --------------------------------------------------------------------------------------------
class _PriorTerms:
    """``log p₀`` of a :class:`~ebmkit.Prior`: normalised in float64 for the weights (the core's
    :meth:`Prior.log_prob`), and for the chains the energy ``−log p₀`` without its constant,
    with its gradient, in the chains' dtype, and the support mask."""

    def __init__(self, prior: Prior):
        self.prior = prior
        self.uniform = prior.distribution == "uniform"
        if self.uniform and not prior.high > prior.low:
            raise ConfigError(f"a uniform prior needs high > low, got [{prior.low}, {prior.high}]")
        if not self.uniform and not prior.std > 0:
            raise ConfigError(f"a Gaussian prior needs std > 0, got {prior.std}")

    def log_prob(self, x: Tensor) -> Tensor:
        return self.prior.log_prob(x)

    def inside(self, x: Tensor) -> Tensor:
        if not self.uniform:
            return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        p = self.prior
        flat = x.reshape(x.shape[0], -1)
        return ((flat >= p.low) & (flat <= p.high)).all(dim=1)

    def energy_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(−log p₀(x) + const [B], its gradient, inside [B])``."""
        if self.uniform:
            return x.new_zeros(x.shape[0]), torch.zeros_like(x), self.inside(x)
        p = self.prior
        d = (x - p.mean) / p.std
        e = 0.5 * d.reshape(x.shape[0], -1).square().sum(dim=1)
        return e, d / p.std, self.inside(x)


class _ValueWithGrad(torch.autograd.Function):
    """A ``[B]`` value whose gradient w.r.t. ``x`` is a precomputed ``grad`` (no graph kept)."""

    @staticmethod
    def forward(ctx, x, value, grad):  # noqa: ARG004 - x is the input the gradient is for
        ctx.save_for_backward(grad)
        return value.clone()

    @staticmethod
    def backward(ctx, g_out):
        (grad,) = ctx.saved_tensors
        return g_out.reshape((-1,) + (1,) * (grad.ndim - 1)).to(grad.dtype) * grad, None, None


def _rows_equal(a: Tensor, b: Tensor) -> Tensor:
    if a.shape != b.shape:
        return torch.zeros(a.shape[0], dtype=torch.bool, device=a.device)
    return (a == b).reshape(a.shape[0], -1).all(dim=1)


class _Annealed(nn.Module):
    """``E_β(x) = β U(x) + (1 − β)(−log p₀(x))`` up to a constant, ``+∞`` outside ``p₀``'s
    support: the energy the MH kernels sample at inverse temperature ``beta``.

    It keeps ``U`` and ``∇U`` of the chains' current states (``known``) and of its last
    evaluation, so a transition costs what the same sampler costs on ``U`` alone: a new β
    needs no new evaluation (``β U + (1−β)(−log p₀)`` is rebuilt from the cached pieces), and
    after a step each chain's ``U`` is that of its old state (rejected) or of the last
    evaluation (the proposal, accepted) — checked row by row against the states, recomputed
    for any row that is neither.
    """

    def __init__(self, energy: Callable[[Tensor], Tensor], prior: _PriorTerms):
        super().__init__()
        self.energy = energy
        self.prior = prior
        self.beta = 0.0
        self.known: tuple[Tensor, Tensor, Tensor] | None = None
        self.last: tuple[Tensor, Tensor, Tensor] | None = None
        self.calls = 0  # evaluations of U and ∇U (batched calls)

    def _u_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        k = self.known
        if k is not None and k[0].shape == x.shape and torch.equal(k[0], x):
            return k[1], k[2]
        u, g = energy_and_grad(self.energy, x)
        u = u.detach()
        self.last = (x.detach(), u, g.detach())
        self.calls += 1
        return u, g

    def forward(self, x: Tensor) -> Tensor:
        u, gu = self._u_and_grad(x.detach())
        e0, g0, inside = self.prior.energy_and_grad(x.detach())
        b = float(self.beta)
        e = (b * u.to(x.dtype) + (1 - b) * e0).masked_fill(~inside, math.inf)
        g = b * gu.to(x.dtype) + (1 - b) * g0
        return _ValueWithGrad.apply(x, e, g)

    def start(self, x: Tensor) -> None:
        """Make ``x`` the chains' current states (evaluating ``U`` and ``∇U`` there)."""
        self.known = None
        u, g = self._u_and_grad(x.detach())
        self.known = (x.detach(), u, g)

    def settle(self, x: Tensor) -> None:
        """After a transition: the cached ``U``, ``∇U`` of the new states ``x``."""
        old, last = self.known, self.last
        assert old is not None
        keep = _rows_equal(x, old[0])
        take = _rows_equal(x, last[0]) & ~keep if last is not None else torch.zeros_like(keep)
        shape = (-1,) + (1,) * (x.ndim - 1)
        u, g = old[1], old[2]
        if last is not None:
            u = torch.where(take, last[1].to(u.dtype), u)
            g = torch.where(take.view(shape), last[2].to(g.dtype), g)
        miss = ~(keep | take)
        if bool(miss.any()):  # a sampler whose last evaluation was not its proposal
            idx = miss.nonzero().squeeze(1)
            u_m, g_m = energy_and_grad(self.energy, x[idx].detach())
            self.calls += 1
            u, g = u.clone(), g.clone()
            u[idx], g[idx] = u_m.to(u.dtype), g_m.to(g.dtype)
        self.known = (x.detach(), u, g)

    @property
    def u(self) -> Tensor:
        assert self.known is not None
        return self.known[1]


# --------------------------------------------------------------------------------------------
# the MH kernels
# --------------------------------------------------------------------------------------------
class _Kernels:
    """The registered exact sampler at any step size: its class with ``step_size`` replaced,
    temperature 1 and no internal adaptation (the path's β plays the temperature's part)."""

    def __init__(self, transition: Sampler, *, target_accept: float | None = None):
        if not isinstance(transition, Sampler):
            raise ConfigError(f"transition must be a sampler name or a Sampler, not {type(transition).__name__}")
        name = getattr(transition, "name", "") or type(transition).__name__
        if not getattr(transition, "exact", False):
            raise ConfigError(f"AIS needs an exact (Metropolis-adjusted) transition; sampler '{name}' "
                              "is unadjusted and would bias the weights: use mala or hmc")
        if not getattr(transition, "invariant_alone", True):
            raise ConfigError(f"AIS needs a transition that leaves each annealed distribution "
                              f"invariant on its own; sampler '{name}' is exact only together with "
                              "auxiliary chains that persist between steps (its hot replicas), "
                              "which AIS does not carry: use mala, hmc or nuts")
        cfg = transition.config
        fields = {f.name for f in dataclasses.fields(cfg)} if dataclasses.is_dataclass(cfg) else set()
        if "step_size" not in fields:
            raise ConfigError(f"AIS adapts the transition's step size; sampler '{name}' has no "
                              "step_size parameter")
        over: dict[str, Any] = {}
        if "temperature" in fields:
            over["temperature"] = 1.0
        if "adapt_steps" in fields:
            over["adapt_steps"] = 0
        self.name = name
        self.cls = type(transition)
        self.base = dataclasses.replace(cfg, **over)
        self.step_size = float(cfg.step_size)
        self.target = float(target_accept if target_accept is not None
                            else getattr(cfg, "target_accept", 0.65))
        if not 0.0 < self.target < 1.0:
            raise ConfigError(f"target_accept must be in (0, 1), got {self.target}")

    def at(self, eps: float) -> Sampler:
        return self.cls(dataclasses.replace(self.base, step_size=float(eps)))


def _transitions(path: _Annealed, kernel: Sampler, k: int, generator) -> Tensor:
    """``k`` transitions of ``kernel`` at the path's current β from the known states; returns
    the mean acceptance probability (a 0-d tensor on the device, no host sync)."""
    assert path.known is not None
    state = kernel.init(path, path.known[0])  # the states' U, ∇U are known: no evaluation
    acc = torch.zeros((), dtype=torch.float64, device=state.x.device)
    for _ in range(k):
        state, info = kernel.step(path, state, generator=generator)
        if info.accept_prob is None:
            raise ConfigError(f"sampler '{kernel.name}' reports no acceptance; AIS needs an MH kernel")
        acc = acc + info.accept_prob.detach().double().mean()
        path.settle(state.x.detach())
    return acc / max(k, 1)


# --------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _progress(enabled: bool, total: int, description: str) -> Iterator[Callable[[], None]]:
    """A rich bar on stderr; never when ``enabled`` is ``False``, and otherwise only when stderr
    is a terminal (logs and captured output stay clean)."""
    if enabled is False or total <= 0:
        yield lambda: None
        return
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
    except ImportError:  # pragma: no cover - rich is an ebmkit-core dependency
        yield lambda: None
        return
    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda: None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


# --------------------------------------------------------------------------------------------
# the annealer
# --------------------------------------------------------------------------------------------
class _Annealer:
    """What the forward, reverse and pilot runs share: the path, the kernels, the schedule."""

    def __init__(self, energy, prior: Prior, *, temperatures, schedule, sigmoid_delta, transition,
                 steps_per_temperature, target_accept, generator, device, dtype, registry,
                 progress):
        if not isinstance(prior, Prior):
            raise ConfigError(f"prior must be an ebmkit.Prior, not {type(prior).__name__}")
        self.energy = energy
        self.prior = prior
        self.terms = _PriorTerms(prior)
        self.betas = annealing_schedule(temperatures, schedule, delta=sigmoid_delta)
        if isinstance(transition, str):
            if registry is None:
                from ebmkit import build_registry

                registry = build_registry()
            transition = registry.create("sampler", transition, None)
        self.kernels = _Kernels(transition, target_accept=target_accept)
        self.k = int(steps_per_temperature)
        if self.k < 1:
            raise ConfigError(f"steps_per_temperature must be >= 1, got {self.k}")
        tensors = ([*energy.parameters(), *energy.buffers()] if isinstance(energy, nn.Module)
                   else [])
        floats = [t for t in tensors if t.is_floating_point()]
        self.device = torch.device(device) if device is not None else (
            tensors[0].device if tensors else torch.device("cpu"))
        self.dtype = dtype or (floats[0].dtype if floats else torch.float32)
        self.generator = generator
        self.progress = progress

    @property
    def T(self) -> int:
        return int(self.betas.numel()) - 1

    @contextlib.contextmanager
    def _frozen(self) -> Iterator[None]:
        e = self.energy
        if not isinstance(e, nn.Module):
            yield
            return
        was = e.training
        e.eval()
        try:
            with frozen(e):
                yield
        finally:
            e.train(was)

    def _path(self) -> _Annealed:
        return _Annealed(self.energy, self.terms)

    def _h(self, path: _Annealed, x: Tensor) -> Tensor:
        """``h(x) = −U(x) − log p₀(x)`` (float64 ``[B]``) of the known states."""
        return -path.u.double() - self.terms.log_prob(x).to(path.u.device)

    def _check_step_sizes(self, step_sizes: Tensor | Sequence[float]) -> Tensor:
        eps = torch.as_tensor(step_sizes, dtype=torch.float64).reshape(-1).cpu()
        if eps.numel() != self.T + 1:
            raise ConfigError(f"step_sizes needs one value per β ({self.T + 1}), got {eps.numel()}")
        inner = eps[1:self.T]
        if inner.numel() and not bool(((inner > 0) & inner.isfinite()).all()):
            raise ConfigError("step_sizes must be positive and finite at β₁ … β_{T−1}")
        return eps

    def prior_samples(self, n: int) -> Tensor:
        return self.prior.sample(n, generator=self.generator, device=self.device, dtype=self.dtype)

    # -- pilot ------------------------------------------------------------------------------
    def tune(self, n_chains: int, *, step_size: float | None, updates: int, warmup: int,
             temperatures: int) -> Tensor:
        """ε per β from a pilot anneal (its chains are discarded): at most ``temperatures``
        intermediate βs visited (evenly spaced in t), ε interpolated in log between them."""
        T, betas = self.T, self.betas
        eps = torch.full((T + 1,), math.nan, dtype=torch.float64)
        if T < 2:
            return eps
        visits = sorted({int(round(v)) for v in
                         torch.linspace(1, T - 1, max(1, min(int(temperatures), T - 1))).tolist()})
        per_t = max(self.k, math.ceil(updates / len(visits)))
        log_eps = math.log(step_size if step_size is not None else self.kernels.step_size)
        total = warmup + per_t * len(visits)
        tuned = []
        with self._frozen(), _progress(self.progress, total, "AIS pilot (step sizes)") as tick:
            path = self._path()
            path.beta = 0.0
            path.start(self.prior_samples(n_chains))
            for i, t in enumerate(visits):
                path.beta = float(betas[t])
                n_up = per_t + (warmup if i == 0 else 0)
                trail = []
                for _ in range(n_up):
                    a = float(_transitions(path, self.kernels.at(math.exp(log_eps)), 1,
                                           self.generator))
                    if math.isnan(a):
                        a = 0.0
                    log_eps = min(max(log_eps + _GAIN * (a - self.kernels.target),
                                      _LOG_EPS_RANGE[0]), _LOG_EPS_RANGE[1])
                    trail.append(log_eps)
                    tick()
                keep = trail[-max(1, min(len(trail) // 2, per_t)):]
                tuned.append(sum(keep) / len(keep))
        # a centred running mean over 5 visited βs takes out the updates' noise (ε varies
        # slowly along the path), then log-linear interpolation to every β
        log_tuned = torch.tensor(tuned, dtype=torch.float64)
        smooth = torch.stack([log_tuned[max(0, i - 2):i + 3].mean()
                              for i in range(log_tuned.numel())])
        t_all = torch.arange(1, T, dtype=torch.float64)
        eps[1:T] = _interp(t_all, torch.tensor(visits, dtype=torch.float64), smooth).exp()
        return eps

    # -- weighted runs ----------------------------------------------------------------------
    def forward(self, n_chains: int, step_sizes: Tensor, batch_size: int | None) -> AISResult:
        T, betas = self.T, self.betas
        eps = self._check_step_sizes(step_sizes)
        bs = int(batch_size or n_chains)
        t0 = time.perf_counter()
        log_ws, xs, calls = [], [], 0
        acc = torch.zeros(T + 1, dtype=torch.float64)
        kernels = {t: self.kernels.at(float(eps[t])) for t in range(1, T)}
        n_batches = math.ceil(n_chains / bs)
        with self._frozen(), _progress(self.progress, T * n_batches, "AIS forward") as tick:
            for start in range(0, n_chains, bs):
                m = min(bs, n_chains - start)
                path = self._path()
                path.beta = 0.0
                path.start(self.prior_samples(m))
                log_w = torch.zeros(m, dtype=torch.float64, device=self.device)
                acc_b = []
                for t in range(1, T + 1):
                    x = path.known[0]
                    log_w = log_w + float(betas[t] - betas[t - 1]) * self._h(path, x)
                    if t < T:
                        path.beta = float(betas[t])
                        acc_b.append(_transitions(path, kernels[t], self.k, self.generator) * m)
                    tick()
                if acc_b:
                    acc[1:T] += torch.stack(acc_b).cpu()
                log_ws.append(log_w.cpu())
                xs.append(path.known[0])
                calls += path.calls
        accept = torch.full((T + 1,), math.nan, dtype=torch.float64)
        if T > 1:
            accept[1:T] = acc[1:T] / n_chains
        return AISResult("forward", torch.cat(log_ws), betas.clone(), eps, accept, torch.cat(xs),
                         evaluations=calls // max(n_batches, 1),
                         seconds=time.perf_counter() - t0)

    def mixing(self, x: Tensor, step_size: float, steps: int, *, projections: int = 4,
               seed: int = 0) -> dict[str, float]:
        """``steps`` more transitions at β = 1 (the kernel at ``step_size``) from the states
        ``x``; :func:`ebmkit.mixing.summarize` of each chain's ``U`` and of its state's
        projections on ``projections`` seeded directions over the second half."""
        kernel = self.kernels.at(float(step_size))
        u_dir = random_directions(math.prod(x.shape[1:]), projections, seed=seed).to(
            self.device, torch.float64) if projections > 0 else None
        energies, projected = [], []
        start = steps // 2
        acc = torch.zeros((), dtype=torch.float64, device=self.device)
        with self._frozen():
            path = self._path()
            path.beta = 1.0
            path.start(x.detach().to(self.device, self.dtype))
            for i in range(1, steps + 1):
                acc = acc + _transitions(path, kernel, 1, self.generator)
                if i > start:
                    energies.append(path.u.detach().double().cpu())
                    if u_dir is not None:
                        xs = path.known[0].reshape(x.shape[0], -1).double()
                        projected.append((xs @ u_dir).cpu())
        if len(energies) < MIN_DRAWS:
            raise ConfigError(f"mixing_steps must be >= {2 * MIN_DRAWS} (half of them are burn-in); "
                              f"got {steps}")
        e = torch.stack(energies)
        out = summarize(e, projected=torch.stack(projected) if projected else None)
        out["mixing_steps"] = float(steps)
        out["mixing_accept"] = float(acc) / steps
        return out

    def reverse(self, x_start: Tensor, step_sizes: Tensor, batch_size: int | None) -> AISResult:
        T, betas = self.T, self.betas
        eps = self._check_step_sizes(step_sizes)
        x_start = x_start.detach().to(self.device, self.dtype)
        n = x_start.shape[0]
        if not bool(self.terms.inside(x_start).all()):
            raise DataError("reverse AIS starts outside the prior's support (the model restricted "
                            "to the uniform prior's box has no mass there); drop those points")
        bs = int(batch_size or n)
        t0 = time.perf_counter()
        log_ws, xs, calls = [], [], 0
        acc = torch.zeros(T + 1, dtype=torch.float64)
        kernels = {t: self.kernels.at(float(eps[t])) for t in range(1, T)}
        n_batches = math.ceil(n / bs)
        with self._frozen(), _progress(self.progress, T * n_batches, "AIS reverse") as tick:
            for start in range(0, n, bs):
                xb = x_start[start:start + bs]
                m = xb.shape[0]
                path = self._path()
                path.beta = 1.0
                path.start(xb)
                log_w = torch.zeros(m, dtype=torch.float64, device=self.device)
                acc_b = []
                for t in range(T, 0, -1):
                    x = path.known[0]
                    log_w = log_w - float(betas[t] - betas[t - 1]) * self._h(path, x)
                    if t - 1 >= 1:
                        path.beta = float(betas[t - 1])
                        acc_b.append(_transitions(path, kernels[t - 1], self.k, self.generator) * m)
                    tick()
                if acc_b:  # collected from t-1 = T-1 down to 1
                    acc[1:T] += torch.stack(acc_b[::-1]).cpu()
                log_ws.append(log_w.cpu())
                xs.append(path.known[0])
                calls += path.calls
        accept = torch.full((T + 1,), math.nan, dtype=torch.float64)
        if T > 1:
            accept[1:T] = acc[1:T] / n
        return AISResult("reverse", torch.cat(log_ws), betas.clone(), eps, accept, torch.cat(xs),
                         evaluations=calls // max(n_batches, 1),
                         seconds=time.perf_counter() - t0)


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of ``(xp, fp)`` at ``x`` (constant beyond the ends)."""
    if xp.numel() == 1:
        return fp.expand_as(x).clone()
    i = torch.searchsorted(xp, x).clamp(1, xp.numel() - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    w = ((x - x0) / (x1 - x0)).clamp(0.0, 1.0)
    return f0 + w * (f1 - f0)


def _annealer(energy, prior, kw: dict[str, Any]) -> _Annealer:
    return _Annealer(energy, prior, **kw)


@dataclass(frozen=True, kw_only=True)
class Pilot:
    """How the pilot pass chooses the step sizes (:func:`tune_step_sizes`): ``chains`` chains
    annealed over at most ``temperatures`` of the intermediate βs (evenly spaced in t; ε is
    interpolated in log between them), ``updates`` Robbins–Monro updates of ``log ε`` in all (at
    least one transition each per visited β), ``warmup`` more at the first, from ``step_size``
    (default: the transition's own)."""

    chains: int = 128
    temperatures: int = 200
    updates: int = 400
    warmup: int = 50
    step_size: float | None = None

    def run(self, ann: _Annealer) -> Tensor:
        if self.chains < 1 or self.temperatures < 1:
            raise ConfigError("the pilot needs at least one chain and one temperature")
        return ann.tune(int(self.chains), step_size=self.step_size, updates=int(self.updates),
                        warmup=int(self.warmup), temperatures=int(self.temperatures))


def heldout_log_likelihood(energy, x: Tensor, log_z: float, log_z_se: float = 0.0, *,
                           prior: Prior | None = None, batch_size: int | None = None,
                           log_w_reverse: Tensor | None = None) -> dict[str, float]:
    """The held-out log-likelihood ``mean(−U(x)) − log Z`` of the examples ``x`` ``[n, *shape]``
    (data in ``[−1, 1]``), with its standard error (the spread of ``U`` over the examples and
    ``log_z_se``, independent) and bits/dim on the 8-bit scale (:func:`bits_per_dim`).
    Examples outside a uniform ``prior``'s box have zero density under the box-restricted
    model: they are counted in ``outside_support_fraction`` and left out. ``log_w_reverse``
    (reverse AIS's per-example log weights, one chain from each example) adds RAISE's
    ``ll_raise_nats`` = ``mean(−U(x) + log w_rev(x))``."""
    x = x.detach()
    n = x.shape[0]
    inside = (_PriorTerms(prior).inside(x).cpu() if prior is not None
              else torch.ones(n, dtype=torch.bool))
    out: dict[str, float] = {"n_data": float(n),
                             "outside_support_fraction": float((~inside).float().mean())}
    if not bool(inside.any()):
        return out
    u = _energies(energy, x[inside.to(x.device)], batch_size)
    neg_u = -u.double()
    d = int(math.prod(x.shape[1:]))
    u_se = float(neg_u.std() / math.sqrt(neg_u.numel())) if neg_u.numel() > 1 else 0.0
    out.update(dims=float(d), energy_data_mean=float(u.mean()),
               ll_nats=float(neg_u.mean()) - log_z, ll_nats_se=math.hypot(u_se, log_z_se))
    out["bits_per_dim"] = bits_per_dim(out["ll_nats"], d)
    if log_w_reverse is not None:
        lw = log_w_reverse.detach().double().cpu()
        if lw.numel() != n:
            raise ConfigError(f"log_w_reverse has {lw.numel()} weights for {n} examples")
        r = neg_u + lw[inside]
        out["ll_raise_nats"] = float(r.mean())
        out["ll_raise_nats_se"] = float(r.std() / math.sqrt(r.numel())) if r.numel() > 1 else 0.0
    return out


# --------------------------------------------------------------------------------------------
# the library functions
# --------------------------------------------------------------------------------------------
def tune_step_sizes(energy, prior: Prior, *, temperatures: int | Sequence[float] = 1000,
                    schedule: str = "sigmoid", sigmoid_delta: float = 4.0,
                    transition: str | Sampler = "mala", steps_per_temperature: int = 1,
                    target_accept: float | None = None, pilot: Pilot | None = None,
                    generator: torch.Generator | None = None, device=None, dtype=None,
                    registry: Any = None, progress: bool = True) -> Tensor:
    """The pilot pass alone: ε per β ``[T+1]`` (NaN at ``β₀`` and ``β_T``, which have no
    transitions). Its chains anneal along the same path and after every transition
    ``log ε ← log ε + (a − target_accept)``, ``a`` their mean acceptance probability; each
    visited β records the mean of its last ``log ε`` values (see :class:`Pilot`). The chains
    are discarded: the weighted runs use these ε fixed."""
    kw = dict(temperatures=temperatures, schedule=schedule, sigmoid_delta=sigmoid_delta,
              transition=transition, steps_per_temperature=steps_per_temperature,
              target_accept=target_accept, generator=generator, device=device, dtype=dtype,
              registry=registry, progress=progress)
    return (pilot or Pilot()).run(_annealer(energy, prior, kw))


def ais_log_z(energy, prior: Prior, *, temperatures: int | Sequence[float] = 1000,
              schedule: str = "sigmoid", sigmoid_delta: float = 4.0,
              transition: str | Sampler = "mala", steps_per_temperature: int = 1,
              n_chains: int = 256, batch_size: int | None = None,
              step_sizes: Tensor | Sequence[float] | None = None,
              target_accept: float | None = None, pilot: Pilot | None = None,
              data: Tensor | None = None, mixing_steps: int = 0,
              generator: torch.Generator | None = None, device=None, dtype=None,
              registry: Any = None, progress: bool = True) -> AISResult:
    """Forward AIS estimate of ``log Z = log ∫ exp(−U)`` (over ``prior``'s support).

    ``energy``: ``U`` (``[B, ...] -> [B]``, an ``nn.Module`` or any callable); ``prior``: the
    normalised start ``p₀`` (a :class:`~ebmkit.Prior`, e.g. ``model.prior``);
    ``temperatures``: ``T`` or a user list of β (see :func:`annealing_schedule`);
    ``transition``: a registered exact sampler's name (``mala``, ``hmc``; looked up in
    ``registry``, default a fresh one) or a :class:`~ebmkit.Sampler` (its config is used with
    the step size replaced per β, temperature 1 and no adaptation of its own);
    ``steps_per_temperature`` its transitions at each intermediate β; ``n_chains`` weighted
    chains, run ``batch_size`` at a time. ``step_sizes`` ``[T+1]`` fixes ε per β (e.g. a
    previous result's); otherwise a pilot pass (``pilot``, :func:`tune_step_sizes`) chooses
    them for ``target_accept`` (default: the transition's). All randomness comes from
    ``generator`` (a CPU generator drives chains on any device). ``device``/``dtype`` of the
    chains default to the energy's parameters' (CPU, float32). ``progress``: a rich bar on
    stderr, shown only when stderr is a terminal (``False``: never).

    Returns an :class:`AISResult`: ``log_z`` (``log mean w``, biased low in expectation),
    ``log_z_se``, ``ess``, per-β ``accept`` and ``step_sizes``; with held-out ``data``
    ``[n, *shape]`` also ``heldout`` (:func:`heldout_log_likelihood`: ``ll_nats``,
    ``ll_nats_se``, ``bits_per_dim``), a stochastic upper bound on their log-likelihood.

    ``mixing_steps > 0``: the transition's mixing at the target, ``result.mixing``. The chains'
    final states continue for ``mixing_steps`` transitions at β = 1 (the last step size), and
    the second half's energies and state projections give ESS and split-R̂ across chains
    (:func:`ebmkit.mixing.summarize`: ``ess_energy``, ``rhat_energy``, ``ess_per_draw``,
    ``ess_proj_min``, ``rhat_proj_max``; also ``mixing_accept``). The chains start where AIS
    left them, from its importance sampler rather than the target. Chains stuck in different
    modes therefore show as R̂ well above 1. AIS needs exactly that hopping, and its weights
    can only partly make up for a transition that never moves between modes.
    """
    kw = dict(temperatures=temperatures, schedule=schedule, sigmoid_delta=sigmoid_delta,
              transition=transition, steps_per_temperature=steps_per_temperature,
              target_accept=target_accept, generator=generator, device=device, dtype=dtype,
              registry=registry, progress=progress)
    if int(n_chains) < 1:
        raise ConfigError(f"n_chains must be >= 1, got {n_chains}")
    ann = _annealer(energy, prior, kw)
    if step_sizes is None:
        step_sizes = (pilot or Pilot()).run(ann)
    res = ann.forward(int(n_chains), step_sizes, batch_size)
    if int(mixing_steps) > 0:
        finite = res.step_sizes[1:res.temperatures][torch.isfinite(res.step_sizes[1:res.temperatures])]
        eps_last = float(finite[-1]) if finite.numel() else ann.kernels.step_size
        res = dataclasses.replace(res, mixing=ann.mixing(res.x, eps_last, int(mixing_steps)))
    if data is None:
        return res
    x = torch.as_tensor(data).to(ann.device, ann.dtype)
    return dataclasses.replace(res, heldout=heldout_log_likelihood(
        energy, x, res.log_z, res.log_z_se, prior=prior, batch_size=batch_size))


def reverse_ais_log_z(energy, prior: Prior, x: Tensor, *,
                      temperatures: int | Sequence[float] = 1000, schedule: str = "sigmoid",
                      sigmoid_delta: float = 4.0, transition: str | Sampler = "mala",
                      steps_per_temperature: int = 1, batch_size: int | None = None,
                      step_sizes: Tensor | Sequence[float] | None = None,
                      target_accept: float | None = None, pilot: Pilot | None = None,
                      generator: torch.Generator | None = None, device=None, dtype=None,
                      registry: Any = None, progress: bool = True) -> AISResult:
    """Reverse AIS from the states ``x`` ``[n, *shape]`` (one chain each) at ``β = 1`` down to
    ``p₀``. From exact samples of ``exp(−U)/Z``, ``result.log_z = −log mean w_rev`` is a
    stochastic upper bound on ``log Z`` (biased high); from held-out data it is a heuristic one.
    Per example, ``−U(x_i) + log_w[i]`` is RAISE's stochastic lower bound on the annealing
    model's ``log p_ann(x_i)`` (``result.heldout["ll_raise_nats"]`` is their mean, beside
    ``ll_nats`` = ``mean(−U(x)) − result.log_z``). Pass the forward run's ``step_sizes`` so both directions use
    the same kernels (the bidirectional sandwich); the other arguments are
    :func:`ais_log_z`'s. Points outside a uniform prior's box raise :class:`~ebmkit.DataError`.
    """
    kw = dict(temperatures=temperatures, schedule=schedule, sigmoid_delta=sigmoid_delta,
              transition=transition, steps_per_temperature=steps_per_temperature,
              target_accept=target_accept, generator=generator, device=device, dtype=dtype,
              registry=registry, progress=progress)
    ann = _annealer(energy, prior, kw)
    if step_sizes is None:
        step_sizes = (pilot or Pilot()).run(ann)
    res = ann.reverse(x, step_sizes, batch_size)
    x = x.detach().to(ann.device, ann.dtype)
    return dataclasses.replace(res, heldout=heldout_log_likelihood(
        energy, x, res.log_z, res.log_z_se, prior=prior, batch_size=batch_size,
        log_w_reverse=res.log_w))


# --------------------------------------------------------------------------------------------
# the evaluator
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class AISConfig:
    temperatures: int = param(1000, "Annealing steps T from the prior p0 (beta=0) to exp(-U) (beta=1): T weight increments, T-1 intermediate distributions.", min=1)
    schedule: str = param("sigmoid", "beta schedule: sigmoid (Grosse et al. 2013, dense at both ends) or linear.", choices=SCHEDULES)
    betas: tuple[float, ...] = param((), "A user schedule (increasing values in [0, 1]; 0 and 1 added); overrides temperatures and schedule.")
    sigmoid_delta: float = param(4.0, "Steepness delta of the sigmoid schedule.", min=0.0, min_exclusive=True)
    transition: str = param("mala", "The exact MH kernel at each beta: a registered Metropolis-adjusted sampler (mala, hmc).")
    steps_per_temperature: int = param(1, "Transitions at each intermediate beta.", min=1)
    n_chains: int = param(256, "Forward AIS chains (weights).", min=2)
    batch_size: int | None = param(None, "Chains run at once (default: all).", min=1)
    step_size: float | None = param(None, "Initial step size of the pilot (default: the transition's).", min=0.0, min_exclusive=True)
    target_accept: float | None = param(None, "Acceptance the pilot tunes each beta's step size for (default: the transition's target_accept).", min=0.0, max=1.0, min_exclusive=True)
    pilot_chains: int = param(128, "Chains of the pilot pass that chooses one step size per beta (never used in the weights).", min=1)
    pilot_temperatures: int = param(200, "Intermediate betas the pilot visits (step sizes interpolated between them).", min=1)
    pilot_updates: int = param(400, "Step-size updates of the pilot in all (at least one per visited beta).", min=0)
    pilot_warmup: int = param(50, "Extra step-size updates at the first visited beta.", min=0)
    base: str = param("prior", "The start p0 of the annealing: prior = the model's chain-start prior (a uniform box restricts the model, and Z, to the box); gaussian = N(centre, base_std^2), full support (Z over R^D), for data outside the box.", choices=("prior", "gaussian"))
    base_std: float | None = param(None, "Std of the gaussian base (default: the prior's std, or half the uniform box's width).", min=0.0, min_exclusive=True)
    mixing_steps: int = param(100, "Transitions at beta = 1 after the forward run, from its final states: ESS and split-R-hat of the transition at the target (transition_* metrics; half are burn-in). 0 = skip.", min=0)
    n_data: int = param(256, "Held-out examples: their log-likelihood, and one reverse chain each (0 = log Z only).", min=0)
    split: str = param("test", "Split of the held-out examples (falls back to train when the dataset has no such split).")
    reverse: bool = param(True, "Also run reverse AIS from the held-out examples (the other bound).")
    seed: int = param(0, "Seed of the chains and of the held-out subset.")
    progress: bool = param(True, "Progress bars (shown only when stderr is a terminal).")

    def __post_init__(self):
        if self.betas:
            annealing_schedule(self.betas)  # validates


class AIS(Evaluator):
    """Annealed importance sampling: ``log Z`` of ``exp(−U)`` and the held-out log-likelihood.

    Metrics (nats unless named otherwise): ``log_z`` (forward AIS, a stochastic lower bound),
    ``log_z_se`` (delta method), ``ess`` / ``ess_fraction`` of the weights, ``log_z_single``
    (``mean log w``, a looser lower bound), ``accept_mean`` / ``accept_min`` over the βs; with
    data, ``ll_nats`` = ``mean(−U(x)) − log_z`` (a stochastic upper bound on the held-out
    log-likelihood), ``ll_nats_se``, ``bits_per_dim`` (8-bit scale, the ``flow-likelihood``
    convention); with ``reverse``, ``log_z_reverse`` (from the held-out examples: a heuristic
    upper bound), ``log_z_gap``, ``ll_nats_reverse`` / ``bits_per_dim_reverse`` (the
    conservative side) and ``ll_raise_nats`` (RAISE: a stochastic lower bound on the annealing
    model's log-likelihood). With ``mixing_steps``, ``transition_ess_energy``,
    ``transition_rhat_energy``, ``transition_ess_proj_min``, ``transition_rhat_proj_max``,
    ``transition_mixing_accept``: the transition's mixing at β = 1 (see :func:`ais_log_z`).
    Per-β acceptance and step sizes go to ``ais.json``.
    """

    name = "ais"
    summary = ("Annealed importance sampling: log Z with its SE and ESS, held-out log-likelihood "
               "(nats, bits/dim) and the reverse-AIS bound.")
    Config = AISConfig

    def evaluate(self, model, data, out_dir):
        c = self.config
        dev = model.device
        prior = base_distribution(model.prior, c.base, c.base_std)
        gen = torch.Generator().manual_seed(c.seed)  # CPU: the same chains on any device
        transition = model.component("sampler", c.transition, None)
        temps: int | Sequence[float] = tuple(c.betas) if c.betas else c.temperatures
        common = dict(temperatures=temps, schedule=c.schedule, sigmoid_delta=c.sigmoid_delta,
                      transition=transition, steps_per_temperature=c.steps_per_temperature,
                      batch_size=c.batch_size, target_accept=c.target_accept, generator=gen,
                      device=dev, progress=c.progress)
        pilot = Pilot(chains=c.pilot_chains, temperatures=c.pilot_temperatures,
                      updates=c.pilot_updates, warmup=c.pilot_warmup, step_size=c.step_size)
        fwd = ais_log_z(model.energy, prior, n_chains=c.n_chains, pilot=pilot,
                        mixing_steps=c.mixing_steps, **common)
        m: dict[str, float] = {
            "log_z": fwd.log_z, "log_z_se": fwd.log_z_se, "ess": fwd.ess,
            "ess_fraction": fwd.ess / fwd.n, "log_z_single": fwd.log_z_single,
            "log_z_single_se": fwd.log_z_single_se, "accept_mean": fwd.accept_mean,
            "accept_min": fwd.accept_min, "temperatures": float(fwd.temperatures),
            "n_chains": float(fwd.n), "forward_seconds": fwd.seconds,
        }
        m.update({f"transition_{k}": v for k, v in (fwd.mixing or {}).items()})
        doc: dict[str, Any] = {"betas": fwd.betas.tolist(), "step_sizes": _listed(fwd.step_sizes),
                               "accept_forward": _listed(fwd.accept),
                               "support": _support(prior)}
        rev = None
        if data is not None and c.n_data > 0:
            x = self._heldout(data, c, model, m)
            held = heldout_log_likelihood(model.energy, x, fwd.log_z, fwd.log_z_se, prior=prior,
                                          batch_size=c.batch_size)
            m.update(held)
            x = x[_PriorTerms(prior).inside(x)]
            if c.reverse and x.shape[0] > 0:
                rev = reverse_ais_log_z(model.energy, prior, x, step_sizes=fwd.step_sizes,
                                        **common)
                r = rev.heldout or {}
                m.update({
                    "log_z_reverse": rev.log_z, "log_z_reverse_se": rev.log_z_se,
                    "log_z_gap": rev.log_z - fwd.log_z, "ess_reverse": rev.ess,
                    "log_z_reverse_single": rev.log_z_single,
                    "accept_reverse_mean": rev.accept_mean,
                    "ll_nats_reverse": r["ll_nats"],
                    "bits_per_dim_reverse": r["bits_per_dim"],
                    "ll_raise_nats": r["ll_raise_nats"],
                    "ll_raise_nats_se": r["ll_raise_nats_se"],
                })
                doc["accept_reverse"] = _listed(rev.accept)
        write_metrics(out_dir, self.name, m)
        write_json(out_dir, "ais.json", {**doc, "metrics": m})
        figures = {}
        path = figure_path(out_dir, "ais_schedule.png")
        if path is not None:
            figures["schedule"] = _plot(fwd, rev, path)
        return EvalResult(metrics=m, figures=figures)

    @staticmethod
    def _heldout(data, c: AISConfig, model, m: dict[str, float]) -> Tensor:
        try:
            x = data_batch(data, c.n_data, c.seed, split=c.split)
            m["heldout_from_train"] = 0.0
        except (DataError, ConfigError, ValueError, KeyError, FileNotFoundError):
            if c.split == "train":
                raise
            x = data_batch(data, c.n_data, c.seed, split="train")
            m["heldout_from_train"] = 1.0
        x = x.float().to(model.device)
        if tuple(x.shape[1:]) != tuple(model.shape):
            raise DataError(f"ais: the data's examples have shape {list(x.shape[1:])}, the model's "
                            f"{list(model.shape)}")
        return x


def base_distribution(prior: Prior, base: str = "prior", std: float | None = None) -> Prior:
    """The annealing's start: ``prior`` itself (``base="prior"``), or a Gaussian with its centre
    and ``std`` (default: the prior's own std, or half a uniform box's width), whose full
    support makes ``Z`` the normaliser over ``ℝ^D`` rather than over the box."""
    if base == "prior":
        return prior
    if base != "gaussian":
        raise ConfigError(f"base must be prior or gaussian, not {base!r}")
    if prior.distribution == "gaussian":
        return Prior(prior.shape, "gaussian", mean=prior.mean, std=std or prior.std)
    return Prior(prior.shape, "gaussian", mean=0.5 * (prior.low + prior.high),
                 std=std or 0.5 * (prior.high - prior.low))


def _energies(energy, x: Tensor, batch_size: int | None) -> Tensor:
    """``U(x)`` float64 on the CPU, in eval mode, ``batch_size`` examples at a time."""
    bs = int(batch_size or x.shape[0])
    module = energy if isinstance(energy, nn.Module) else None
    was = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        with torch.no_grad():
            return torch.cat([energy(x[i:i + bs]).detach().double().cpu()
                              for i in range(0, x.shape[0], bs)])
    finally:
        if module is not None:
            module.train(was)


def _listed(t: Tensor) -> list[float | None]:
    return [None if math.isnan(v) else v for v in t.tolist()]


def _support(prior: Prior) -> str:
    if prior.distribution == "uniform":
        return f"box [{prior.low}, {prior.high}]^D (the uniform prior's support)"
    return "R^D"


def _plot(fwd: AISResult, rev: AISResult | None, path: Path) -> Path:
    from ebmkit.plotting import new_figure, save_figure

    fig = new_figure(figsize=(10, 3.2))
    ax = fig.subplots(1, 3)
    t = torch.arange(fwd.betas.numel())
    ax[0].plot(t, fwd.betas, lw=1.2)
    ax[0].set_xlabel("t")
    ax[0].set_ylabel("β_t")
    ax[1].plot(t, fwd.step_sizes, lw=1.2)
    ax[1].set_yscale("log")
    ax[1].set_xlabel("t")
    ax[1].set_ylabel("step size ε (pilot)")
    ax[2].plot(t, fwd.accept, lw=1.0, label="forward")
    if rev is not None:
        ax[2].plot(t, rev.accept, lw=1.0, label="reverse")
    ax[2].set_ylim(0, 1)
    ax[2].set_xlabel("t")
    ax[2].set_ylabel("mean acceptance")
    ax[2].legend(fontsize=8)
    return save_figure(fig, path)

