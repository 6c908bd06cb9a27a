"""The digits8 dataset, the digits-longrun evaluator and the digits reproduction (issue 14)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from ebmkit import ConfigError, Energy
from ebmkit.builtin.digits import (
    DigitClassifier,
    Digits8,
    DigitsLongRun,
    class_histogram,
    classes_covered,
    energy_stats,
    histogram_entropy,
    mmd2,
    saturation,
)
from ebmkit.errors import DataError, MissingDependencyError
from ebmkit.params import build
from ebmkit.reproductions.digits import CLAIMS, LONG, check_claims, derived, reproduce

pytestmark = pytest.mark.usefixtures("one_thread")


def digits(**kw) -> Digits8:
    return Digits8(build(Digits8.Config, kw, where="data"))


# ---------------------------------------------------------------------------------------------
# the data set
# ---------------------------------------------------------------------------------------------
def test_shape_range_and_split_sizes():
    src = digits()
    x, y = src.open().tensors
    h, hy = src.open(split="heldout").tensors
    assert src.shape == (1, 8, 8) and x.shape == (1297, 1, 8, 8) and h.shape == (500, 1, 8, 8)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    # 0..16 -> [-1, 1] in steps of 1/8: the extremes are attained and every value is on the grid.
    both = torch.cat([x, h])
    assert float(both.min()) == -1.0 and float(both.max()) == 1.0
    assert torch.equal((both + 1) * 8, ((both + 1) * 8).round())
    assert set(y.tolist()) == set(range(10)) == set(hy.tolist())
    assert len(src.open(split="all")) == 1797
    assert torch.equal(src.open(split="test").tensors[0], h)  # alias


def test_split_is_fixed_by_its_seed_and_disjoint():
    a, b = digits(), digits()
    assert torch.equal(a.open().tensors[0], b.open().tensors[0])
    assert torch.equal(a.open(split="heldout").tensors[0], b.open(split="heldout").tensors[0])
    other = digits(split_seed=1)
    assert not torch.equal(a.open(split="heldout").tensors[0], other.open(split="heldout").tensors[0])
    # train and held-out together are exactly the 1,797 digits (as a multiset of rows).
    rows = lambda t: sorted(map(tuple, t.reshape(len(t), -1).tolist()))  # noqa: E731
    whole = rows(a.open(split="all").tensors[0])
    assert rows(torch.cat([a.open().tensors[0], a.open(split="heldout").tensors[0]])) == whole
    assert len(digits(heldout=100).open(split="heldout")) == 100
    # data.split chooses what a run trains on.
    assert torch.equal(digits(split="heldout").open().tensors[0], a.open(split="heldout").tensors[0])


def test_bad_split_is_a_one_line_data_error():
    with pytest.raises(DataError, match="splits train, heldout, all") as e:
        digits().open(split="validate-me")
    assert "\n" not in str(e.value)


def test_missing_scikit_learn_names_the_extra(monkeypatch):
    from ebmkit.builtin import digits as module

    module._load_digits8.cache_clear()  # the digits are cached after the first load
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import -> ImportError
    with pytest.raises(MissingDependencyError) as e:
        digits().open()
    msg = str(e.value)
    assert 'pip install "ebmkit-core[digits]"' in msg and "digits8" in msg and "\n" not in msg


def test_registered(registry):
    assert registry.get("dataset", "digits8") is Digits8
    assert registry.get("evaluator", "digits-longrun") is DigitsLongRun
    for name in ("digits8-nonconvergent", "digits8-convergent"):
        doc = registry.get("preset", name).read()
        assert doc["data"]["name"] == "digits8"


# ---------------------------------------------------------------------------------------------
# metrics on known inputs
# ---------------------------------------------------------------------------------------------
def test_saturation_is_exact():
    x = torch.tensor([-1.0, -0.96, -0.95, 0.0, 0.5, 0.95, 0.951, 1.0, 3.0, -7.0])
    assert saturation(x, 0.95) == pytest.approx(6 / 10)  # -1, -.96, .951, 1, 3, -7
    assert saturation(x, 1.0) == pytest.approx(2 / 10)


def test_mmd_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 1, 8, 8, generator=g)
    bw = (2.0, 4.0, 8.0)
    assert mmd2(x, x, bw) == pytest.approx(0.0, abs=1e-12)
    vals = [mmd2(x + s, x, bw) for s in (0.1, 0.3, 1.0, 3.0)]
    assert all(a < b for a, b in zip(vals, vals[1:], strict=False)) and vals[0] > 0
    # Far apart: every cross kernel vanishes, MMD² -> mean k(x,x) + mean k(y,y) = 2 * that term.
    far = mmd2(x + 1e3, x, bw)
    assert far == pytest.approx(2 * (mmd2(x, x + 1e3, bw) / 2), rel=1e-9)
    # A diverged (non-finite) chain counts as infinitely far, not as an error.
    y = x.clone()
    y[0] = math.nan
    assert math.isfinite(mmd2(y, x, bw)) and mmd2(y, x, bw) > mmd2(x, x, bw)


def test_mmd_noise_floor_is_far_below_digits_vs_noise():
    src = digits()
    x, h = src.open().tensors[0][:500], src.open(split="heldout").tensors[0]
    floor = mmd2(x, h, (2.0, 4.0, 8.0))
    noise = mmd2(torch.rand(500, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1, h,
                 (2.0, 4.0, 8.0))
    assert 0 < floor < noise / 10


def test_class_histogram_entropy_and_coverage():
    uniform = class_histogram(np.repeat(np.arange(10), 7))
    assert histogram_entropy(uniform) == pytest.approx(math.log(10))
    assert classes_covered(uniform, 0.01) == 10
    one = class_histogram(np.full(50, 3))
    assert histogram_entropy(one) == 0.0 and classes_covered(one, 0.01) == 1
    two = class_histogram(np.array([0] * 99 + [1]))
    assert classes_covered(two, 0.01) == 2 and classes_covered(two, 0.02) == 1


def test_energy_stats_against_a_reference():
    ref = torch.arange(1000, dtype=torch.float64)  # mean 499.5, sd 288.8; q01 = 9.99, q99 = 989.01
    m = energy_stats(torch.tensor([499.5 - 2 * float(ref.std())] * 4), ref)
    assert m["energy_z"] == pytest.approx(-2.0)
    u = torch.tensor([0.0, 5.0, 500.0, 2000.0])
    m = energy_stats(u, ref)
    assert m["energy_below_data"] == 0.5 and m["energy_in_range"] == 0.25


def test_classifier_verdict_digits_vs_noise():
    src = digits()
    x, y = src.open().tensors
    h, _ = src.open(split="heldout").tensors
    clf = DigitClassifier(x, y)
    real = clf.verdict(h)
    noise = clf.verdict(torch.rand(500, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    # An RBF SVM reaches ~98% on these digits; its calibrated confidence on real held-out digits
    # is high, all ten classes appear in nearly equal shares (entropy close to ln 10 = 2.30).
    assert real["confidence"] > 0.85 and real["classes"] == 10 and real["class_entropy"] > 2.25
    assert noise["confidence"] < real["confidence"] - 0.1


# ---------------------------------------------------------------------------------------------
# the evaluator on fixed energies
# ---------------------------------------------------------------------------------------------
class Quadratic(Energy):
    """U(x) = c·|x - m|²/2: a Gaussian N(m, I/c) (c < 0: unbounded below, chains fly apart)."""

    name = "quadratic-test"

    def __init__(self, c: float, m: torch.Tensor):
        super().__init__(None, (1, 8, 8))
        self.c = c
        self.register_buffer("m", m)
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.c * (x - self.m).flatten(1).square().sum(1) / 2 + self.w


def _model(c: float):
    import ebmkit

    mean = digits().open().tensors[0].mean(0)
    return ebmkit.model_from(Quadratic(c, mean), {"name": "langevin", "step_size": 0.1, "steps": 10},
                             "noise")


def test_evaluator_reports_and_draws(tmp_path):
    ev = DigitsLongRun(build(DigitsLongRun.Config, {"n": 60, "steps": 30, "checkpoints": 3},
                             where="evaluator"))
    res = ev.evaluate(_model(25.0), None, tmp_path)
    m = res.metrics
    for chain in ("mala-noise", "mala-data", "ula-noise", "ula-data"):
        assert {f"{chain}_{k}" for k in ("mmd", "energy_z", "saturation", "confidence",
                                         "class_entropy", "classes")} <= set(m)
    assert 0.0 <= m["mala-noise_accept"] <= 1.0 and "ula-noise_accept" not in m
    assert m["mmd_floor"] > 0 and m["data_classes"] == 10
    for key in ("curves", "snapshots_mala-noise", "short_run"):
        assert res.figures[key].is_file()
    assert (tmp_path / "digits_longrun_metrics.json").is_file()
    assert set(np.load(tmp_path / "digits_longrun_snapshots.npz").files) >= {"mala-noise", "short"}


def test_evaluator_sees_an_energy_unbounded_below():
    """Direction check on a known energy: U = -5|x - mean|²/2 drives chains away from the data
    (ULA multiplies the deviation by (1 + 5 eps²/2)^200 = e^5 ≈ 150 in 200 steps at eps = 0.1),
    so energy falls far below the data's, saturation and MMD rise (the non-convergent picture),
    while the Gaussian around the data mean (c = 25, sd 0.2) keeps its energy level."""
    cfg = build(DigitsLongRun.Config, {"n": 60, "steps": 200, "checkpoints": 3,
                                       "chains": ("ula-data",), "short_run": False},
                where="evaluator")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        bad = DigitsLongRun(cfg).evaluate(_model(-5.0), None, d).metrics
        good = DigitsLongRun(cfg).evaluate(_model(25.0), None, d).metrics
    assert bad["ula-data_energy_z"] < -5 and bad["ula-data_saturation"] > bad["data_saturation"] + 0.3
    assert bad["ula-data_mmd"] > 10 * bad["mmd_floor"]
    assert good["ula-data_mmd"] < bad["ula-data_mmd"]


def test_evaluator_rejects_other_shapes():
    import ebmkit

    energy = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1), torch.nn.Flatten(0))
    model = ebmkit.model_from(energy, "langevin", {"name": "noise"}, shape=(4,))
    ev = DigitsLongRun(build(DigitsLongRun.Config, {}, where="evaluator"))
    with pytest.raises(ConfigError, match=r"\[1, 8, 8\]"):
        ev.evaluate(model, None, "unused")


# ---------------------------------------------------------------------------------------------
# the reproduction
# ---------------------------------------------------------------------------------------------
def test_claims_are_checked_against_their_thresholds():
    m = {"nonconvergent": {"long_mmd_ratio": 20.0, "short_mmd_ratio": 4.0},
         "convergent": {"long_mmd_ratio": 2.0, "long_classes": 9.0}}
    rows = {(r[0], r[1]): r[5] for r in check_claims(m)}
    assert rows == {("nonconvergent", "long_mmd_ratio"): True,
                    ("nonconvergent", "short_mmd_ratio"): False,
                    ("convergent", "long_mmd_ratio"): True, ("convergent", "long_classes"): False}
    assert {c[0] for c in CLAIMS} == {"nonconvergent", "convergent"}


def test_fast_reproduction_shows_the_direction_of_the_effects(tmp_path, registry):
    """Shortened runs (150 iterations each, 300 MALA steps from noise): the non-convergent
    model's long-run samples fall below the data's energy and drift away from the data, the
    convergent model's do not drift as far. Directions only; the thresholds are for the full run."""
    m = reproduce(tmp_path, fast=True, registry=registry)
    nc, cv = m["nonconvergent"], m["convergent"]
    assert nc["long_energy_z"] < -3 and nc["long_mmd_ratio"] > nc["short_mmd_ratio"]
    assert nc["long_saturation_gap"] > 0
    assert abs(cv["long_energy_z"]) < abs(nc["long_energy_z"])
    assert cv["long_mmd_ratio"] < nc["long_mmd_ratio"]
    assert (tmp_path / "digits_side_by_side.png").is_file()
    assert derived(nc)["long_mmd_ratio"] == nc[f"{LONG}_mmd"] / nc["mmd_floor"]


#: Claims the documented full run misses (docs/reproductions/digits.md, "Reading"): the
#: non-convergent short-run samples are noisy (classifier confidence 0.59 vs 0.94), and the
#: convergent long-run MMD² is 5.36x the floor against the stated 5x.
KNOWN_DEVIATIONS = {("nonconvergent", "short_confidence_gap"), ("convergent", "long_mmd_ratio")}


def test_cli_rejects_a_bad_regime_in_one_line(cli):
    code, _, err = cli("reproduce", "digits", "--regime", "sometimes")
    assert code != 0 and "choose nonconvergent, convergent or both" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_full_reproduction_meets_the_thresholds(tmp_path, registry):
    """The documented reproduction (docs/reproductions/digits.md): every claim holds except the
    documented deviations, and the headline contrast holds."""
    m = reproduce(tmp_path, registry=registry)
    failed = {(r[0], r[1]) for r in check_claims(m) if not r[5]}
    assert failed <= KNOWN_DEVIATIONS, sorted(failed - KNOWN_DEVIATIONS)
    assert m["convergent"]["long_mmd_ratio"] < m["nonconvergent"]["long_mmd_ratio"] / 5
