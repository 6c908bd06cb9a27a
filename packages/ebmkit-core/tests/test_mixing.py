"""Mixing diagnostics (ebmkit.mixing, issue 25 item 6) on chains whose autocorrelation is known.

AR(1) chains ``x_t = φ x_{t−1} + √(1−φ²) ε_t`` (stationary from ``x_0 ~ N(0, 1)``) have
``ρ_t = φ^t``, integrated autocorrelation time ``τ = 1 + 2Σρ_t = (1+φ)/(1−φ)`` and so
``ESS/S → (1−φ)/(1+φ)`` for ``S`` draws in all. The tolerances are derived, not tuned:

**ESS.** Madras & Sokal (1988, J. Stat. Phys. 50:109; Sokal 1997, "Monte Carlo methods in
statistical mechanics", §3): an autocorrelation-time estimator summing the lags up to a
window ``M`` has ``var(τ̂)/τ² ≈ 2(2M+1)/S``, and ``ESS = S/τ̂`` has the same relative sd to first
order. Geyer's sequence stops where the autocorrelations sink into their noise, ``ρ̂_t`` having
sd ``≈ 1/√S``: ``M`` = the first lag with ``φ^M ≤ S^(−1/2)``, at least 2 (pair 0 and usually one
more for φ = 0). See :func:`ess_rel_sd`. Measured once over independent replicates (seeded
AR(1) batches, ``ess(...)`` of ``[T, C, R]``), the spread is at or below that prediction:

    T, C      S       φ=0: sd / σ   φ=0.5   φ=0.9    worst |error| of all replicates
    1000, 8   8000    0.81          0.95    0.91     3.65 σ   (300 replicates)
    2000, 16  32000   0.90          0.95    0.97     4.1 σ    (500 replicates)
    4000, 16  64000   0.95          0.94    1.00     4.15 σ   (100 replicates)
    2000, 1   2000    0.87          0.92    0.80     3.42 σ   (300 replicates)
    4000, 64  256000  0.85          -       -        4.78 σ   (400 replicates; 1 beyond 4 σ)

The error is heavier-tailed than a normal's on one side, mostly for φ = 0: ESS is
underestimated when noise keeps Geyer's sequence going for a few pairs (its mean is ≈ −0.15 σ to
−0.4 σ), so a single estimate is asserted within **5 σ** of the truth. (The test's own φ = 0
chains sit at −4.2 σ, in that tail; 40 other seeds for each φ, plain and bulk, all within
2.5 σ.)
``test_ess_spread_matches_its_derivation`` re-measures the spread and checks that σ does not
underestimate it (the side the 5 σ bound needs).

**R̂.** With ``M`` (split) chains of ``N`` draws, ``R̂² = (N−1)/N + (B/N)/W``. For stationary
chains the chain means have variance ``σ²τ/N``, ``E[W] ≈ σ²(1 − τ/N)`` and ``(B/N)/(σ²τ/N)`` is
``χ²_{M−1}/(M−1)`` (sd ``√(2/(M−1))``), so ``R̂ ≈ 1 + (τF − 1)/(2N)``: mean ``1 + (τ−1)/(2N)``
(R̂'s own finite-sample bias: why 1.01 and not 1 is the threshold) and sd
``√(2/(M−1))·τ/(2N)``. See :func:`rhat_mean_sd`; ``test_rhat_spread_matches_its_derivation``
checks both over replicates. Well-mixed chains are asserted within 5 sd of that mean.

(One-off cross-check, not a test dependency: ``ess`` plain, split and bulk agree with ArviZ
0.23.4's ``_ess`` / ``ess(method="bulk")`` to 3e-15 relative on AR(1) chains with
φ ∈ {−0.6, 0, 0.5, 0.9, 0.99}, T from 4 to 400, C ∈ {1, 2, 4}, ties included; ``split_rhat``
with ArviZ's ``rhat(method="split"/"rank")`` to 1e-15 for even T (for an odd T ArviZ folds about
the split draws' median, ebmkit about all draws', as the paper and Stan's ``posterior``.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from ebmkit import EBM, Energy, param
from ebmkit.builtin.initializers import NoiseConfig, NoiseInit
from ebmkit.builtin.longrun import LongRun, LongRunConfig
from ebmkit.builtin.samplers import MALA, Langevin, LangevinConfig, MALAConfig
from ebmkit.errors import ConfigError
from ebmkit.mixing import MIN_DRAWS, ess, random_directions, split_rhat, summarize
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# known chains and the derived tolerances
# ---------------------------------------------------------------------------------------------
def ar1(shape: tuple[int, ...], phi: float, seed: int) -> Tensor:
    """Stationary AR(1) chains along dim 0 of ``shape`` (``[T, C, ...]``), unit variance."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(shape, generator=g, dtype=F64)
    x = torch.empty_like(e)
    x[0] = e[0]
    s = math.sqrt(1 - phi**2)
    for t in range(1, shape[0]):
        x[t] = phi * x[t - 1] + s * e[t]
    return x


