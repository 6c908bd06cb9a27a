"""The evaluators through the conformance kit, on a tiny classifier energy and digits8."""

from __future__ import annotations

import json

import ebmkit_jem
import pytest
import torch
from ebmkit import EBM, ConfigError, DataError
from ebmkit.params import build
from ebmkit.plugins import build_registry
from ebmkit_jem import OOD, Accuracy, CalibrationEval, ClassSamples, JEMConvNet
from ebmkit_jem.judge import judge_for
from ebmkit_testing import EvaluatorConformance

pytest.importorskip("sklearn")


class _Digits:
    shape = (1, 8, 8)

    def make_model(self):
        torch.manual_seed(0)
        reg = build_registry()
        energy = JEMConvNet(build(JEMConvNet.Config, {"nf": 2}, where="energy"), self.shape)
        sampler = reg.create("sampler", "langevin", {"steps": 3, "grad_coef": 1.0, "noise_std": 0.01})
        init = reg.create("initializer", "noise", None, self.shape)
        return EBM(energy=energy, sampler=sampler, initializer=init, steps=3, registry=reg)

    def make_data(self):
        return build_registry().create("dataset", "digits8", {})


class TestAccuracy(_Digits, EvaluatorConformance):
    component = Accuracy
    plugin = ebmkit_jem
    entry_point = "jem"


class TestCalibration(_Digits, EvaluatorConformance):
    component = CalibrationEval
    plugin = ebmkit_jem
    config = {"n": 200}


class TestOOD(_Digits, EvaluatorConformance):
    component = OOD
    plugin = ebmkit_jem
    config = {"n": 40, "other": "none"}


class TestClassSamples(_Digits, EvaluatorConformance):
    component = ClassSamples
    plugin = ebmkit_jem
    config = {"per_class": 2, "grid_per_class": 2, "steps": 2, "judge_n": 400}


def test_files_written(tmp_path):
    t = TestClassSamples()
    model, data = t.make_model(), t.make_data()
    ev = ClassSamples(build(ClassSamples.Config, {"per_class": 3, "steps": 1, "judge_n": 400},
                            where="evaluator"))
    res = ev.evaluate(model, data, tmp_path)
    assert (tmp_path / "class_grid.png").is_file()
    doc = json.loads((tmp_path / "class-samples_metrics.json").read_text())
    assert doc["init"] == "model" and set(doc) >= {f"accuracy/{c}" for c in range(10)}
    assert 0 <= res.metrics["accuracy"] <= 1
    res = OOD(build(OOD.Config, {"n": 30}, where="evaluator")).evaluate(model, data, tmp_path)
    assert {f"{s}/{o}" for s in ("logpx", "max_softmax", "grad_norm")
            for o in ("noise", "constant", "inverted", "other")} <= set(res.metrics)
    assert (tmp_path / "ood_hist.png").is_file()


def test_unconditional_model_and_unlabelled_data_are_one_line():
    t = TestAccuracy()
    reg = build_registry()
    energy = reg.create("energy", "mlp", None, (1, 8, 8)) if "mlp" in reg.names("energy") else None
    if energy is not None:
        model = EBM(energy=energy, sampler=t.make_model().sampler, shape=(1, 8, 8))
        with pytest.raises(ConfigError, match="needs a conditional energy"):
            Accuracy(Accuracy.default_config()).evaluate(model, t.make_data(), None)

    class Unlabelled:
        name = "x"

        def open(self, split):
            return torch.utils.data.TensorDataset(torch.zeros(4, 1, 8, 8))

    with pytest.raises(DataError, match="has no labels"):
        Accuracy(Accuracy.default_config()).evaluate(t.make_model(), Unlabelled(), None)


def test_the_judge_is_a_good_digits8_classifier():
    data = build_registry().create("dataset", "digits8", {})
    x, y = data.open(split="train").tensors
    xh, yh = data.open(split="heldout").tensors
    assert judge_for(x, y).accuracy(xh, yh) > 0.97
