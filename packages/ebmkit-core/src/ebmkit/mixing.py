"""Mixing diagnostics for MCMC draws: effective sample size and split-R̂ across chains.

"The long run has mixed" as a number, not a picture. Every function takes draws shaped
``[T, C, *dims]`` (T iterations × C chains; one scalar quantity per ``dims`` entry) and works
per ``dims`` entry, in float64 on the CPU. The estimators follow Vehtari, Gelman, Simpson,
Carpenter & Bürkner (2021), *Rank-normalization, folding, and localization: an improved R̂ for
assessing convergence of MCMC*, Bayesian Analysis 16(2):667–718 (doi:10.1214/20-BA1221), as
implemented in Stan (``stan::analyze``) and the ``posterior`` R package:

* :func:`ess` — multi-chain effective sample size (Geyer's initial monotone sequence on the
  autocorrelations combined across chains); ``rank_normalize=True`` gives the bulk-ESS;
* :func:`split_rhat` — split-R̂, rank-normalised and max'd with the folded variant by default;
* :func:`summarize` — both for a long run's per-chain energies and a few fixed random
  projections of its states, as a ``dict[str, float]`` for a metrics file;
* :func:`random_directions` — the seeded unit directions :func:`summarize` projects onto (record
  ``states.flatten(1) @ random_directions(D, k)`` along a long run instead of its states).

Notation (per ``dims`` entry). ``M`` chains of ``N`` draws ``θ[n, m]`` (after splitting, below),
``S = N·M`` draws in all::

    θ̄ₘ = mean over n of θ[n, m]                          chain means
    sₘ² = 1/(N−1) Σₙ (θ[n, m] − θ̄ₘ)²                     within-chain variances
    W  = 1/M Σₘ sₘ²                                       within-chain variance
    B  = N/(M−1) Σₘ (θ̄ₘ − θ̄)²                            between-chain variance (0 if M = 1)
    var⁺ = (N−1)/N · W + B/N                              pooled (over-)estimate of var(θ)

**Splitting.** Each chain is cut into its first and second half (the middle draw of an odd T is
dropped), so ``M = 2C`` and ``N = ⌊T/2⌋``: a chain that drifts (has not reached stationarity)
then looks like two chains that disagree.

**Rank normalisation** (Vehtari et al. 2021). All ``S`` draws are replaced by their
normal scores ``z = Φ⁻¹((r − 3/8) / (S + 1/4))``, ``r`` the rank among all draws of all chains
(ties get their average rank). The diagnostics then work for heavy-tailed draws (no finite
variance needed) and are invariant under monotone transformations of θ.

**Folding** (ibid.). ``ζ = |θ − median(θ)|`` (median over all draws, as the paper and the
``posterior`` package; ArviZ takes it over the split draws, which differs for an odd T): R̂ of
``ζ`` compares the chains' *scales*, which R̂ of θ (their locations) can miss.

Draws with a non-finite value give NaN for their ``dims`` entry; so do draws with no variation
at all. Each chain needs at least :data:`MIN_DRAWS` draws (each half of a split chain needs two
to have a variance); fewer is a one-line :class:`~ebmkit.errors.ConfigError`. The estimates
are themselves noisy when few draws are effectively independent: Vehtari et al. trust R̂
only together with a bulk-ESS of at least 100 per chain (400 for the four chains they advise).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import ConfigError

__all__ = ["MIN_DRAWS", "RHAT_MIXED", "ess", "random_directions", "split_rhat", "summarize"]

MIN_DRAWS = 4
"""Fewest draws per chain :func:`ess` and :func:`split_rhat` accept (two per split half)."""

RHAT_MIXED = 1.01
"""Vehtari et al. (2021)'s threshold: split-R̂ below it (with bulk-ESS ≳ 100 per chain) counts
as mixed."""


# --------------------------------------------------------------------------------------------
# input handling, splitting, rank normalisation
# --------------------------------------------------------------------------------------------
def _prepare(draws: Tensor, fn: str) -> tuple[Tensor, tuple[int, ...]]:
    """``[T, C, *dims]`` → (float64 CPU ``[T, C, D]``, ``dims``), with one-line errors."""
    if not isinstance(draws, Tensor):
        draws = torch.as_tensor(draws)
    if draws.ndim < 2:
        raise ConfigError(f"{fn} needs draws shaped [T, C, *dims] (T iterations x C chains); got "
                          f"shape {tuple(draws.shape)}")
    if draws.is_complex() or draws.dtype == torch.bool:
        raise ConfigError(f"{fn} needs real-valued draws; got dtype {draws.dtype}")
    t, c, dims = draws.shape[0], draws.shape[1], tuple(draws.shape[2:])
    if c < 1:
        raise ConfigError(f"{fn} needs at least one chain; got shape {tuple(draws.shape)}")
    if t < MIN_DRAWS:
        raise ConfigError(f"{fn} needs at least {MIN_DRAWS} draws per chain (each chain is split "
                          f"in half); got T={t} (draws shaped [T, C, *dims] = "
                          f"{tuple(draws.shape)})")
    x = draws.detach().to(device="cpu", dtype=torch.float64).reshape(t, c, math.prod(dims))
    return x, dims


def _split(x: Tensor) -> Tensor:
    """``[T, C, D]`` → ``[⌊T/2⌋, 2C, D]``: each chain's first and second half as two chains."""
    n = x.shape[0] // 2
    return torch.cat([x[:n], x[x.shape[0] - n:]], dim=1)