def tau(phi: float) -> float:
    return (1 + phi) / (1 - phi)


def ess_rel_sd(phi: float, s: int) -> float:
    """Madras–Sokal relative sd of ESS from ``s`` draws of an AR(1) chain (module docstring)."""
    m = 2 if phi == 0 else max(2, math.ceil(math.log(s) / 2 / -math.log(abs(phi))))
    return math.sqrt(2 * (2 * m + 1) / s)


def rhat_mean_sd(phi: float, t: int, c: int) -> tuple[float, float]:
    """Mean and sd of split-R̂ for ``c`` stationary AR(1) chains of ``t`` draws (docstring)."""
    n, m = t // 2, 2 * c
    return 1 + (tau(phi) - 1) / (2 * n), math.sqrt(2 / (m - 1)) * tau(phi) / (2 * n)


def classic_rhat(x: Tensor) -> Tensor:
    """Gelman–Rubin R̂ of whole (unsplit) chains ``[T, C, D]``: blind to a common trend."""
    n = x.shape[0]
    w = x.var(0).mean(0)
    return ((n - 1) / n + x.mean(0).var(0) / w).sqrt()


def geyer_reference(x: list[list[float]]) -> float:
    """ESS of chains ``x[m][n]`` (already split) by the plain loops of ArviZ's ``_ess``
    (Vehtari et al. 2021; Stan), direct sums for the autocovariances: an independent
    transcription to check the vectorised one."""
    m, n = len(x), len(x[0])
    means = [sum(c) / n for c in x]
    acov = [[sum((c[i] - mu) * (c[i + t] - mu) for i in range(n - t)) / n for t in range(n)]
            for c, mu in zip(x, means, strict=True)]
    mean_var = sum(a[0] for a in acov) / m * n / (n - 1)
    var_plus = mean_var * (n - 1) / n
    if m > 1:
        gm = sum(means) / m
        var_plus += sum((mu - gm) ** 2 for mu in means) / (m - 1)
    rho_at = lambda t: 1 - (mean_var - sum(a[t] for a in acov) / m) / var_plus  # noqa: E731
    rho = [0.0] * n
    even, odd = 1.0, rho_at(1)
    rho[0], rho[1] = even, odd
    t = 1
    while t < n - 3 and even + odd > 0:
        even, odd = rho_at(t + 1), rho_at(t + 2)
        if even + odd >= 0:
            rho[t + 1], rho[t + 2] = even, odd
        t += 2
    max_t = t - 2
    if even > 0:
        rho[max_t + 1] = even
    t = 1
    while t <= max_t - 2:
        if rho[t + 1] + rho[t + 2] > rho[t - 1] + rho[t]:
            rho[t + 1] = rho[t + 2] = (rho[t - 1] + rho[t]) / 2
        t += 2
    s = m * n
    tau_hat = -1 + 2 * sum(rho[: max_t + 1]) + sum(rho[max_t + 1: max_t + 2])
    return s / max(tau_hat, 1 / math.log10(s))


