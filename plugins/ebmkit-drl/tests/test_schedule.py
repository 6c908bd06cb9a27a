"""The noise schedule (the paper's code's segmentation of DDPM's linear betas), the forward
noising's moments, and bad schedules as one-line errors."""

from __future__ import annotations

import math

import ebmkit
import pytest
import torch
from ebmkit_drl.schedule import DiffusionBuffers, DiffusionSchedule, diffuse, recovery_centre


def test_paper_schedule_segments_ddpm_betas():
    """T = 6: level 0 is DDPM's first step alone (sigma_0 = sqrt(1e-4) = 0.01), levels 1..5 the
    first half in steps of 100 (ends 100, 200, ..., 500), the last level runs to step 1000; the
    cumulative alpha of each level is the product of sqrt(1 - beta) up to its end."""
    s = DiffusionSchedule()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ends = [0, 100, 200, 300, 400, 500, 999]
    expected = torch.stack([(1 - betas[: e + 1]).sqrt().prod() for e in ends])
    assert torch.allclose(s.alpha_bar, expected, rtol=1e-12)
    assert math.isclose(float(s.sigma[0]), 0.01, rel_tol=1e-9)
    assert torch.allclose(s.sigma.square() + s.alpha.square(), torch.ones(7, dtype=torch.float64))
    assert float(s.sigma_bar[-1]) > 0.9999  # x_T is noise
    assert bool((s.sigma[1:] > s.sigma[:-1]).all())  # increasing noise per level


def test_step_sizes_precisions_and_weights():
    s = DiffusionSchedule(levels=4, step_b2=3e-4)
    for t in range(4):
        c = float(s.sigma_bar[t] / s.sigma_bar[0])
        assert math.isclose(float(s.step_var[t]), 3e-4 * c * float(s.sigma[t + 1]) ** 2, rel_tol=1e-12)
        assert math.isclose(float(s.weight[t]), float(s.sigma[1] / s.sigma[t + 1]), rel_tol=1e-12)
    for t in range(3):  # recovery levels: precision a^2/sigma^2, centre x_{t+1}/a
        a, sig = float(s.alpha[t + 1]), float(s.sigma[t + 1])
        assert math.isclose(float(s.precision[t]), a * a / (sig * sig), rel_tol=1e-12)
        assert math.isclose(float(s.centre_scale[t]), 1 / a, rel_tol=1e-12)
    assert float(s.precision[3]) == 0.0 and float(s.centre_scale[3]) == 1.0  # top: the marginal


def test_one_level_is_the_marginal_from_noise():
    s = DiffusionSchedule(levels=1)
    assert s.sigma.shape == (2,) and float(s.precision[0]) == 0.0
    assert float(s.sigma_bar[1]) > 0.9999


@pytest.mark.parametrize("bad", [{"levels": 0}, {"levels": 101}, {"beta_start": 0.03},
                                 {"beta_end": 1.0}, {"step_b2": 0.0}])
def test_bad_schedule_is_a_value_error(bad):
    with pytest.raises(ValueError):
        DiffusionSchedule(**bad)


def test_forward_noising_moments():
    """For fixed data x: x_t ~ N(abar_t x, sigma_bar_t^2), x_{t+1} ~ N(abar_{t+1} x,
    sigma_bar_{t+1}^2) and Cov(x_t, x_{t+1}) = a_{t+1} sigma_bar_t^2, per level, within 4 Monte
    Carlo standard errors (n = 20,000 pairs per level)."""
    s = DiffusionSchedule(levels=4)
    tab = DiffusionBuffers(s).double()
    n, x0 = 20_000, 0.6
    g = torch.Generator().manual_seed(0)
    for t in range(4):
        x = torch.full((n, 1), x0, dtype=torch.float64)
        tt = torch.full((n,), t, dtype=torch.long)
        xt, xn = diffuse(tab, x, tt, g)
        ab, sb = float(s.alpha_bar[t]), float(s.sigma_bar[t])
        ab1, sb1 = float(s.alpha_bar[t + 1]), float(s.sigma_bar[t + 1])
        for got, m, v in ((xt, ab * x0, sb * sb), (xn, ab1 * x0, sb1 * sb1)):
            assert abs(float(got.mean()) - m) < 4 * math.sqrt(v / n)
            assert abs(float(got.var()) - v) < 4 * v * math.sqrt(2 / (n - 1))
        cov = float(((xt - xt.mean()) * (xn - xn.mean())).mean())
        want = float(s.alpha[t + 1]) * sb * sb
        se = math.sqrt((sb * sb * sb1 * sb1 + want * want) / n)  # Var of a product of Gaussians
        assert abs(cov - want) < 4 * se
        centre = recovery_centre(tab, xn, tt)
        assert torch.allclose(centre, xn * float(s.centre_scale[t]))


def test_bad_schedule_in_a_run_document_is_one_line():
    for override, word in (("energy.levels=0", "levels"), ("energy.beta_start=0.5", "beta_start")):
        with pytest.raises(ebmkit.ConfigError) as err:
            ebmkit.RunConfig.from_preset("drl-quick").with_overrides(override)
        assert word in str(err.value) and "\n" not in str(err.value)
