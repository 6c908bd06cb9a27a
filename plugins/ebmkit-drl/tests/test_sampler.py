"""The drl-progressive sampler: the conformance kit (with a Gaussian's true noise-conditional
energy as the kit's energy), its samples against the closed-form law of progressive sampling,
that law against the data, and what it refuses."""

from __future__ import annotations

import math

import ebmkit
import ebmkit_drl
import pytest
import torch
from ebmkit.params import build
from ebmkit_drl import Progressive
from ebmkit_drl.schedule import DiffusionSchedule
from ebmkit_drl.targets import DiffusedGaussian, progressive_law
from ebmkit_testing import SamplerConformance
from ebmkit_testing.samplers import mc_tolerance
from torch import nn


class TestProgressiveOneLevel(SamplerConformance):
    """One level: the chain is K Langevin steps on U(x, 0) from x0, and every check of the kit
    applies unchanged (run = init + K steps)."""

    component = Progressive
    plugin = ebmkit_drl
    entry_point = "drl"
    config = {"steps": 4}
    levels = 1

    def energy_for(self, shape, *, dtype=torch.float32, device="cpu", quartic=0.1):
        v = torch.linspace(0.5, 2.0, math.prod(shape)).reshape(shape)
        sched = DiffusionSchedule(levels=self.levels, step_b2=2e-3)
        return DiffusedGaussian(v, 0.1, schedule=sched, quartic=quartic).to(device=device, dtype=dtype)


class TestProgressiveThreeLevels(TestProgressiveOneLevel):
    """Three levels: the kit's checks run through the level changes. ``run(x0, K)`` takes K
    steps at each of the T levels, so it equals ``init`` followed by ``T·K`` steps (the kit's
    own version of this check assumes one level)."""

    levels = 3

    def test_run_equals_init_then_steps(self):
        s = self.make_sampler()
        e = self.energy_for((2,), quartic=0.0)
        x0 = self.start((2,), n=32)
        r = s.run(e, x0, self.steps, generator=self.gen(3))
        g = self.gen(3)
        state = s.init(e, x0.clone())
        gns = []
        for _ in range(self.levels * self.steps):
            state, info = s.step(e, state, generator=g)
            gns.append(info.grad_norm.mean())
        assert state.extra["level"] == 0
        assert torch.allclose(r.x, state.x, atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            assert torch.allclose(r.energy, e(state.x), rtol=1e-4)  # the sample's U(x, 0)
        assert torch.allclose(r.grad_norm, torch.stack(gns).mean(), rtol=1e-4)
        assert r.steps == self.steps and s.gradient_evals(self.steps) == 3 * (self.steps + 1)


def make(**values) -> Progressive:
    return Progressive(build(Progressive.Config, values, where="sampler"))


def test_samples_follow_the_closed_form_law():
    """On N(mu, diag(0.25, 2))'s true noise-conditional energy (T = 3), from x_T ~ N(0, I), K =
    20 steps per level: every step is linear, so the samples are Gaussian with the mean and
    variance of :func:`progressive_law` (finite K and step size included); 4,000 chains within
    4 Monte Carlo standard errors."""
    target = DiffusedGaussian([0.25, 2.0], [0.5, -1.0],
                              schedule=DiffusionSchedule(levels=3, step_b2=0.01))
    mean, var = progressive_law(target, 20)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4000, 2, generator=g)
    x = make(steps=20).run(target, x0, generator=g).x.double()
    tol_m, tol_v = mc_tolerance(x, var)
    assert bool(((x.mean(0) - mean).abs() < tol_m).all()), (x.mean(0), mean)
    assert bool(((x.var(0) - var).abs() < tol_v).all()), (x.var(0), var)
    # a wrong law is told apart: the level-0 marginal (what the chains approach) is not it yet
    assert float((var - torch.tensor([0.25, 2.0], dtype=torch.float64)).abs().max()) > 4 * float(tol_v.max())


def test_progressive_law_recovers_the_data():
    """With the true conditionals, small steps and enough of them, progressive sampling ends in
    the level-0 marginal N(abar_0 mu, abar_0^2 v + sigma_0^2) (the data with sigma_0 = 0.01)
    whatever the start: the closed-form law within 0.5 %."""
    sched = DiffusionSchedule(levels=3, step_b2=2e-5)
    target = DiffusedGaussian([0.25, 2.0], [0.5, -1.0], schedule=sched)
    mean, var = progressive_law(target, 2_000_000, start_mean=0.3, start_var=2.0)
    ab, sb = float(sched.alpha_bar[0]), float(sched.sigma_bar[0])
    want_m = torch.tensor([0.5, -1.0], dtype=torch.float64) * ab
    want_v = torch.tensor([0.25, 2.0], dtype=torch.float64) * ab * ab + sb * sb
    assert torch.allclose(mean, want_m, rtol=5e-3)
    assert torch.allclose(var, want_v, rtol=5e-3)


def test_zero_steps_return_the_starts_without_gradients():
    target = DiffusedGaussian([1.0], schedule=DiffusionSchedule(levels=3))
    x0 = torch.randn(5, 1)
    r = make(steps=0).run(target, x0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(r.x, x0) and float(r.grad_norm) == 0.0
    assert make().gradient_evals(0) == 0


def test_a_plain_energy_is_refused_in_one_line():
    with pytest.raises(ebmkit.ConfigError) as err:
        make(steps=2).run(nn.Sequential(nn.Linear(2, 1), nn.Flatten(0)), torch.randn(3, 2))
    assert "noise-conditional" in str(err.value) and "\n" not in str(err.value)