def _ranks(x: Tensor) -> Tensor:
    """Ranks 1..S of ``x`` ``[S, D]`` along dim 0, ties sharing their average rank."""
    s = x.shape[0]
    xs, idx = torch.sort(x, dim=0)
    pos = torch.arange(s, dtype=torch.float64).unsqueeze(1).expand_as(xs)
    differs = xs[1:] != xs[:-1]
    edge = torch.ones_like(differs[:1])
    first = torch.cat([edge, differs])  # a tie group starts here
    last = torch.cat([differs, edge])  # a tie group ends here
    start = torch.where(first, pos, torch.zeros_like(pos)).cummax(0).values
    end = torch.where(last, pos, torch.full_like(pos, s - 1)).flip(0).cummin(0).values.flip(0)
    return torch.empty_like(xs).scatter_(0, idx, (start + end) / 2 + 1)


def _rank_normalize(x: Tensor) -> Tensor:
    """Normal scores ``Φ⁻¹((r − 3/8)/(S + 1/4))`` of ``x`` ``[N, M, D]``, ranks over all N·M."""
    n, m, d = x.shape
    s = n * m
    r = _ranks(x.reshape(s, d))
    return torch.special.ndtri((r - 0.375) / (s + 0.25)).reshape(n, m, d)


def _fold(x: Tensor) -> Tensor:
    """``|x − median(x)|`` with the median over all draws of ``x`` ``[T, C, D]`` (the mean of the
    two middle values for an even count, as numpy's)."""
    t, c, d = x.shape
    xs = x.reshape(t * c, d).sort(dim=0).values
    k = t * c
    med = (xs[(k - 1) // 2] + xs[k // 2]) / 2
    return (x - med).abs()


def _finite(x: Tensor) -> Tensor:
    """``[D]`` bool: every draw of the entry is finite."""
    return torch.isfinite(x).flatten(0, 1).all(0)


# --------------------------------------------------------------------------------------------
# the estimators on prepared [N, M, D] draws
# --------------------------------------------------------------------------------------------
def _autocov(x: Tensor) -> Tensor:
    """Per-chain autocovariances ``γ̂ₘ(t) = 1/N Σₙ (θ[n]−θ̄ₘ)(θ[n+t]−θ̄ₘ)``, ``t = 0..N−1``, by FFT
    (zero-padded to ≥ 2N, so no wrap-around): ``[N, M, D]``."""
    n = x.shape[0]
    xc = x - x.mean(0, keepdim=True)
    nfft = 1 << (2 * n - 1).bit_length()
    f = torch.fft.rfft(xc, n=nfft, dim=0)
    return torch.fft.irfft(f.real.square() + f.imag.square(), n=nfft, dim=0)[:n] / n


def _ess_core(x: Tensor) -> Tensor:
    n, m, _ = x.shape
    acov = _autocov(x)  # [N, M, D]
    w = (acov[0] * n / (n - 1)).mean(0)  # W: mean within-chain variance
    var_plus = w * (n - 1) / n
    if m > 1:
        var_plus = var_plus + x.mean(0).var(0, correction=1)  # + B/N
    rho = 1 - (w - acov.mean(1)) / var_plus  # ρ̂_t, [N, D]
    rho[0] = 1.0
    # Geyer's initial positive sequence on the pair sums P_k = ρ̂_2k + ρ̂_2k+1 over the lags the
    # reference implementation uses (pair 0, then lags up to N−2): K pairs.
    k = 1 + max(0, (n - 3) // 2)
    pairs = rho[0:2 * k:2] + rho[1:2 * k:2]  # [K, D]
    stop = pairs <= 0
    stop[-1] = True  # the last pair available ends the sequence
    mstop = stop.to(torch.int8).argmax(0)  # first stopping pair, [D]
    # Geyer's initial monotone sequence: the kept pair sums made non-increasing
    mono = pairs.cummin(0).values
    kept = torch.arange(k).unsqueeze(1) < mstop.unsqueeze(0)
    total = torch.where(kept, mono, torch.zeros_like(mono)).sum(0)
    # Stan's improvement: the stopping pair's even term ρ̂_2k* when positive (it helps antithetic
    # chains); kept whatever its sign when the pair sum is not negative (the sequence ran out of
    # lags), as in the reference implementations
    even = rho.gather(0, (2 * mstop).unsqueeze(0)).squeeze(0)
    p_stop = pairs.gather(0, mstop.unsqueeze(0)).squeeze(0)
    extra = torch.where(p_stop >= 0, even, even.clamp(min=0))
    tau = -1 + 2 * total + extra
    s = n * m
    tau = tau.clamp(min=1 / math.log10(s))  # ESS at most S·log10(S)
    out = s / tau
    return torch.where(var_plus > 0, out, torch.full_like(out, math.nan))


def _rhat_core(x: Tensor) -> Tensor:
    n = x.shape[0]
    w = x.var(0, correction=1).mean(0)
    var_plus = w * (n - 1) / n + x.mean(0).var(0, correction=1)
    return (var_plus / w).sqrt()


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def ess(draws: Tensor, rank_normalize: bool = False, *, split: bool = True) -> Tensor:
    """Multi-chain effective sample size per ``dims`` entry: ``[T, C, *dims]`` → ``[*dims]``,
    float64 (a 0-d tensor for ``[T, C]`` draws).

    Vehtari et al. (2021) (Stan's ``ess_basic``; Geyer 1992, *Practical Markov chain Monte
    Carlo*, Statist. Sci. 7:473). With the module's notation, on split chains by default:

    1. per chain, autocovariances ``γ̂ₘ(t)`` by FFT (biased, ``1/N``);
    2. combined autocorrelation ``ρ̂_t = 1 − (W − mean over m of γ̂ₘ(t)) / var⁺`` (``ρ̂₀ = 1``),
       which also counts disagreement between chains (``var⁺ > W``) as correlation;
    3. Geyer's initial positive sequence: pair sums ``P̂_k = ρ̂_2k + ρ̂_2k+1`` are summed while
       positive (a stationary chain's are), up to the first ``P̂_k ≤ 0``; initial monotone
       sequence: each kept ``P̂_k`` is lowered to ``min(P̂_0..P̂_k)``;
    4. ``τ̂ = −1 + 2 Σ_{k<k*} P̂_k + max(ρ̂_{2k*}, 0)`` (``k*`` the stopping pair, Stan's
       improved estimate), and ``ESS = S / τ̂`` with ``S = N·M``, capped at ``S·log10 S``.

    The pairs run over lags ``0 .. N−2`` (the last pair available ends the sequence), as in
    ArviZ's ``_ess``, which this matches to rounding.

    For one AR(1) chain ``x_t = φ x_{t−1} + √(1−φ²) ε_t``, ``τ = (1+φ)/(1−φ)``: ESS/S tends to
    ``(1−φ)/(1+φ)``. ``C = 1`` is fine (split, it is two chains).

    ``rank_normalize=True`` gives the *bulk-ESS* (ESS of the rank-normalised split chains: for
    heavy tails and, as R̂, invariant under monotone maps). ``split=False`` uses the whole chains
    (the classic multi-chain ESS). Raises :class:`~ebmkit.errors.ConfigError` for fewer than
    :data:`MIN_DRAWS` draws per chain.
    """
    x, dims = _prepare(draws, "ess")
    ok = _finite(x)
    x = torch.where(ok, x, torch.zeros_like(x))
    if split:
        x = _split(x)
    if rank_normalize:
        x = _rank_normalize(x)
    out = _ess_core(x)
    return torch.where(ok, out, torch.full_like(out, math.nan)).reshape(dims)


def split_rhat(draws: Tensor, rank_normalize: bool = True) -> Tensor:
    """Split-R̂ per ``dims`` entry: ``[T, C, *dims]`` → ``[*dims]``, float64.

    Each chain is split in half (``M = 2C`` chains of ``N = ⌊T/2⌋``), and
    ``R̂ = √(var⁺ / W)`` with ``var⁺ = (N−1)/N · W + B/N`` (Gelman & Rubin 1992; Gelman et al.,
    *Bayesian Data Analysis*, 3rd ed.): ≈ 1 when all (half-)chains sample the same distribution, above 1 when they
    disagree, a chain drifts within itself (its halves differ) or has not reached stationarity.

    ``rank_normalize=True`` (default) is Vehtari et al. (2021)'s R̂: the maximum of the
    *bulk* R̂ (of the rank-normalised split chains) and the *tail* R̂ (of the rank-normalised
    folded draws ``|θ − median θ|``, split). ``rank_normalize=False``: the plain split-R̂ of θ.
    Vehtari et al. call a quantity mixed at R̂ < 1.01 (:data:`RHAT_MIXED`). ``C = 1`` is fine.
    Raises :class:`~ebmkit.errors.ConfigError` for fewer than :data:`MIN_DRAWS` draws per chain.
    """
    x, dims = _prepare(draws, "split_rhat")
    ok = _finite(x)
    x = torch.where(ok, x, torch.zeros_like(x))
    if rank_normalize:
        out = torch.maximum(_rhat_core(_rank_normalize(_split(x))),
                            _rhat_core(_rank_normalize(_split(_fold(x)))))
    else:
        out = _rhat_core(_split(x))
    return torch.where(ok, out, torch.full_like(out, math.nan)).reshape(dims)


def random_directions(dim: int, k: int, *, seed: int = 0) -> Tensor:
    """``k`` fixed random unit vectors in ``R^dim`` as the columns of a float64 CPU ``[dim, k]``
    (i.i.d. normal, normalised; from a CPU generator seeded with ``seed``, so the same on every
    machine). :func:`summarize` projects states onto these."""
    if dim < 1 or k < 1:
        raise ConfigError(f"random_directions needs dim >= 1 and k >= 1; got dim={dim}, k={k}")
    g = torch.Generator().manual_seed(int(seed))
    v = torch.randn(dim, k, generator=g, dtype=torch.float64)
    return v / torch.linalg.vector_norm(v, dim=0, keepdim=True)


def summarize(energies: Tensor, states: Tensor | None = None, *, projections: int = 4,
              seed: int = 0, projected: Tensor | None = None) -> dict[str, float]:
    """Mixing of a set of chains in a few numbers, for a metrics file.

    ``energies`` ``[T, C]``: each chain's energy per recorded iteration. Returns

    * ``ess_energy``: bulk-ESS of the energy (:func:`ess` with ``rank_normalize=True``), the
      number of effectively independent draws among the ``T·C``;
    * ``rhat_energy``: its split-R̂ (:func:`split_rhat`, rank-normalised and folded);
    * ``ess_per_draw``: ``ess_energy / (T·C)`` (1 for independent draws; ``1/τ`` in general);

    and, when ``states`` ``[T, C, *shape]`` is given, ``ess_proj_min`` / ``rhat_proj_max``: the
    smallest bulk-ESS and the largest split-R̂ over ``projections`` scalar summaries of the
    states, ``⟨vec(x), u_j⟩`` with the seeded unit directions ``u_j`` of
    :func:`random_directions` (``D = prod(shape)``, ``seed``). The energy is one direction in
    which chains can fail to mix; random projections see others (a mode the energy cannot tell
    apart from another, a slow drift in pixel space). Those keys are absent without ``states``.

    ``projected`` ``[T, C, k]``: states already projected (``x.flatten(1) @
    random_directions(D, k, seed=...)`` per recorded step, e.g. along a long image run whose
    states are too big to keep); used instead of ``states``. Raises
    :class:`~ebmkit.errors.ConfigError` for mismatched shapes or fewer than :data:`MIN_DRAWS`
    draws per chain.
    """
    if not isinstance(energies, Tensor):
        energies = torch.as_tensor(energies)
    if energies.ndim != 2:
        raise ConfigError("summarize needs energies shaped [T, C] (T iterations x C chains); got "
                          f"shape {tuple(energies.shape)}")
    t, c = energies.shape
    e_ess = float(ess(energies, rank_normalize=True))
    out = {"ess_energy": e_ess, "rhat_energy": float(split_rhat(energies)),
           "ess_per_draw": e_ess / (t * c)}
    if projected is None and states is not None:
        if not isinstance(states, Tensor):
            states = torch.as_tensor(states)
        if states.ndim < 2 or tuple(states.shape[:2]) != (t, c):
            raise ConfigError(f"summarize needs states shaped [T, C, *shape] = [{t}, {c}, ...] "
                              f"like the energies; got shape {tuple(states.shape)}")
        if projections < 1:
            raise ConfigError(f"summarize needs projections >= 1 with states; got {projections}")
        flat = states.detach().reshape(t, c, -1)
        if not flat.is_floating_point():
            flat = flat.double()
        u = random_directions(flat.shape[-1], projections, seed=seed).to(flat.device, flat.dtype)
        projected = flat @ u
    if projected is not None:
        if not isinstance(projected, Tensor):
            projected = torch.as_tensor(projected)
        if projected.ndim != 3 or tuple(projected.shape[:2]) != (t, c) or projected.shape[2] < 1:
            raise ConfigError(f"summarize needs projected states shaped [T, C, k] = [{t}, {c}, k]"
                              f" like the energies; got shape {tuple(projected.shape)}")
        out["ess_proj_min"] = float(ess(projected, rank_normalize=True).min())
        out["rhat_proj_max"] = float(split_rhat(projected).max())
    return out
