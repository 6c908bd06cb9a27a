"""Samplers: the conformance suite over every registered sampler, plus the acceptance checks of
the samplers issue (analytic targets, fixed seeds, tolerances from Monte Carlo standard errors).

Tolerances: B chains run independently and we look at their final states only, so those are
B independent draws. For draws of a Gaussian with variance v the sample mean has standard
error sqrt(v/B) and the sample variance v·sqrt(2/(B−1)) (``mc_tolerance``); we allow 4 of them.
"""

from __future__ import annotations

import math

import pytest
import torch
from ebmkit.builtin import samplers as builtin_samplers
from ebmkit.builtin.samplers import HMC, MALA, Langevin
from ebmkit.params import build
from ebmkit_testing.samplers import (
    DiagonalGaussianEnergy,
    GaussianMixtureEnergy,
    SamplerConformance,
    installed_registry,
    mc_tolerance,
)
from torch import nn

# Step sizes suited to the suite's unit-scale Gaussian targets, per built-in name. The exact
# samplers' steps are large enough for their Metropolis tests to reject (acceptance on the
# kit's N(μ, diag(0.25, 2)) at T = 1 and 2: mala 0.60 / 0.84, hmc 0.76 / 0.86), so the kit's
# Gaussian check tests the correction, not only the proposal.
SUITE_CONFIG = {
    "langevin": {"step_size": 0.5},
    "mala": {"step_size": 0.9},
    "hmc": {"step_size": 0.9, "leapfrog_steps": 3},
}
# One noise-free step is a gradient step of size grad_coef (HMC's L > 1 leapfrog steps are not).
GRAD_COEF_IS_STEP = {"langevin", "mala"}


def _suite(name: str) -> type:
    attrs = {"sampler_name": name, "config": SUITE_CONFIG.get(name, {}), "__module__": __name__,
             "grad_coef_is_step": name in GRAD_COEF_IS_STEP}
    if name in SUITE_CONFIG:  # built-ins: also check registration and the entry point
        attrs.update(plugin=builtin_samplers, entry_point="core_samplers")
    return type(f"TestConformance_{name}", (SamplerConformance,), attrs)


for _name in installed_registry().names("sampler"):  # every registered sampler, plugins included
    globals()[f"TestConformance_{_name.replace('-', '_')}"] = _suite(_name)


class TestConformance_hmc_jitter(SamplerConformance):  # noqa: N801 - matches the generated ones
    sampler_name = "hmc"
    config = {"step_size": 0.9, "leapfrog_steps": 3, "step_jitter": 0.3}  # acceptance 0.52 / 0.87


class TestConformance_hmc_one_leapfrog(SamplerConformance):  # noqa: N801
    """L = 1: one HMC transition is a MALA step, so a noise-free one moves by −grad_coef·∇U/T."""

    sampler_name = "hmc"
    config = {"step_size": 0.9, "leapfrog_steps": 1}
    grad_coef_is_step = True


pytestmark = pytest.mark.usefixtures("one_thread")


def make(cls, **cfg):
    return cls(build(cls.Config, cfg, where="sampler"))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_moments(x, mean, var, what):
    tol_m, tol_v = mc_tolerance(x, var)
    em = (x.mean(0) - mean).abs()
    ev = (x.var(0) - var).abs()
    assert bool((em < tol_m).all()), f"{what}: mean error {em.max():.4g} > 4 SE"
    assert bool((ev < tol_v).all()), (
        f"{what}: variance error up to {(ev / tol_v).max() * 4:.2f} SE")


# --------------------------------------------------------------------------------------------
# Gaussian targets
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", [make(MALA, step_size=0.9),
                                     make(HMC, step_size=0.5, leapfrog_steps=3)],
                         ids=["mala", "hmc"])
def test_mh_converge_on_2d_standard_gaussian(sampler):
    """From a point start (2, −2), K = 100 transitions forget it (the deterministic part
    contracts by ≈0.6 per accepted step) and the 4000 final states match N(0, I)."""
    e = DiagonalGaussianEnergy([1.0, 1.0])
    x0 = torch.tensor([2.0, -2.0]).repeat(4000, 1)
    r = sampler.run(e, x0, 100, generator=gen(0))
    assert_moments(r.x, torch.zeros(2), torch.ones(2), sampler.name)
    assert 0.5 < float(r.accept_rate) < 1.0


