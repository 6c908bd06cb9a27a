"""The jem and ce objectives: the conformance kit, and the loss against its closed form."""

from __future__ import annotations

import ebmkit_jem
import pytest
import torch
import torch.nn.functional as F
from conftest import MLPClassifier
from ebmkit import ConfigError
from ebmkit.params import build
from ebmkit_jem import JEM, ClassifierEnergy, CrossEntropy
from ebmkit_jem.objective import jem_terms
from ebmkit_testing import ObjectiveConformance, SmallEnergy


class _Classifier:
    def make_energy(self):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return ClassifierEnergy(MLPClassifier(3, self.num_classes), n_classes=self.num_classes)


class TestJEM(_Classifier, ObjectiveConformance):
    component = JEM
    plugin = ebmkit_jem
    entry_point = "jem"
    config = {"alpha": 0.1, "pxy_weight": 0.5}


class TestJEMDefaults(_Classifier, ObjectiveConformance):
    component = JEM


class TestCrossEntropy(_Classifier, ObjectiveConformance):
    component = CrossEntropy
    plugin = ebmkit_jem
    config = {"label_smoothing": 0.1}


def _inputs(k=3, b=6, n=5, d=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    e = ClassifierEnergy(MLPClassifier(d, k), n_classes=k).to(dtype)
    return (e, torch.rand(b, d, generator=g, dtype=dtype) * 2 - 1,
            torch.rand(n, d, generator=g, dtype=dtype) * 2 - 1, torch.randint(0, k, (b,), generator=g))


def test_jem_loss_is_its_closed_form():
    e, xp, xn, y = _inputs()
    cfg = build(JEM.Config, {"ce_weight": 0.7, "px_weight": 1.3, "alpha": 0.2}, where="objective")
    out = JEM(cfg)(e, xp, xn, labels=y)
    fp, fn = e(xp, logits=True), e(xn, logits=True)
    up, un = -torch.logsumexp(fp, 1), -torch.logsumexp(fn, 1)
    want = (0.7 * F.cross_entropy(fp, y) + 1.3 * (up.mean() - un.mean())
            + 0.2 * (up.pow(2).mean() + un.pow(2).mean()))
    torch.testing.assert_close(out.loss, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.metrics["acc"], (fp.argmax(1) == y).double().mean())


def test_pxy_term_is_the_ml_term_with_one_class():
    """With K = 1, p(y|x) = 1: the weights are uniform and U(x, y) = U(x), so the p(x|y) term is
    exactly mean U(x+) - mean U(x-)."""
    e, xp, xn, _ = _inputs(k=1)
    t = jem_terms(e(xp, logits=True), e(xn, logits=True), torch.zeros(len(xp), dtype=torch.int64))
    torch.testing.assert_close(t["pxy"], t["ml"], rtol=1e-12, atol=1e-12)


def test_pxy_importance_weights_recover_the_conditional_mean():
    """p(x|y) = p(x) p(y|x) / p(y): on a finite support, weighting exact p(x) draws by p(y|x)
    gives E_{p(x|y)}[U(x, y)] exactly when the negatives are the support weighted by p(x)."""
    k, m = 3, 6
    g = torch.Generator().manual_seed(0)
    f = torch.randn(m, k, generator=g, dtype=torch.float64)  # logits of the m support points
    px = torch.softmax(torch.logsumexp(f, 1), 0)              # p(x) ∝ sum_y exp f
    # negatives: each support point repeated in proportion to p(x) (exactly, with a big count)
    counts = (px * 10_000).round().long()
    fn = f.repeat_interleave(counts, dim=0)
    pos = torch.zeros(1, k, dtype=torch.float64)
    for c in range(k):
        t = jem_terms(pos, fn, torch.tensor([c]))
        p_x_given_c = torch.softmax(f[:, c], 0)               # p(x|c) ∝ exp f[x, c]
        exact = (p_x_given_c * -f[:, c]).sum()
        est = -pos[0, c] - t["pxy"]                           # pxy = U(x+, c) - E_w U(x-, c)
        torch.testing.assert_close(est, exact, rtol=0, atol=2e-3)


def test_unconditional_energy_is_one_line():
    obj = JEM(JEM.default_config())
    with pytest.raises(ConfigError, match="needs a classifier energy") as exc:
        obj(SmallEnergy((3,)), torch.zeros(2, 3), torch.zeros(2, 3), labels=torch.zeros(2).long())
    assert "\n" not in str(exc.value)


def test_all_weights_zero_refused():
    with pytest.raises(ConfigError, match="every term has weight 0"):
        build(JEM.Config, {"ce_weight": 0, "px_weight": 0}, where="objective")
