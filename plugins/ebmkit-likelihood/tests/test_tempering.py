"""The ``parallel-tempering`` sampler: the conformance kit (around ``mala`` and around ``nuts``),
plus exact checks of the ladder, the swap rule, exactness with every replica at its law, and
mode hopping across a deep barrier that MALA alone cannot cross."""

from __future__ import annotations

import math

import ebmkit_likelihood
import pytest
import torch
from ebmkit.errors import ConfigError
from ebmkit.params import build
from ebmkit.plugins import build_registry
from ebmkit_likelihood.tempering import (
    ParallelTempering,
    ParallelTemperingConfig,
    geometric_ladder,
    swap_log_ratio,
)
from ebmkit_testing import SamplerConformance
from ebmkit_testing.samplers import DiagonalGaussianEnergy, GaussianMixtureEnergy, mc_tolerance


@pytest.fixture(autouse=True)
def _one_thread(ebmkit_one_thread):
    """One torch thread for every test here (ebmkit_testing's fixture)."""


@pytest.fixture(scope="module")
def registry():
    return build_registry()


class TestParallelTempering(SamplerConformance):
    component = ParallelTempering
    plugin = ebmkit_likelihood
    entry_point = "likelihood"
    # 4 replicas, β_min = 0.1, MALA at ε = 0.9: acceptance 0.60 (T = 1) / 0.84 (T = 2) at β = 1,
    # swap acceptance ≈ 0.66 per pair. The kit starts every replica at its x0 (exact draws of
    # the β = 1 law, not of the hotter ones), so for the first steps the hot replicas are not
    # at their laws; on this Gaussian the bias that leaves in the β = 1 marginal after 20 steps
    # was measured below 0.3 of the kit's standard errors (200,000 chains). The strict check
    # with every replica at its own law is test_replicas_at_their_laws_stay_there.
    config = {"step_size": 0.9}
    grad_coef_is_step = True  # noise-free: the base MALA's gradient step, and no swaps


class TestParallelTemperingAroundNUTS(SamplerConformance):
    component = ParallelTempering
    # another base (per-chain extras of its own, swapped along), unscaled replicas, swaps every
    # other step
    config = {"base": "nuts", "step_size": 1.1, "replicas": 3, "beta_min": 0.3,
              "rescale": False, "swap_every": 2}
    grad_coef_is_step = True


def make(**values) -> ParallelTempering:
    return ParallelTempering(build(ParallelTemperingConfig, values, where="sampler"))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- the ladder and the swap rule ------------------------------------------------------------
def test_geometric_ladder_values():
    assert geometric_ladder(1, 0.1) == [1.0]
    assert geometric_ladder(2, 0.25) == [1.0, 0.25]
    lad = geometric_ladder(5, 0.0625)  # ratio 0.5 between neighbours
    assert lad == pytest.approx([1.0, 0.5, 0.25, 0.125, 0.0625], rel=1e-12)
    s = make(replicas=5, beta_min=0.0625)
    state = s.init(DiagonalGaussianEnergy(torch.ones(2)), torch.zeros(3, 2))
    torch.testing.assert_close(ParallelTempering.ladder(state),
                               torch.tensor([1.0, 0.5, 0.25, 0.125, 0.0625]))
    assert make(betas=(1.0, 0.7, 0.2)).betas == [1.0, 0.7, 0.2]
    for bad in ((0.9, 0.5), (1.0, 0.5, 0.5), (1.0, 0.2, 0.4)):
        with pytest.raises(ConfigError, match="betas"):
            make(betas=bad)