def test_hmc_step_jitter_breaks_a_periodic_orbit():
    """On N(0, 1) the leapfrog map with ε = 1 is a rotation by 60°, so L = 3 sends (x, p) to
    (−x, −p): chains started at 0 never leave it (a true property of fixed-ε·L HMC). A per-chain
    step size drawn in [0.8, 1.2] each transition mixes, and N(0, 1) is recovered within 4 SE."""
    e = DiagonalGaussianEnergy([1.0])
    x0 = torch.zeros(4000, 1)
    stuck = make(HMC, step_size=1.0, leapfrog_steps=3).run(e, x0, 100, generator=gen(0))
    assert float(stuck.x.abs().max()) < 1e-5
    r = make(HMC, step_size=1.0, leapfrog_steps=3, step_jitter=0.2).run(
        e, x0, 100, generator=gen(0))
    assert_moments(r.x, torch.zeros(1), torch.ones(1), "hmc with jitter")


ANISO_VAR = torch.logspace(math.log10(0.01), math.log10(4.0), 50)


@pytest.mark.parametrize("sampler", [make(MALA, step_size=0.08),
                                     make(HMC, step_size=0.05, leapfrog_steps=10)],
                         ids=["mala", "hmc"])
def test_mh_exact_on_anisotropic_gaussian_50d(sampler):
    """N(μ, diag σ²) in 50 dimensions, σ² from 0.01 to 4. Started from exact draws, an exact
    kernel keeps them exact: all 50 means and variances within 4 SE after 30 transitions."""
    mean = torch.linspace(-1, 1, 50)
    e = DiagonalGaussianEnergy(ANISO_VAR, mean)
    x0 = e.sample(3000, gen(1))
    r = sampler.run(e, x0, 30, generator=gen(2))
    assert_moments(r.x, mean, ANISO_VAR, sampler.name)
    assert 0.3 < float(r.accept_rate) < 1.0
    assert float((r.x - x0).abs().mean()) > 0.01  # the chains moved


def test_langevin_has_its_discretisation_bias_in_50d():
    """ULA from exact draws: coordinate i follows the AR(1) map x ← ρᵢx + εz, ρᵢ = 1 − ε²/(2σᵢ²),
    so after K steps its variance is ρᵢ^{2K}σᵢ² + ε²(1 − ρᵢ^{2K})/(1 − ρᵢ²) — 19 % above σᵢ²
    for the narrowest coordinate at stationarity; the sample matches the formula, not σ²."""
    s = make(Langevin, step_size=0.08)
    mean = torch.linspace(-1, 1, 50)
    e = DiagonalGaussianEnergy(ANISO_VAR, mean)
    x0 = e.sample(3000, gen(1))
    k = 30
    r = s.run(e, x0, k, generator=gen(2))
    expected = torch.tensor([s.gaussian_variance(float(v), k, initial_variance=float(v))
                             for v in ANISO_VAR])
    assert_moments(r.x, mean, expected, "langevin")
    _, tol_v = mc_tolerance(r.x, ANISO_VAR)
    assert float((r.x.var(0)[0] - ANISO_VAR[0]).abs()) > tol_v[0]  # the bias is visible


@pytest.mark.parametrize("cfg, var", [
    ({"step_size": 1.0}, 4 / 3),  # σ²/(1 − η/2), η = ε²/(2σ²) = 1/2
    ({"step_size": 0.5, "tau": 1.0}, 1 / (1 - 0.0625)),
    ({"grad_coef": 0.25, "noise_std": 0.3}, 0.09 / (1 - 0.75**2)),
    ({"grad_coef": 1.0, "noise_std": 0.01}, 1e-4),  # the short-run code on N(0, 1)
])
def test_langevin_stationary_variance_2d(cfg, var):
    """ULA on N(0, I): b²/(1 − (1 − a)²) after 200 steps from (2, −2) (ρ^400 is negligible)."""
    s = make(Langevin, **cfg)
    assert s.gaussian_variance(1.0) == pytest.approx(var)
    e = DiagonalGaussianEnergy([1.0, 1.0])
    x0 = torch.tensor([2.0, -2.0]).repeat(4000, 1)
    r = s.run(e, x0, 200, generator=gen(3))
    assert_moments(r.x, torch.zeros(2), torch.full((2,), var), "langevin")
    if cfg.get("step_size") == 1.0:  # the bias is 11 SE: the exact variance 1 is rejected
        _, tol = mc_tolerance(r.x, torch.ones(2))
        assert bool(((r.x.var(0) - 1).abs() > 2 * tol).all())


