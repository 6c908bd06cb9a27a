"""ebmkit-underdamped against the sampler conformance kit, plus its own closed forms."""

from __future__ import annotations

import math

import ebmkit_underdamped
import pytest
import torch
from ebmkit_testing import SamplerConformance
from ebmkit_testing.samplers import DiagonalGaussianEnergy
from ebmkit_underdamped import Underdamped, UnderdampedConfig, gaussian_stationary_variance


class TestUnderdampedBAOAB(SamplerConformance):
    component = Underdamped
    plugin = ebmkit_underdamped
    entry_point = "underdamped"
    config = {"step_size": 0.5, "friction": 1.0}
    grad_coef_is_step = True  # from rest, a noise-free step moves x by −(1 + e^{−γh})h²/4·∇V


class TestUnderdampedOBABO(SamplerConformance):
    component = Underdamped
    plugin = ebmkit_underdamped
    config = {"step_size": 0.5, "friction": 2.0, "integrator": "obabo"}
    grad_coef_is_step = True  # from rest, a noise-free step moves x by −(h²/2)·∇V


class TestUnderdampedGaussianMomentum(SamplerConformance):
    component = Underdamped
    config = {"step_size": 0.4, "friction": 0.5, "init_momentum": "gaussian"}
    grad_coef_is_step = True  # with the noise off the chain starts at rest


@pytest.mark.parametrize("integrator", ["baoab", "obabo"])
@pytest.mark.parametrize(("h", "gamma", "var"), [(0.5, 1.0, 1.0), (1.0, 0.3, 0.5), (1.5, 5.0, 1 / 0.7)])
def test_stationary_closed_form_solves_the_lyapunov_equation(integrator, h, gamma, var):
    """The closed forms are the fixed point Σ = M Σ Mᵀ + Q of the exact one-step map."""
    s = Underdamped(UnderdampedConfig(step_size=h, friction=gamma, integrator=integrator))
    vx, vp = gaussian_stationary_variance(integrator, h, var)
    M, Q = (torch.tensor(a, dtype=torch.float64) for a in s.step_map(var))
    S = torch.diag(torch.tensor([vx, vp], dtype=torch.float64))
    torch.testing.assert_close(M @ S @ M.T + Q, S, atol=1e-12, rtol=0)
    assert math.isclose(s.gaussian_covariance(var, 2000, 0.0)[0][0], vx, rel_tol=1e-9)


def test_baoab_position_variance_is_exact_and_obabo_is_biased():
    assert gaussian_stationary_variance("baoab", 1.0, 0.5) == (0.5, 0.5)
    assert gaussian_stationary_variance("obabo", 1.0, 0.5) == (1.0, 1.0)
    with pytest.raises(ValueError, match="unstable"):
        gaussian_stationary_variance("baoab", 2.0, 1.0)


@pytest.mark.parametrize("integrator", ["baoab", "obabo"])
def test_long_run_stationary_moments(integrator):
    """4,000 chains, 300 steps at h = 1, σ² = 0.5 (h/σ = 1.41: a large, strongly biased step).

    After 300 steps with γ = 1 the transient (|eigenvalues| of M ≤ exp(-γh/2) ≈ 0.61 per step)
    is gone, so the final states are 4,000 independent draws of the stationary law. The sample
    variance of B Gaussian draws has standard error v·sqrt(2/(B−1)) = 2.2% of v; we allow 4 of
    them (8.9%). OBABO's predicted variance (1.0) is twice BAOAB's (0.5), far outside that band,
    so the test tells the two closed forms apart. Momentum: same bound.
    """
    s = Underdamped(UnderdampedConfig(step_size=1.0, friction=1.0, integrator=integrator))
    e = DiagonalGaussianEnergy(torch.full((2,), 0.5))
    g = torch.Generator().manual_seed(0)
    state = s.init(e, torch.zeros(4000, 2))
    for _ in range(300):
        state, _ = s.step(e, state, generator=g)
    vx, vp = gaussian_stationary_variance(integrator, 1.0, 0.5)
    tol = 4 * math.sqrt(2 / 3999)
    assert torch.allclose(state.x.var(0), torch.full((2,), vx), rtol=tol, atol=0)
    assert torch.allclose(state.extra["momentum"].var(0), torch.full((2,), vp), rtol=tol, atol=0)


@pytest.mark.parametrize("integrator", ["baoab", "obabo"])
def test_grad_coef_is_the_gradients_share_of_the_move_with_momentum(integrator):
    """From a state with momentum, the move's part linear in the step's gradient is −grad_coef·g:
    two noise-free steps from the same (x, p) under gradients g and 2g differ by grad_coef·g."""
    s = Underdamped(UnderdampedConfig(step_size=0.7, friction=0.8, integrator=integrator))
    a = s.grad_coef
    if integrator == "baoab":
        assert a == pytest.approx((1 + math.exp(-0.8 * 0.7)) * 0.7**2 / 4)
    else:
        assert a == pytest.approx(0.7**2 / 2)
    e = DiagonalGaussianEnergy(torch.ones(3)).double()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    p = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    moved = []
    for k in (1.0, 2.0):
        state = s.init(e, x)
        state.grad, state.extra["momentum"] = k * g, p.clone()
        moved.append(s.step(e, state, noise=False)[0].x)
    torch.testing.assert_close(moved[0] - moved[1], a * g, rtol=1e-12, atol=1e-12)


def test_one_gradient_per_step():
    calls = 0

    class Counting(DiagonalGaussianEnergy):
        def forward(self, x):
            nonlocal calls
            calls += 1
            return super().forward(x)

    s = Underdamped(UnderdampedConfig(step_size=0.1))
    s.run(Counting(torch.ones(2)), torch.zeros(4, 2), 10, generator=torch.Generator().manual_seed(0))
    assert calls == 11  # init + one per step


def test_noise_off_is_heavy_ball_descent():
    """Without noise the chain is damped Hamiltonian dynamics: the energy goes to its minimum."""
    s = Underdamped(UnderdampedConfig(step_size=0.3, friction=1.0))
    e = DiagonalGaussianEnergy(torch.ones(2), 0.5)
    r = s.run(e, torch.full((8, 2), 3.0), 200, noise=False)
    assert torch.allclose(r.x, torch.full((8, 2), 0.5), atol=1e-4)


def test_config_is_validated(ebmkit_registry):
    reg = ebmkit_registry(ebmkit_underdamped)
    with pytest.raises(Exception, match="sampler.integrator: 'leapfrog' is not one of: baoab, obabo"):
        reg.create("sampler", "underdamped", {"integrator": "leapfrog"})
    with pytest.raises(Exception, match="sampler.step_size: must be > 0"):
        reg.create("sampler", "underdamped", {"step_size": 0})


def test_cli_lists_and_describes(ebmkit_cli):
    ebmkit_cli.use(ebmkit_underdamped)
    res = ebmkit_cli("list", "samplers")
    assert res.exit_code == 0 and "underdamped" in res.stdout, res.output
    res = ebmkit_cli("describe", "sampler", "underdamped")
    assert res.exit_code == 0 and "friction" in res.stdout and "integrator" in res.stdout
