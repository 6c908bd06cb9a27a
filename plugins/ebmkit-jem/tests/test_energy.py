"""Classifier energies: the JEM identities, the conditional-energy contract, BatchNorm refused."""

from __future__ import annotations

import ebmkit_jem
import pytest
import torch
from conftest import MLPClassifier
from ebmkit import ConfigError
from ebmkit.params import build
from ebmkit_jem import ClassifierEnergy, JEMConvNet
from ebmkit_testing import ConditionalEnergyConformance
from torch import nn


class TestJEMConvNet(ConditionalEnergyConformance):
    component = JEMConvNet
    plugin = ebmkit_jem
    entry_point = "jem"
    shape = (1, 8, 8)
    config = {"n_classes": 3, "nf": 2}


class TestJEMConvNetGroupNorm(ConditionalEnergyConformance):
    component = JEMConvNet
    shape = (1, 12, 12)
    config = {"n_classes": 4, "nf": 2, "norm": "group", "act": "leaky_relu"}


def _wrapped(k=4, d=5, dtype=torch.float64):
    torch.manual_seed(0)
    return ClassifierEnergy(MLPClassifier(d, k), n_classes=k).to(dtype)


def test_classifier_energy_identities_exact():
    """U(x, y) = -f(x)[y]; U(x) = -logsumexp f(x) = -log sum_y exp(-U(x, y)); p(y|x) = softmax f."""
    e = _wrapped()
    x = torch.randn(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    f = e.classifier(x)
    for c in range(4):
        y = torch.full((7,), c)
        torch.testing.assert_close(e(x, y=y), -f[:, c], rtol=0, atol=0)
    joint = torch.stack([e(x, y=torch.full((7,), c)) for c in range(4)], 1)
    torch.testing.assert_close(e(x), -torch.log(torch.exp(-joint).sum(1)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(e(x), -torch.logsumexp(f, 1), rtol=0, atol=0)
    torch.testing.assert_close(e(x, logits=True), f, rtol=0, atol=0)
    torch.testing.assert_close(e.log_prob_y(x).exp(), torch.softmax(f, 1), rtol=1e-12, atol=1e-14)
    # p(y|x) from the energies: exp(-U(x,y)) / exp(-U(x))
    torch.testing.assert_close(torch.exp(-joint + e(x)[:, None]), torch.softmax(f, 1),
                               rtol=1e-12, atol=1e-14)


def test_classifier_energy_is_shift_invariant_for_classification_only():
    """Adding c to every logit leaves p(y|x) and changes U(x) by exactly -c."""
    e = _wrapped()
    x = torch.randn(3, 5, dtype=torch.float64)
    shifted = ClassifierEnergy(nn.Sequential(e.classifier, _Add(2.5)), n_classes=4)
    torch.testing.assert_close(shifted(x), e(x) - 2.5)
    torch.testing.assert_close(shifted.log_prob_y(x), e.log_prob_y(x))


class _Add(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x):
        return x + self.c


def test_batchnorm_refused_in_one_line():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.SiLU(), nn.Linear(8, 3))
    with pytest.raises(ConfigError) as exc:
        ClassifierEnergy(net, n_classes=3)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("the classifier has a BatchNorm layer (2)")
    assert "GroupNorm" in msg


def test_jem_cnn_norm_batch_refused_in_one_line():
    cfg = build(JEMConvNet.Config, {"norm": "batch"}, where="energy")
    with pytest.raises(ConfigError, match=r"^energy 'jem-cnn': norm = \"batch\" is refused") as exc:
        JEMConvNet(cfg, (1, 8, 8))
    assert "\n" not in str(exc.value)


def test_jem_cnn_refuses_non_images():
    cfg = build(JEMConvNet.Config, {}, where="energy")
    with pytest.raises(ConfigError, match="expects images"):
        JEMConvNet(cfg, (2,))


def test_wrong_logits_shape_is_one_line():
    e = ClassifierEnergy(MLPClassifier(5, 3), n_classes=4)
    with pytest.raises(ConfigError, match=r"logits \[B, 4\]; it gave \(2, 3\)"):
        e(torch.zeros(2, 5))


def test_bad_n_classes():
    with pytest.raises(ConfigError, match="n_classes must be a positive int"):
        ClassifierEnergy(MLPClassifier(5, 3), n_classes=0)