def test_langevin_parameterisations_agree():
    """(ε, τ) and (grad_coef = ε²/2, noise_std = τε) are the same chain."""
    e = DiagonalGaussianEnergy([0.5, 2.0])
    x0 = torch.randn(64, 2, generator=gen(0))
    a = make(Langevin, step_size=0.3, tau=0.5).run(e, x0, 10, generator=gen(1)).x
    b = make(Langevin, grad_coef=0.045, noise_std=0.15).run(e, x0, 10, generator=gen(1)).x
    torch.testing.assert_close(a, b)


class Quartic(nn.Module):
    """``U(x) = Σ x⁴``: gradient steps of size 0.1 contract small states and blow up large ones."""

    def forward(self, x):
        return x.pow(4).flatten(1).sum(1)


def test_langevin_flags_exactly_the_divergent_chains():
    """x ← x − 0.4x³ (a = 0.1, U = Σx⁴) shrinks |x| ≤ 0.5 towards 0 but overshoots from 5 or 6
    (5 → −45 → 3.6e4 → −1.9e13 → inf → NaN in float32). Those chains, and only those, are
    flagged — by the fused ``run`` (state-vector layout and channels-last images), by ``step``
    and by the graph-keeping loop — and the finite chains end where they end when run alone."""
    e = Quartic()
    x0 = torch.tensor([[0.5, -0.5], [5.0, 0.1], [0.3, 0.2], [-0.1, -6.0]])
    bad = torch.tensor([False, True, False, True])
    s = make(Langevin, grad_coef=0.1, noise_std=0.0)
    r = s.run(e, x0, 20, generator=gen(0))
    assert r.divergent is not None and torch.equal(r.divergent, bad)
    assert not bool(torch.isfinite(r.x[bad]).all(1).any()) and bool(torch.isfinite(r.x[~bad]).all())
    alone = s.run(e, x0[~bad], 20, generator=gen(0))
    assert torch.equal(alone.x, r.x[~bad]) and not bool(alone.divergent.any())
    state, flags = s.init(e, x0), torch.zeros(4, dtype=torch.bool)
    for _ in range(20):
        state, info = s.step(e, state, generator=gen(0))
        flags |= info.divergent
    assert torch.equal(flags, bad)
    r = s.run(e, x0.requires_grad_(True), 20, differentiable=True)
    assert torch.equal(r.divergent, bad)
    images = x0.detach().reshape(4, 1, 1, 2).expand(4, 3, 2, 2).contiguous()
    r = make(Langevin, grad_coef=0.1, noise_std=0.0, memory_format="channels_last").run(
        e, images, 20)  # each coordinate follows its own x ← x − 0.4x³
    assert torch.equal(r.divergent, bad)


def test_langevin_clamp_and_temperature():
    e = DiagonalGaussianEnergy([1.0, 1.0])
    x0 = torch.randn(256, 2, generator=gen(0)) * 3
    r = make(Langevin, step_size=1.0, clamp=True, clamp_min=-0.5, clamp_max=0.5).run(
        e, x0, 5, generator=gen(1))
    assert float(r.x.abs().max()) <= 0.5
    # T scales the gradient: ρ = 1 − a/(σ²T); stationary b²/(1 − ρ²)
    s = make(Langevin, step_size=0.5, temperature=2.0)
    rho = 1 - 0.125 / 2
    assert s.gaussian_variance(1.0) == pytest.approx(0.25 / (1 - rho**2))


# --------------------------------------------------------------------------------------------
# mixture
# --------------------------------------------------------------------------------------------
MIX = dict(means=[[-2.0, 0.0], [2.0, 0.0]], weights=[0.3, 0.7], std=0.5)


@pytest.mark.parametrize("sampler", [make(MALA, step_size=0.5),
                                     make(HMC, step_size=0.3, leapfrog_steps=5)],
                         ids=["mala", "hmc"])