def test_swap_log_ratio_hand_computed():
    """β = (1, 0.5), U = (3, 1): (1 − 0.5)(3 − 1) = 1 → always swap (the colder replica gets
    the lower energy); the reverse, U = (1, 3): −1 → e^−1 = 0.368; at T = 2 half of it."""
    assert float(swap_log_ratio(1.0, 0.5, 3.0, 1.0)) == pytest.approx(1.0)
    assert float(swap_log_ratio(1.0, 0.5, 1.0, 3.0)) == pytest.approx(-1.0)
    assert float(swap_log_ratio(1.0, 0.5, 1.0, 3.0, temperature=2.0)) == pytest.approx(-0.5)
    assert float(swap_log_ratio(0.8, 0.2, 5.0, 2.0)) == pytest.approx(0.6 * 3.0)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_swap_acceptance_matches_the_formula(temperature):
    """20,000 chains of 2 replicas (β = 1, 0.5) on U = x²/2 placed at U_1 = 1, U_2 = 3 (x = √2,
    √6); the base (MALA, ε = 1e-6) barely moves them; the first swap round (pair 1-2) accepts a
    fraction exp(−1/T) ± 4 binomial standard errors."""
    e = DiagonalGaussianEnergy(torch.ones(1))
    s = make(betas=(1.0, 0.5), step_size=1e-6, temperature=temperature)
    b = 20_000
    xs = torch.stack([torch.full((b, 1), math.sqrt(2.0)), torch.full((b, 1), math.sqrt(6.0))])
    state = s.init_replicas(e, xs.double())
    state, _ = s.step(e, state, generator=gen(0))
    rate = ParallelTempering.swap_acceptance(state)
    assert rate.shape == (1,)
    p = math.exp(-1.0 / temperature)
    assert abs(float(rate[0]) - p) < 4 * math.sqrt(p * (1 - p) / b)
    # swapped chains hold each other's states: β = 1 now at √6 where a swap was accepted
    moved = (state.x[:, 0] - math.sqrt(6.0)).abs() < 1e-4
    assert abs(float(moved.double().mean()) - float(rate[0])) < 1e-6  # rates are float32


def test_swap_acceptance_per_pair_and_alternation():
    """R − 1 rates; even pairs (1-2, 3-4) in odd rounds, odd pairs (2-3, 4-5) in even ones."""
    e = DiagonalGaussianEnergy(torch.ones(2))
    s = make(replicas=5, beta_min=0.1, step_size=0.5)
    state = s.init(e, torch.randn(64, 2, generator=gen(1)))
    state, _ = s.step(e, state, generator=gen(2))
    assert state.extra["pt.swap_tried"].tolist() == [1, 0, 1, 0]
    state, _ = s.step(e, state, generator=gen(2))
    assert state.extra["pt.swap_tried"].tolist() == [1, 1, 1, 1]
    r = make(replicas=5, step_size=0.5, swap_every=3).run(e, torch.randn(64, 2), 12,
                                                          generator=gen(3))
    rate = ParallelTempering.swap_acceptance(r)
    assert rate.shape == (4,) and bool(((rate >= 0) & (rate <= 1)).all())
    assert r.state.extra["pt.swap_tried"].tolist() == [2, 2, 2, 2]  # rounds at steps 3, 6, 9, 12
    one = make(replicas=1, step_size=0.5).run(e, torch.randn(8, 2), 3, generator=gen(4))
    assert ParallelTempering.swap_acceptance(one).shape == (0,)