# ---------------------------------------------------------------------------------------------
# ESS
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rank_normalize", [False, True])
@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9])
def test_ess_of_ar1_chains_is_the_true_one(phi, rank_normalize):
    t, c = 4000, 64
    s = t * c
    x = ar1((t, c), phi, seed=int(phi * 10) + 1)
    est = float(ess(x, rank_normalize=rank_normalize)) / s
    true = (1 - phi) / (1 + phi)
    assert abs(est / true - 1) < 5 * ess_rel_sd(phi, s), (est, true)


@pytest.mark.parametrize("c", [1, 8])
def test_independent_draws_have_ess_t_times_c(c):
    t = 2000
    x = torch.randn(t, c, 5, generator=torch.Generator().manual_seed(c), dtype=F64)
    rel = ess(x) / (t * c) - 1
    assert rel.shape == (5,)
    assert (rel.abs() < 5 * ess_rel_sd(0.0, t * c)).all(), rel


def test_ess_spread_matches_its_derivation():
    """Over R independent replicates (one ``ess`` call on ``[T, C, R]``) the estimates' sd is no
    larger than the Madras–Sokal σ the tolerance above uses, up to the sampling error of an sd
    from R values (relative ≈ 1/√(2(R−1)), 5 of them), and not vacuously small either."""
    t, c, r = 1000, 8, 200
    slack = 5 / math.sqrt(2 * (r - 1))
    for phi in (0.0, 0.5, 0.9):
        true = (1 - phi) / (1 + phi)
        rel = ess(ar1((t, c, r), phi, seed=100 + int(10 * phi))) / (t * c) / true - 1
        ratio = float(rel.std()) / ess_rel_sd(phi, t * c)
        assert 0.5 < ratio < 1 + slack, (phi, ratio)


@pytest.mark.parametrize("t", [4, 5, 9, 40, 101])
@pytest.mark.parametrize("c", [1, 3])
def test_ess_matches_the_reference_loops(t, c):
    g = torch.Generator().manual_seed(t * 10 + c)
    for phi in (-0.6, 0.0, 0.5, 0.95):
        x = ar1((t, c), phi, seed=int(torch.randint(1 << 30, (1,), generator=g)))
        n = t // 2
        halves = [x[:n, j].tolist() for j in range(c)] + [x[t - n:, j].tolist() for j in range(c)]
        assert float(ess(x)) == pytest.approx(geyer_reference(halves), rel=1e-10)
        whole = [x[:, j].tolist() for j in range(c)]
        assert float(ess(x, split=False)) == pytest.approx(geyer_reference(whole), rel=1e-10)


