"""ECE, AUROC and the OOD scores/sets against closed forms and Monte-Carlo error."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ebmkit_jem.metrics import (
    auroc,
    calibration,
    class_logits,
    gaussian_auroc,
    ood_scores,
    ood_sets,
    resize_images,
)


def test_ece_of_a_perfectly_calibrated_predictor_is_within_mc_error():
    """correct ~ Bernoulli(confidence): E[acc_b] = E[conf_b] in every bin, so ECE is only the
    Monte-Carlo error, E|acc_b - conf_b| <= sqrt(2/pi) sqrt(var_b / n_b); we allow 3x its sum."""
    rng = np.random.default_rng(0)
    n = 200_000
    conf = rng.uniform(0.1, 1.0, n)
    correct = rng.uniform(size=n) < conf
    cal = calibration(conf, correct, n_bins=15)
    which = np.clip(np.digitize(conf, cal.edges[1:-1], right=True), 0, 14)
    bound = 0.0
    for b in range(15):
        p = conf[which == b]
        if p.size:
            bound += p.size / n * math.sqrt(2 / math.pi) * math.sqrt((p * (1 - p)).mean() / p.size)
    assert cal.ece < 3 * bound, (cal.ece, bound)
    assert bound < 0.005


def test_ece_of_a_known_miscalibrated_predictor_is_its_closed_form():
    """Three confidence levels, each in its own bin, with exactly a_b of its predictions right:
    ECE = sum_b w_b |a_b - c_b| exactly."""
    conf = np.repeat([0.95, 0.75, 0.55], [500, 300, 200])
    correct = np.concatenate([np.arange(500) < 400, np.arange(300) < 270, np.arange(200) < 50])
    cal = calibration(conf, correct, n_bins=10)
    want = 0.5 * abs(0.8 - 0.95) + 0.3 * abs(0.9 - 0.75) + 0.2 * abs(0.25 - 0.55)
    assert cal.ece == pytest.approx(want, abs=1e-12)
    assert cal.mce == pytest.approx(0.3, abs=1e-12)
    assert cal.counts.sum() == 1000 and np.isnan(cal.accuracy[0])


def test_auroc_exact_cases_and_brute_force_with_ties():
    assert auroc([2, 3], [0, 1]) == 1.0
    assert auroc([0, 1], [2, 3]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 5, 40), rng.integers(0, 5, 30)
    brute = np.mean([(x > y) + 0.5 * (x == y) for x in a for y in b])
    assert auroc(a, b) == pytest.approx(brute, abs=1e-12)
    assert auroc([np.nan, 1.0], [0.0]) == 0.5  # a non-finite score ranks lowest


@pytest.mark.parametrize("mu,s1,s0", [(1.0, 1.0, 1.0), (0.5, 1.0, 2.0), (2.0, 0.5, 1.0)])
def test_auroc_of_gaussian_scores_matches_the_closed_form(mu, s1, s0):
    """AUROC of N(mu, s1^2) vs N(0, s0^2) is Phi(mu / sqrt(s1^2 + s0^2)); tolerance 4 Hanley-McNeil
    standard errors."""
    rng = np.random.default_rng(2)
    n = 20_000
    a, b = rng.normal(mu, s1, n), rng.normal(0, s0, n)
    want = gaussian_auroc(mu, 0.0, s1, s0)
    q1, q2 = want / (2 - want), 2 * want**2 / (1 + want)
    se = math.sqrt((want * (1 - want) + (n - 1) * (q1 - want**2) + (n - 1) * (q2 - want**2)) / n**2)
    assert auroc(a, b) == pytest.approx(want, abs=4 * se)


class _GaussClasses(torch.nn.Module):
    """U(x, y) = |x - mu_y|^2 / 2 on R^2 (two classes): closed-form scores."""

    n_classes = 2

    def __init__(self):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64))

    def forward(self, x, y=None):
        joint = 0.5 * (x[:, None, :] - self.mu[None]).pow(2).sum(-1)  # [B, 2]
        if y is None:
            return -torch.logsumexp(-joint, 1)
        return joint.gather(1, y[:, None]).squeeze(1)


def test_ood_scores_and_class_logits_of_a_conditional_energy_without_logits():
    e = _GaussClasses()
    x = torch.tensor([[0.3, -0.2], [2.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    joint = 0.5 * (x[:, None, :] - e.mu.detach()[None]).pow(2).sum(-1)
    torch.testing.assert_close(class_logits(e, x), -joint)
    s = ood_scores(e, x)
    torch.testing.assert_close(s["logpx"], torch.logsumexp(-joint, 1))
    torch.testing.assert_close(s["max_softmax"], torch.softmax(-joint, 1).max(1).values)
    w = torch.softmax(-joint, 1)  # grad U(x) = sum_y p(y|x) (x - mu_y)
    grad = (w[:, :, None] * (x[:, None, :] - e.mu.detach()[None])).sum(1)
    torch.testing.assert_close(s["grad_norm"], -grad.norm(dim=1))
    assert e.mu.grad is None


def test_ood_sets():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 8, 8, generator=g) * 2 - 1
    other = torch.rand(9, 1, 8, 8, generator=g)
    sets = ood_sets(x, generator=g, other=other)
    assert set(sets) == {"noise", "constant", "inverted", "other"}
    assert all(v.shape == x.shape for v in sets.values())
    torch.testing.assert_close(sets["inverted"], -x)
    c = sets["constant"].flatten(1)
    assert torch.equal(c.min(1).values, c.max(1).values)
    assert sets["noise"].abs().max() <= 1


def test_resize_images():
    x = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8).repeat(2, 3, 1, 1)
    y = resize_images(x, (1, 28, 28))
    assert y.shape == (2, 1, 28, 28) and y.abs().max() <= 1
    z = resize_images(torch.zeros(2, 1, 28, 28), (1, 8, 8))
    assert z.shape == (2, 1, 8, 8) and torch.equal(z, torch.zeros_like(z))
