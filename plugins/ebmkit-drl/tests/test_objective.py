"""The drl objective: the conformance kit, its chains against the closed-form recovery
conditional of a Gaussian, its loss rebuilt from the pieces, a fit that moves toward the data,
its own generator, and what it refuses."""

from __future__ import annotations

import math

import ebmkit
import ebmkit_drl
import pytest
import torch
from ebmkit.params import build
from ebmkit_drl import DRL, DRLMLP
from ebmkit_drl.recovery import recovery_chains
from ebmkit_drl.schedule import DiffusionSchedule, diffuse, recovery_centre
from ebmkit_drl.targets import DiffusedGaussian, recovery_chain_law, recovery_conditional
from ebmkit_testing import ObjectiveConformance
from ebmkit_testing.samplers import mc_tolerance
from torch import nn


class TestDRL(ObjectiveConformance):
    component = DRL
    plugin = ebmkit_drl
    entry_point = "drl"
    config = {"steps": 3}
    energies_of_inputs = False  # the energies of x_t (the data at its level) and of the chains

    def make_energy(self):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            e = DRLMLP(build(DRLMLP.Config, {"hidden": 8, "levels": 3}, where="energy"), (3,))
            with torch.no_grad():
                for film in e.films:
                    film.embed.weight.normal_(0, 0.3)
        return e


def make(**values) -> DRL:
    return DRL(build(DRL.Config, values, where="objective"))


@pytest.mark.parametrize("t", [0, 1, 2])
def test_chains_follow_the_recovery_conditional(t):
    """At each level of a Gaussian's true noise-conditional energy, the objective's chains from
    x~ = x_{t+1}/a after K = 30 steps are Gaussian with the closed-form mean and variance of 30
    unadjusted Langevin steps (4,000 chains, 4 standard errors). Run until they forget the start
    (rho^K < 1e-4), they reach the exact recovery conditional p(x_t | x_{t+1}) (the top level:
    the marginal q(x_{T-1})): its mean, and its variance times unadjusted Langevin's known
    factor 1/(1 - s^2 p/4) (p the conditional's precision)."""
    target = DiffusedGaussian([0.3], [0.5], schedule=DiffusionSchedule(levels=3, step_b2=0.01))
    n = 4000
    x_next = torch.full((n, 1), 0.8)
    tt = torch.full((n,), t, dtype=torch.long)
    centre = recovery_centre(target.diffusion, x_next, tt)
    g = torch.Generator().manual_seed(t)
    with torch.no_grad():
        x, _ = recovery_chains(target, centre, tt, 30, g)
        mean, var = recovery_chain_law(target, x_next.double(), t, 30)
        tol_m, tol_v = mc_tolerance(x.double(), var)
        assert abs(float(x.mean()) - float(mean[0])) < float(tol_m), (x.mean(), mean[0])
        assert abs(float(x.var()) - float(var)) < float(tol_v), (x.var(), var)
        exact_m, exact_v = recovery_conditional(target, x_next[:1].double(), t)
        s2 = float(target.diffusion.step_var[t])
        p = float(1 / exact_v)
        rho = 1 - s2 * p / 2
        steps = math.ceil(math.log(1e-4) / math.log(abs(rho)))
        x, _ = recovery_chains(target, centre, tt, steps, g)
        want_v = exact_v / (1 - s2 * p / 4)
        tol_m, tol_v = mc_tolerance(x.double(), want_v)
        assert abs(float(x.mean()) - float(exact_m[0])) < float(tol_m), (steps, x.mean(), exact_m)
        assert abs(float(x.var()) - float(want_v)) < float(tol_v), (steps, x.var(), want_v)


def test_loss_is_the_weighted_recovery_likelihood_gap():
    """The objective's loss rebuilt from its pieces with a copy of its generator: stratified
    levels (r + i) mod T, the diffused pair, K chain steps from x~, then
    mean w_t h(x_t) - mean w_t h(x-) with h = s_t^2 U and w_t = sigma_1/sigma_{t+1}; the
    metrics and the compute count follow."""
    torch.manual_seed(0)
    e = DRLMLP(build(DRLMLP.Config, {"hidden": 8, "levels": 4}, where="energy"), (2,))
    obj = make(steps=5, seed=3)
    x = torch.randn(10, 2)
    out = obj(e, x, torch.zeros(7, 2))  # 7 chains for 10 examples: the first 7
    g = torch.Generator().manual_seed(3)
    tab = e.diffusion
    t = (torch.arange(10) + torch.randint(4, (1,), generator=g)) % 4
    x_t, x_next = diffuse(tab, x, t, g)
    centre = recovery_centre(tab, x_next[:7], t[:7])
    neg, _ = recovery_chains(e, centre, t[:7], 5, g)
    s = tab.schedule
    w = (s.weight * s.step_var).float()[t]
    with torch.no_grad():
        hp, hn = w * e(x_t, t), w[:7] * e(neg, t[:7])
    assert torch.allclose(out.u_pos, hp, rtol=1e-5) and torch.allclose(out.u_neg, hn, rtol=1e-5)
    assert torch.allclose(out.loss, hp.mean() - hn.mean(), rtol=1e-4, atol=1e-6)
    for level in range(4):
        gap = hp[t == level].mean() - hn[t[:7] == level].mean()
        assert torch.allclose(out.metrics[f"gap_t{level}"], gap, rtol=1e-4, atol=1e-6)
    assert out.grad_evals == 7 * 5 + 10 + 7
    with pytest.raises(ebmkit.ConfigError, match="one recovery chain per data example"):
        obj(e, x[:3], x)


def test_a_fit_moves_toward_the_data():
    """A Gaussian model with the true variances and a wrong mean (0), data N((1, -1), 0.3):
    200 Adam steps on the drl loss bring the mean within 0.15 of the truth (from 1 away)."""
    sched = DiffusionSchedule(levels=3, step_b2=2e-3)
    model = DiffusedGaussian([0.3, 0.3], [0.0, 0.0], schedule=sched)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    obj = make(steps=30, seed=0)
    g = torch.Generator().manual_seed(1)
    truth = torch.tensor([1.0, -1.0])
    for _ in range(200):
        x = truth + 0.3**0.5 * torch.randn(128, 2, generator=g)
        out = obj(model, x, x)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    err = (model.mean.detach() - truth).abs().max()
    assert float(err) < 0.15, model.mean


def test_own_generator_seeded_and_global_rng_untouched():
    torch.manual_seed(0)
    e = DRLMLP(build(DRLMLP.Config, {"hidden": 8, "levels": 3}, where="energy"), (2,))
    x = torch.randn(6, 2)
    before = torch.get_rng_state()
    a = make(seed=1)(e, x, x).loss
    assert torch.equal(before, torch.get_rng_state())
    assert torch.equal(a, make(seed=1)(e, x, x).loss)
    assert not torch.equal(a, make(seed=2)(e, x, x).loss)
    obj = make(seed=1)
    obj(e, x, x)
    assert not torch.equal(a, obj(e, x, x).loss)  # the generator goes on


def test_a_plain_energy_is_refused_in_one_line():
    with pytest.raises(ebmkit.ConfigError) as err:
        make()(nn.Sequential(nn.Linear(2, 1), nn.Flatten(0)), torch.randn(4, 2), torch.randn(4, 2))
    assert "noise-conditional" in str(err.value) and "\n" not in str(err.value)


def test_steps_must_be_positive():
    with pytest.raises(ebmkit.ConfigError) as err:
        ebmkit.RunConfig.from_preset("drl-quick").with_overrides("objective.steps=0")
    assert "steps" in str(err.value) and "\n" not in str(err.value)