def test_mh_on_gaussian_mixture(sampler):
    """Started in one mode: acceptance strictly inside (0, 1). Started from the mixture: the
    fraction of chains in the right-hand mode stays 0.7 within 4 binomial SE sqrt(p(1−p)/B)."""
    e = GaussianMixtureEnergy(**MIX)
    b = 4000
    x0 = torch.tensor([-2.0, 0.0]) + 0.5 * torch.randn(b, 2, generator=gen(0))
    r = sampler.run(e, x0, 50, generator=gen(1))
    assert 0.0 < float(r.accept_rate) < 1.0
    assert float(r.per_chain_accept_rate.min()) > 0.0 and float(r.per_chain_accept_rate.max()) <= 1.0
    x0, _ = e.sample(b, gen(2))
    r = sampler.run(e, x0, 50, generator=gen(3))
    frac = float((r.x[:, 0] > 0).float().mean())
    assert abs(frac - 0.7) < 4 * math.sqrt(0.7 * 0.3 / b)


# --------------------------------------------------------------------------------------------
# image-shaped states, cost, layout
# --------------------------------------------------------------------------------------------
def convnet(nf: int = 8):
    reg = installed_registry()
    cls = reg.get("energy", "convnet32")
    torch.manual_seed(0)
    return cls(build(cls.Config, {"nf": nf}), (3, 32, 32)).eval()


@pytest.mark.parametrize("sampler", [make(Langevin), make(MALA, step_size=0.01),
                                     make(HMC, step_size=0.01, leapfrog_steps=2)],
                         ids=["langevin", "mala", "hmc"])
def test_image_batch_with_convnet(sampler):
    e = convnet()
    x0 = torch.rand(64, 3, 32, 32, generator=gen(0)) * 2 - 1
    r = sampler.run(e, x0, 2, generator=gen(1))
    assert r.x.shape == x0.shape and r.x.is_contiguous() and bool(torch.isfinite(r.x).all())
    assert r.energy.shape == (64,) and bool(torch.isfinite(r.grad_norm))
    assert all(p.grad is None and p.requires_grad for p in e.parameters())
    if sampler.exact:
        assert 0.0 <= float(r.accept_rate) <= 1.0


def test_channels_last_fast_path_matches_fp32_reference():
    """memory_format=auto (channels-last on CPU) reproduces the contiguous fp32 chain."""
    e = convnet()
    x0 = torch.rand(8, 3, 32, 32, generator=gen(0)) * 2 - 1
    for cls, cfg in ((Langevin, {}), (MALA, {"step_size": 0.01})):
        ref = make(cls, memory_format="preserve", **cfg).run(e, x0, 5, generator=gen(1))
        fast = make(cls, memory_format="channels_last", **cfg).run(e, x0, 5, generator=gen(1))
        torch.testing.assert_close(fast.x, ref.x, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fast.grad_norm, ref.grad_norm, atol=1e-4, rtol=1e-4)