def test_bulk_ess_and_rank_rhat_ignore_monotone_maps():
    x = ar1((500, 4, 3), 0.7, seed=5)
    for f in (torch.exp, lambda v: v**3, lambda v: 5 * v - 2):
        assert torch.allclose(ess(f(x), rank_normalize=True), ess(x, rank_normalize=True),
                              rtol=1e-12)
        assert torch.allclose(split_rhat(f(x)), split_rhat(x), rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(t=st.integers(MIN_DRAWS, 30), c=st.integers(1, 4), seed=st.integers(0, 2**31 - 1),
       scale=st.floats(1e-3, 1e3), ties=st.booleans())
def test_any_non_constant_draws_give_finite_bounded_numbers(t, c, seed, scale, ties):
    x = scale * torch.randn(t, c, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)
    if ties:
        x = x.round()
    n = t // 2
    s = 2 * n * c
    kept = torch.cat([x[:n], x[t - n:]], 1)  # the split draws (an odd T's middle one dropped)
    ok = kept.flatten(0, 1).std(0) > 0
    for e in (ess(x), ess(x, rank_normalize=True), ess(x, split=False)):
        assert torch.isfinite(e[ok]).all() and (e[ok] > 0).all()
        assert (e[ok] <= max(s, t * c) * math.log10(max(s, t * c)) + 1e-9).all()
    r = split_rhat(x, rank_normalize=False)
    assert ((r >= 0) | r.isnan()).all()


# ---------------------------------------------------------------------------------------------
# split-R̂
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("phi", [0.0, 0.5, 0.9])
def test_rhat_of_well_mixed_chains_is_one(phi):
    t, c = 4000, 64
    x = ar1((t, c), phi, seed=20 + int(10 * phi))
    mean, sd = rhat_mean_sd(phi, t, c)
    for rank in (False, True):
        r = float(split_rhat(x, rank_normalize=rank))
        assert abs(r - mean) < 5 * sd, (rank, r, mean, sd)
        assert r < 1.01  # mixed by Vehtari et al.'s threshold


def test_rhat_spread_matches_its_derivation():
    """Mean and sd of plain split-R̂ over R replicates vs ``rhat_mean_sd``: the mean within 5
    standard errors (sd/√R), the sd within 5 sampling errors of an sd (relative 1/√(2(R−1)))."""
    t, c, r = 1000, 8, 200
    for phi in (0.0, 0.5, 0.9):
        rh = split_rhat(ar1((t, c, r), phi, seed=200 + int(10 * phi)), rank_normalize=False)
        mean, sd = rhat_mean_sd(phi, t, c)
        assert abs(float(rh.mean()) - mean) < 5 * sd / math.sqrt(r), (phi, float(rh.mean()), mean)
        ratio = float(rh.std()) / sd
        assert abs(ratio - 1) < 5 / math.sqrt(2 * (r - 1)), (phi, ratio)


def test_rhat_flags_chains_with_different_means():
    t, c = 1000, 4
    offsets = torch.arange(c, dtype=F64)  # chain j sits at mean j
    x = torch.randn(t, c, generator=torch.Generator().manual_seed(1), dtype=F64) + offsets
    # split: 8 chains whose means are 0,0,1,1,2,2,3,3 (sample variance 10/7), W ≈ 1
    expected = math.sqrt((t // 2 - 1) / (t // 2) + 10 / 7)
    plain = float(split_rhat(x, rank_normalize=False))
    # the chain means and W are estimated from 500 draws per half: errors of order 1/√500
    assert plain == pytest.approx(expected, rel=0.05)
    assert float(split_rhat(x)) > 1.1 and plain > 1.1


def test_rhat_flags_chains_with_different_scales_when_folded():
    t, c = 1000, 4
    scales = torch.tensor([1.0, 1.0, 3.0, 3.0], dtype=F64)
    x = torch.randn(t, c, generator=torch.Generator().manual_seed(2), dtype=F64) * scales
    mean, sd = rhat_mean_sd(0.0, t, c)
    assert abs(float(split_rhat(x, rank_normalize=False)) - mean) < 5 * sd * 3  # same location
    assert float(split_rhat(x)) > 1.1  # the folded draws see the scales differ


def test_split_rhat_catches_a_trend_within_each_chain():
    t, c, a = 1000, 4, 3.0
    trend = a * (torch.arange(t, dtype=F64) / t - 0.5)
    x = torch.randn(t, c, generator=torch.Generator().manual_seed(3), dtype=F64) + trend[:, None]
    # all chains alike: the whole-chain R̂ sees nothing
    mean, sd = rhat_mean_sd(0.0, t, c)
    assert abs(float(classic_rhat(x[:, :, None])) - 1) < 5 * sd * 2
    # split halves' means are ∓a/4, W = 1 + (a/2)²/12: R̂² ≈ 1 + (8·(a/4)²/7) / W
    w = 1 + (a / 2) ** 2 / 12
    expected = math.sqrt(1 + 8 * (a / 4) ** 2 / 7 / w)
    plain = float(split_rhat(x, rank_normalize=False))
    assert plain == pytest.approx(expected, rel=0.05) and plain > 1.1
    assert float(split_rhat(x)) > 1.1


# ---------------------------------------------------------------------------------------------
# shapes, dtypes, errors, edge values
# ---------------------------------------------------------------------------------------------
def test_shapes_and_dtype():
    x = torch.randn(40, 3, 2, 5, generator=torch.Generator().manual_seed(0))  # float32
    for fn in (ess, split_rhat):
        assert fn(x).shape == (2, 5) and fn(x).dtype == F64
        assert fn(x[:, :, 0, 0]).shape == () and fn(x[:, :, 0, 0]).dtype == F64
        assert fn(x.round().to(torch.int64)).shape == (2, 5)  # integers are fine
    assert ess(x, rank_normalize=True).shape == (2, 5)
    assert split_rhat(x, rank_normalize=False).shape == (2, 5)


def test_one_chain_is_fine():
    x = ar1((2000, 1), 0.5, seed=9)
    assert abs(float(ess(x)) / 2000 / (1 / 3) - 1) < 5 * ess_rel_sd(0.5, 2000)
    mean, sd = rhat_mean_sd(0.5, 2000, 1)
    assert abs(float(split_rhat(x, rank_normalize=False)) - mean) < 5 * sd


@pytest.mark.parametrize("fn", [ess, split_rhat, lambda d: summarize(d[:, :, 0])])
def test_too_few_draws_is_one_line_config_error(fn):
    with pytest.raises(ConfigError, match=r"at least 4 draws per chain.*T=3") as err:
        fn(torch.zeros(3, 5, 2))
    assert "\n" not in str(err.value)


def test_bad_shapes_are_one_line_config_errors():
    for bad in (torch.zeros(10), torch.zeros(())):
        for fn in (ess, split_rhat):
            with pytest.raises(ConfigError, match=r"\[T, C, \*dims\]"):
                fn(bad)
    with pytest.raises(ConfigError, match=r"energies shaped \[T, C\]"):
        summarize(torch.zeros(10, 2, 3))
    with pytest.raises(ConfigError, match=r"states shaped \[T, C, \*shape\] = \[10, 2"):
        summarize(torch.randn(10, 2), torch.randn(10, 3, 4))
    with pytest.raises(ConfigError, match="projected states shaped"):
        summarize(torch.randn(10, 2), projected=torch.randn(10, 2))
    with pytest.raises(ConfigError, match="projections >= 1"):
        summarize(torch.randn(10, 2), torch.randn(10, 2, 4), projections=0)


def test_non_finite_or_constant_entries_are_nan_and_stay_separate():
    x = torch.randn(50, 4, 4, generator=torch.Generator().manual_seed(4), dtype=F64)
    x[7, 2, 0] = math.nan
    x[3, 1, 1] = math.inf
    x[:, :, 2] = 1.5
    for out in (ess(x), ess(x, rank_normalize=True), split_rhat(x), split_rhat(x, False)):
        assert out[:3].isnan().all() and torch.isfinite(out[3])
    stuck = torch.randn(50, 4, dtype=F64) * 0 + torch.arange(4.0, dtype=F64)  # each chain frozen
    assert float(split_rhat(stuck, rank_normalize=False)) == math.inf


# ---------------------------------------------------------------------------------------------
# summarize
# ---------------------------------------------------------------------------------------------
def test_summarize_keys_and_numbers():
    t, c = 400, 8
    e = ar1((t, c), 0.5, seed=11)
    m = summarize(e)
    assert set(m) == {"ess_energy", "rhat_energy", "ess_per_draw"}
    assert all(isinstance(v, float) for v in m.values())
    assert m["ess_energy"] == float(ess(e, rank_normalize=True))
    assert m["rhat_energy"] == float(split_rhat(e))
    assert m["ess_per_draw"] == pytest.approx(m["ess_energy"] / (t * c))

    states = ar1((t, c, 3, 5), 0.5, seed=12)
    m2 = summarize(e, states, projections=6, seed=3)
    assert set(m2) == set(m) | {"ess_proj_min", "rhat_proj_max"}
    proj = states.reshape(t, c, 15) @ random_directions(15, 6, seed=3)
    assert m2["ess_proj_min"] == pytest.approx(float(ess(proj, rank_normalize=True).min()))
    assert m2["rhat_proj_max"] == pytest.approx(float(split_rhat(proj).max()))
    assert summarize(e, projected=proj) == pytest.approx(m2)  # recorded projections: the same
    assert summarize(e, states, projections=6, seed=3) == m2  # seeded
    assert summarize(e, states, projections=6, seed=4) != m2


def test_random_directions_are_unit_and_seeded():
    u = random_directions(64, 5, seed=7)
    assert u.shape == (64, 5) and u.dtype == F64
    assert torch.allclose(u.norm(dim=0), torch.ones(5, dtype=F64))
    assert torch.equal(u, random_directions(64, 5, seed=7))
    assert not torch.equal(u, random_directions(64, 5, seed=8))


# ---------------------------------------------------------------------------------------------
# the longrun evaluator
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class BowlConfig:
    a: float = param(1.0, "curvature")


class Bowl(Energy):
    """``U = ‖x‖²/2``: ULA with gradient coefficient c is, per coordinate, the AR(1) chain
    ``x ← (1−c) x + b z`` (φ = 1 − c)."""

    name = "test-mixing-bowl"
    Config = BowlConfig

    def __init__(self, config, shape):
        super().__init__(config, shape)
        self.a = nn.Parameter(torch.tensor(config.a))

    def forward(self, x):
        return 0.5 * self.a * x.flatten(1).pow(2).sum(1)


SHAPE = (1, 8, 8)


def bowl_model(sampler):
    return EBM(energy=Bowl(BowlConfig(), SHAPE), sampler=sampler,
               initializer=NoiseInit(NoiseConfig(), SHAPE), steps=5)


def ula(coef):
    return Langevin(LangevinConfig(grad_coef=coef, noise_std=math.sqrt(2 * coef), steps=5))


@pytest.mark.parametrize(("coef", "draws"), [(0.5, 1000), (0.1, 250)])
def test_longrun_reports_the_known_mixing_of_ula_on_a_bowl(coef, draws, one_thread):
    """Each coordinate is an AR(1) chain with φ = 1 − c, so (kept every ``thin`` steps) each
    projection on a unit direction is AR(1) with φ^thin and the energy, a sum of squares of
    independent coordinates, has autocorrelation corr(x_t², x_{t+k}²) = φ^(2k): AR(1)-like with
    ψ = φ^(2·thin). The chains start from the model's short-run samples; the burn-in (the first
    half, 1000 steps) shrinks their distance from stationarity by φ^1000 ≈ 0. The energy is a
    scaled χ²₆₄, close to normal, so its normal scores keep its autocorrelation."""
    n, steps = 64, 2000
    r = LongRun(LongRunConfig(n=n, steps=steps, snapshots=3, mixing_draws=draws)).evaluate(
        bowl_model(ula(coef)), None, None)
    m = r.metrics
    thin = steps // 2 // draws
    assert m["mixing_thin"] == thin and m["mixing_draws"] == draws
    s = draws * n
    phi = (1 - coef) ** thin
    psi = phi**2
    true_e = (1 - psi) / (1 + psi)
    assert abs(m["ess_per_draw"] / true_e - 1) < 5 * ess_rel_sd(psi, s), (m, true_e)
    assert m["ess_energy"] == pytest.approx(m["ess_per_draw"] * s)
    mean, sd = rhat_mean_sd(psi, draws, n)
    assert abs(m["rhat_energy"] - mean) < 5 * sd
    # the smallest of 4 projections' ESS and the largest R̂: each within its bounds
    true_p = (1 - phi) / (1 + phi)
    assert abs(m["ess_proj_min"] / s / true_p - 1) < 5 * ess_rel_sd(phi, s)
    mean, sd = rhat_mean_sd(phi, draws, n)
    assert m["rhat_proj_max"] < mean + 5 * sd


@pytest.mark.parametrize("which", ["ula", "mala-adapting"])
def test_longrun_recording_leaves_the_chains_unchanged(which, one_thread):
    if which == "ula":
        sampler = ula(0.2)
    else:
        sampler = MALA(MALAConfig(step_size=0.9, adapt_steps=20, steps=5))
    model = bowl_model(sampler)
    cfg = dict(n=16, steps=120, snapshots=4)
    on = LongRun(LongRunConfig(**cfg)).evaluate(model, None, None).metrics
    off = LongRun(LongRunConfig(**cfg, mixing_draws=0)).evaluate(model, None, None).metrics
    assert "ess_energy" in on and "ess_energy" not in off
    for k, v in off.items():
        assert on[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
    if which != "ula":
        assert "accept_rate" in on


def test_longrun_mixing_keys_need_enough_draws(one_thread):
    model = bowl_model(ula(0.2))
    short = LongRun(LongRunConfig(n=4, steps=6, snapshots=2)).evaluate(model, None, None).metrics
    assert not {"ess_energy", "rhat_energy", "mixing_draws"} & set(short)  # steps 4..6: 3 < 4
    m = LongRun(LongRunConfig(n=4, steps=7, snapshots=2, projections=0)).evaluate(
        model, None, None).metrics
    assert m["mixing_draws"] == 4 and {"ess_energy", "rhat_energy", "ess_per_draw"} <= set(m)
    assert not {"ess_proj_min", "rhat_proj_max"} & set(m)
    assert all(isinstance(v, (int, float)) for v in m.values())


# ---------------------------------------------------------------------------------------------
# any sampler's run(record=True): ChainResult.mixing
# ---------------------------------------------------------------------------------------------
def test_recorded_run_reports_the_known_mixing_of_ula_on_a_bowl(one_thread):
    """``Sampler.run(record=True)`` summarises the energies of the second half of its steps. ULA
    with coefficient c on the bowl started at stationarity (x ~ N(0, I), the chain's own law up
    to its O(c) discretisation: variance 1/(1 − c/2)) gives AR(1) coordinates with φ = 1 − c and
    an energy with lag-k autocorrelation φ^(2k): bulk-ESS per draw (1 − ψ)/(1 + ψ), ψ = φ²."""
    coef, steps, n = 0.5, 2000, 64
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(n, *SHAPE, generator=g) / math.sqrt(1 - coef / 2)
    res = ula(coef).run(Bowl(BowlConfig(), SHAPE), x0, steps, generator=g, record=True)
    m = res.mixing
    assert m is not None and m["mixing_draws"] == steps // 2
    s = steps // 2 * n
    psi = (1 - coef) ** 2
    true_e = (1 - psi) / (1 + psi)
    assert abs(m["ess_per_draw"] / true_e - 1) < 5 * ess_rel_sd(psi, s), (m, true_e)
    mean, sd = rhat_mean_sd(psi, steps // 2, n)
    assert abs(m["rhat_energy"] - mean) < 5 * sd
    # nothing without record, nor with fewer than MIN_DRAWS steps in the second half
    assert ula(coef).run(Bowl(BowlConfig(), SHAPE), x0, 50, generator=g).mixing is None
    assert ula(coef).run(Bowl(BowlConfig(), SHAPE), x0, 2 * MIN_DRAWS - 2, generator=g,
                         record=True).mixing is None


def test_recorded_run_flags_chains_stuck_in_different_wells(one_thread):
    """Two Gaussian wells at ±3 in 64-D, half the chains in each; MALA never crosses the
    barrier. A Gaussian well's energy has the same law whatever its curvature (U − min ~ χ²_D/2),
    so the right well sits 20 nats higher: each chain's energy is stationary, but the two groups'
    means differ by 20 against an sd of √(D/2) = 5.7, and split-R̂ of the energy is far above 1."""

    class TwoWells(nn.Module):
        def forward(self, x):
            z = x.flatten(1)
            left = 0.5 * (z + 3).pow(2).sum(1)
            right = 2.0 * (z - 3).pow(2).sum(1) + 20.0
            return torch.minimum(left, right)

    g = torch.Generator().manual_seed(5)
    n = 16
    x0 = torch.cat([torch.full((n // 2, *SHAPE), -3.0), torch.full((n // 2, *SHAPE), 3.0)])
    mala = MALA(MALAConfig(step_size=0.2, steps=400))
    res = mala.run(TwoWells(), x0, 400, generator=g, record=True)
    assert res.mixing is not None and res.mixing["rhat_energy"] > 1.5, res.mixing