# --- exactness -------------------------------------------------------------------------------
@pytest.mark.parametrize("rescale", [True, False])
def test_replicas_at_their_laws_stay_there(rescale):
    """The product law is invariant: 4,000 chains of 5 replicas (β down to 0.05), every replica
    started at exact draws of its own law N(μ, σ²T/β_r) on the kit's anisotropic Gaussian at
    T = 1.5, 15 steps of MALA + swaps: each replica's marginal (not only β = 1) keeps its mean
    and variance within 4 Monte Carlo standard errors (mc_tolerance), and swaps were accepted."""
    var, mu, t = torch.tensor([0.25, 2.0]), torch.tensor([0.5, -1.0]), 1.5
    e = DiagonalGaussianEnergy(var, mu)
    s = make(replicas=5, beta_min=0.05, step_size=0.8, rescale=rescale, temperature=t)
    beta = torch.tensor(s.betas)
    tv = var * t / beta[:, None]  # [R, 2]
    g = gen(5)
    xs = mu + torch.randn(5, 4000, 2, generator=g) * tv.sqrt()[:, None, :]
    state = s.init_replicas(e, xs)
    for _ in range(15):
        state, _ = s.step(e, state, generator=g)
    out = s.replica_states(state)
    assert torch.equal(out[0], state.x)
    for r in range(5):
        tol_m, tol_v = mc_tolerance(out[r], tv[r])
        assert bool(((out[r].mean(0) - mu).abs() < tol_m).all()), (r, out[r].mean(0))
        assert bool(((out[r].var(0) - tv[r]).abs() < tol_v).all()), (r, out[r].var(0), tv[r])
    assert bool((ParallelTempering.swap_acceptance(state) > 0.2).all())


def _mixture() -> tuple[GaussianMixtureEnergy, float]:
    """Modes at ±3 with sd 0.5, weights 0.3 / 0.7: the barrier at 0 is 18 nats above the modes.
    Returns the energy and the exact mass of x > 0."""
    e = GaussianMixtureEnergy([[-3.0], [3.0]], [0.3, 0.7], std=0.5)
    phi = 0.5 * (1 + math.erf(3.0 / 0.5 / math.sqrt(2)))  # Φ(6)
    return e, 0.3 * (1 - phi) + 0.7 * phi


def test_bimodal_mixture_modes_in_the_right_proportion():
    """All chains start in the minor mode (x = −3). Parallel tempering (6 replicas, β down to
    0.03, MALA ε = 0.5) for 250 steps: the β = 1 chains end in the right mode in the proportion
    0.7 within 4 binomial standard errors of 4,000 independent chains (±0.029), and almost
    every chain changed mode during the run. MALA alone with the same step and the same
    gradients (6 × 250 steps) never leaves the minor mode."""
    e, p_right = _mixture()
    b, k, r = 4000, 250, 6
    x0 = torch.full((b, 1), -3.0)
    pt = make(replicas=r, beta_min=0.03, step_size=0.5)
    g = gen(6)
    state = pt.init(e, x0)
    side = state.x[:, 0] > 0
    changes = torch.zeros(b, dtype=torch.int64)
    for _ in range(k):
        state, _ = pt.step(e, state, generator=g)
        now = state.x[:, 0] > 0
        changes += (now != side).long()
        side = now
    frac = float(side.double().mean())
    assert abs(frac - p_right) < 4 * math.sqrt(p_right * (1 - p_right) / b), frac
    assert float((changes > 0).double().mean()) > 0.95
    assert pt.gradient_evals(k) == r * (k + 1)

    mala = build_registry().create("sampler", "mala", {"step_size": 0.5})
    assert mala.gradient_evals(r * k) <= pt.gradient_evals(k)
    ms = mala.init(e, x0[:500])
    for _ in range(r * k):
        ms, _ = mala.step(e, ms, generator=g)
        assert not bool((ms.x[:, 0] > 0).any())


def test_ladder_adaptation_evens_out_the_swap_acceptance():
    """On the bimodal mixture a geometric ladder (5 replicas, β down to 0.02) leaves the swap
    acceptance uneven across pairs; 300 warm-up steps of adaptation bring the spread (max − min
    over pairs, measured over 200 later steps) down, keep β_1 = 1 and β_R, and keep the order."""
    e, _ = _mixture()
    x0 = torch.full((400, 1), -3.0)
    fixed = make(replicas=5, beta_min=0.02, step_size=0.5)
    adapt = make(replicas=5, beta_min=0.02, step_size=0.5, adapt_steps=300)
    r_fixed = fixed.run(e, x0, 500, generator=gen(7))
    r_adapt = adapt.run(e, x0, 500, generator=gen(7))
    spread = [float(ParallelTempering.swap_acceptance(r).max() - ParallelTempering.swap_acceptance(r).min())
              for r in (r_fixed, r_adapt)]
    assert spread[1] < 0.5 * spread[0], spread
    beta = ParallelTempering.ladder(r_adapt)
    assert float(beta[0]) == 1.0 and float(beta[-1]) == pytest.approx(0.02)
    assert bool((beta[1:] < beta[:-1]).all())
    assert adapt.warmup_steps == 300