def test_bf16_langevin_tracks_the_fp32_reference():
    """precision=bf16 (autocast) follows the fp32 chain as closely as one bf16 gradient allows.

    One bf16 input-gradient of this (random-init) ConvNet differs from fp32 by δ ≈ 7 % (8-bit
    mantissas through five layers whose output is a small sum with cancellations). With
    noise off, x_K − x_0 is a sum of K gradients, so its error is at most ≈ δ times the distance
    travelled; we allow 2δ. δ itself must stay below 15 %, which catches a broken autocast (a
    bf16 chain state or bf16 updates are far worse than that)."""
    from ebmkit.mcmc import energy_and_grad

    e = convnet()
    x0 = torch.rand(8, 3, 32, 32, generator=gen(0)) * 2 - 1
    _, g = energy_and_grad(e, x0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, g_bf = energy_and_grad(e, x0)
    delta = float((g_bf - g).norm() / g.norm())
    assert delta < 0.15, delta
    ref = make(Langevin, grad_coef=1.0, noise_std=0.0).run(e, x0, 5, generator=gen(1))
    for run in ("run", "step"):
        s = make(Langevin, grad_coef=1.0, noise_std=0.0, precision="bf16")
        if run == "run":
            r = s.run(e, x0, 5, generator=gen(1))
            x, u = r.x, r.energy
        else:
            state = s.init(e, x0)
            for _ in range(5):
                state, _ = s.step(e, state)
            x, u = state.x, state.energy
        assert x.dtype == torch.float32 and u.dtype == torch.float32
        rel = float((x - ref.x).norm() / (ref.x - x0).norm())
        assert rel < 2 * delta, (rel, delta)


class Counting(nn.Module):
    """Counts forward passes with and without an input gradient being taken."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.grad_calls, self.plain_calls = inner, 0, 0

    def forward(self, x):
        if torch.is_grad_enabled() and x.requires_grad:
            self.grad_calls += 1
        else:
            self.plain_calls += 1
        return self.inner(x)


@pytest.mark.parametrize("sampler, grads, plain", [
    (make(Langevin), 5, 1),  # K gradients, one forward for U(x_K)
    (make(MALA, step_size=0.1), 6, 0),  # one per step + the start
    (make(HMC, step_size=0.1, leapfrog_steps=3), 16, 0),  # L per transition + the start
], ids=["langevin", "mala", "hmc"])
def test_gradient_evaluations_per_run(sampler, grads, plain):
    e = Counting(DiagonalGaussianEnergy([1.0, 1.0]))
    sampler.run(e, torch.zeros(4, 2), 5, generator=gen(0))
    assert (e.grad_calls, e.plain_calls) == (grads, plain)


def test_differentiable_langevin_is_the_linear_map_on_a_gaussian():
    """Noise off on N(0, σ²): x_K = (1 − a/σ²)^K z, so ∂x_K/∂z = (1 − a/σ²)^K exactly."""
    s = make(Langevin, step_size=0.5, tau=0.0)
    e = DiagonalGaussianEnergy([2.0, 2.0])
    z = torch.randn(4, 2, generator=gen(0), requires_grad=True)
    x = s.run(e, z, 6, noise=False, differentiable=True).x
    (g,) = torch.autograd.grad(x.sum(), z)
    torch.testing.assert_close(g, torch.full_like(z, (1 - 0.125 / 2.0) ** 6))


# --------------------------------------------------------------------------------------------
# adaptation
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls, target", [(MALA, 0.574), (HMC, 0.65)], ids=["mala", "hmc"])
def test_dual_averaging_reaches_target_acceptance(cls, target):
    """From a step size 10× too large the warm-up finds one whose post-warm-up acceptance
    is within 0.1 of the target (acceptance is a smooth function of ε; 1000 chains × 100
    steps give a standard error below 0.01, the rest is the adaptation's own error)."""
    e = DiagonalGaussianEnergy(ANISO_VAR[::5])  # 10-D, σ² from 0.01 to 4
    s = make(cls, step_size=1.0, adapt_steps=150, target_accept=target)
    x0 = e.sample(1000, gen(0))
    r = s.run(e, x0, 250, generator=gen(1))
    assert abs(float(r.accept_rate) - target) < 0.1
    eps = float(r.state.extra["step_size"])
    assert 0.01 < eps < 0.5
    fixed = make(cls, step_size=1.0)
    assert float(fixed.run(e, x0, 20, generator=gen(1)).accept_rate) < target - 0.2


def test_adaptation_off_by_default():
    assert make(MALA).config.adapt_steps == 0 and make(HMC).config.adapt_steps == 0
    r = make(MALA).run(DiagonalGaussianEnergy([1.0]), torch.zeros(3, 1), 3, generator=gen(0))
    assert "step_size" not in r.state.extra


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["langevin", "mala", "hmc"])
def test_describe_lists_every_parameter(cli, name):
    from ebmkit.params import params

    code, out, err = cli("describe", "sampler", name)
    assert code == 0, err
    flat = " ".join(out.split())
    for p in params(installed_registry().get("sampler", name).Config):
        assert p.name in flat
        assert p.help.split()[0] in flat
        assert str(p.default) in flat


# --------------------------------------------------------------------------------------------
# slow: longer statistical runs
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("sampler", [make(MALA, step_size=0.15, adapt_steps=300),
                                     make(HMC, step_size=0.1, leapfrog_steps=20, adapt_steps=200)],
                         ids=["mala", "hmc"])
def test_mh_converge_on_anisotropic_gaussian_from_a_point(sampler):
    """Convergence (not only invariance) in 50-D with a condition number of 400: from x = 0
    after warm-up plus enough steps to mix the widest coordinate."""
    mean = torch.linspace(-1, 1, 50)
    e = DiagonalGaussianEnergy(ANISO_VAR, mean)
    x0 = torch.zeros(2000, 50)
    steps = 3000 if sampler.name == "mala" else 600
    r = sampler.run(e, x0, steps, generator=gen(5))
    assert_moments(r.x, mean, ANISO_VAR, sampler.name)