# --- the base --------------------------------------------------------------------------------
def test_base_from_the_registry_and_around_an_instance(registry):
    s = ParallelTempering(build(ParallelTemperingConfig, {"base": "hmc", "base_config": [
        "step_size=0.2", "leapfrog_steps=3"]}), registry=registry)
    assert s.base.name == "hmc" and s.base.config.leapfrog_steps == 3
    assert s.gradient_evals(10) == 4 * (10 * 3 + 1)
    assert s.grad_coef == pytest.approx(0.02)

    mala = registry.create("sampler", "mala", {"step_size": 0.3, "temperature": 2.0})
    pt = ParallelTempering.around(mala, replicas=3, beta_min=0.2)
    assert pt.base is mala and pt.temperature == 2.0 and pt.config.base == "mala"
    e = DiagonalGaussianEnergy(torch.ones(2))
    r = pt.run(e, torch.zeros(5, 2), 4, generator=gen(8))
    assert r.x.shape == (5, 2) and pt.replica_states(r.state).shape == (3, 5, 2)
    with pytest.raises(ConfigError, match="comes from the base"):
        ParallelTempering.around(mala, temperature=1.0)


@pytest.mark.parametrize(("values", "match"), [
    ({"base": "parallel-tempering"}, "cannot be its own base"),
    ({"base_config": ["temperature=2"]}, "ladder's"),
    ({"step_size": 0.1, "base_config": ["step_size=0.2"]}, "not both"),
    ({"base_config": ["step_sise=0.2"]}, "step_sise"),
    ({"base_config": ["oops"]}, "KEY=VALUE"),
])
def test_config_errors(registry, values, match):
    with pytest.raises(ConfigError, match=match):
        ParallelTempering(build(ParallelTemperingConfig, values), registry=registry)


def test_recorded_run_reports_mixing_of_the_beta_one_chains():
    """``run(record=True)`` gives ``ChainResult.mixing`` of the β = 1 chains. On the bimodal
    mixture (modes ±3, weights 0.3 / 0.7, so their energies differ by log(7/3) = 0.85 nats
    against a within-mode sd of 0.71) with half the chains started in each mode: MALA never
    crosses the 18-nat barrier, so the two groups' energies stay apart and split-R̂ of the
    energy is far above 1 (1.25 here for seeds 9-11); parallel tempering moves chains between
    the modes and its R̂ sits at the value of mixed chains, 1 + (τ − 1)/(2n) ≈ 1.015 for
    τ ≈ 4 (ESS per draw 0.24) and n = 100 draws per half chain (seeds 8-10: 1.014-1.015)."""
    e, _ = _mixture()
    b, k = 400, 400
    x0 = torch.cat([torch.full((b // 2, 1), -3.0), torch.full((b // 2, 1), 3.0)])
    pt = make(replicas=6, beta_min=0.03, step_size=0.5)
    m_pt = pt.run(e, x0, k, generator=gen(8), record=True).mixing
    mala = build_registry().create("sampler", "mala", {"step_size": 0.5})
    m_mala = mala.run(e, x0, 6 * k, generator=gen(9), record=True).mixing
    assert m_pt is not None and m_mala is not None
    assert abs(m_pt["rhat_energy"] - 1) < 0.03, m_pt
    assert m_mala["rhat_energy"] > 1.08, m_mala
