"""Each suite fails, with the contract in the message, on a component that breaks it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from ebmkit import EvalResult, Evaluator, Initializer, hookimpl, param
from ebmkit_testing import (
    DataSourceConformance,
    EnergyConformance,
    EvaluatorConformance,
    GaussianEnergy,
    GaussianPoints,
    InitializerConformance,
)
from ebmkit_testing.toys import GaussianEnergyConfig, GaussianPointsConfig
from torch import nn


def suite(base, **attrs):
    return type("TestCase", (base,), attrs)()


# --- shared checks ---------------------------------------------------------------------------
@dataclass(kw_only=True)  # not frozen
class MutableConfig:
    variance: float = param(1.0, "variance")
    mean: float = param(0.0, "")


class MutableConfigEnergy(GaussianEnergy):
    name = "mutable"
    Config = MutableConfig


def test_mutable_config_and_missing_help_fail():
    s = suite(EnergyConformance, component=MutableConfigEnergy)
    with pytest.raises(AssertionError, match="must be frozen"):
        s.test_config_is_frozen_keyword_only_dataclass()
    with pytest.raises(AssertionError, match="no help for: mean"):
        s.test_every_parameter_has_help()


class BadName(GaussianEnergy):
    name = "Bad Name"
    summary = "two\nlines"


def test_bad_name_and_summary_fail():
    s = suite(EnergyConformance, component=BadName)
    with pytest.raises(AssertionError, match="registry key"):
        s.test_name()
    with pytest.raises(AssertionError, match="one non-empty line"):
        s.test_summary_is_one_line()


class _ForgetfulPlugin:
    @hookimpl
    def ebmkit_register(self, register):
        pass  # forgot register(GaussianEnergy)


def test_plugin_that_does_not_register_fails():
    s = suite(EnergyConformance, component=GaussianEnergy, plugin=_ForgetfulPlugin())
    with pytest.raises(AssertionError, match=r"must call register\(GaussianEnergy\)"):
        s.test_registered_by_plugin()


def test_missing_entry_point_fails():
    s = suite(EnergyConformance, component=GaussianEnergy, entry_point="no_such_plugin")
    with pytest.raises(AssertionError, match=r"\[project.entry-points.ebmkit\]"):
        s.test_advertised_by_entry_point()


# --- energies ---------------------------------------------------------------------------------
class KeepsDimEnergy(GaussianEnergy):
    name = "keepsdim"

    def forward(self, x):
        return super().forward(x)[:, None]


class BatchCoupledEnergy(GaussianEnergy):
    name = "coupled"

    def forward(self, x):
        return super().forward(x) - super().forward(x).mean()


class DetachingEnergy(GaussianEnergy):
    name = "detaching"

    def forward(self, x):
        return super().forward(x.detach()) + 0 * x.flatten(1).sum(1)


class UnsavedStateEnergy(GaussianEnergy):
    name = "unsaved"

    def __init__(self, config, shape):
        super().__init__(config, shape)
        self.offset = torch.randn(())  # a plain attribute: not saved in the state dict

    def forward(self, x):
        return super().forward(x) + self.offset


@pytest.mark.parametrize(("cls", "check", "message"), [
    (KeepsDimEnergy, "test_maps_batch_to_vector", r"shape \[B\]"),
    (BatchCoupledEnergy, "test_examples_are_independent", "depends on example i only"),
    (DetachingEnergy, "test_input_gradient", "not identically zero"),
    (UnsavedStateEnergy, "test_rebuilt_from_config_shape_and_state_dict", "rebuilds the energy"),
])
def test_energy_violations(cls, check, message):
    s = suite(EnergyConformance, component=cls)
    with pytest.raises(AssertionError, match=message):
        getattr(s, check)()


def test_dropout_energy_is_not_deterministic_in_train_mode():
    class Dropped(GaussianEnergy):
        name = "dropped"

        def __init__(self, config, shape):
            super().__init__(config, shape)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return super().forward(self.drop(x))

    class Suite(EnergyConformance):
        component = Dropped

        def make_energy(self):
            return super().make_energy().train()

    with pytest.raises(AssertionError, match="deterministic"):
        Suite().test_deterministic()


# --- initializers -----------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class NoParams:
    pass


class GlobalRNGInit(Initializer):
    name = "global-rng"
    summary = "Uses the global RNG (wrong)."
    Config = NoParams

    def sample(self, n, *, data=None, generator=None, device=None):
        return torch.randn((n, *self.shape))


class AliasingInit(Initializer):
    name = "aliasing"
    summary = "Returns the data batch itself (wrong)."
    Config = NoParams

    def sample(self, n, *, data=None, generator=None, device=None):
        return data[:n]


class ForgetfulBuffer(Initializer):
    name = "forgetful"
    summary = "Keeps a buffer but does not save it (wrong)."
    Config = NoParams

    def __init__(self, config, shape):
        super().__init__(config, shape)
        self.buffer = torch.zeros((16, *shape))

    def sample(self, n, *, data=None, generator=None, device=None):
        return self.buffer[:n].clone()

    def update(self, x_final):
        self.buffer[: x_final.shape[0]] = x_final

    def load_state_dict(self, state):
        pass


@pytest.mark.parametrize(("cls", "check", "message"), [
    (GlobalRNGInit, "test_reproducible_with_generator", "comes from the `generator` argument"),
    (AliasingInit, "test_does_not_alias_data", "not return a view of the data"),
    (ForgetfulBuffer, "test_state_dict_is_tensors_and_round_trips", "restores the initializer"),
])
def test_initializer_violations(cls, check, message, tmp_path):
    s = suite(InitializerConformance, component=cls, random=cls is not AliasingInit)
    args = (tmp_path,) if "state_dict" in check else ()
    with pytest.raises(AssertionError, match=message):
        getattr(s, check)(*args)


# --- datasets ---------------------------------------------------------------------------------
class WideImages(GaussianPoints):
    name = "wide"

    def open(self, *, split="train"):
        ds = super().open(split=split)
        return torch.utils.data.TensorDataset(ds.tensors[0] * 3, ds.tensors[1])


class UnnormalisedDensity(GaussianPoints):
    name = "unnormalised"

    def log_density(self, x):
        return -(x**2).sum(1) / 2  # missing -log(2π)


def test_images_out_of_range_fail():
    s = suite(DataSourceConformance, component=WideImages, config={"shape": (1, 4, 4), "std": 1.0})
    with pytest.raises(AssertionError, match=r"in \[-1, 1\]"):
        s.test_images_in_model_range()


def test_unnormalised_density_fails():
    s = suite(DataSourceConformance, component=UnnormalisedDensity)
    with pytest.raises(AssertionError, match="integrates to 1"):
        s.test_log_density_is_normalised()


def test_normalised_density_passes():
    class Normalised(GaussianPoints):
        name = "normalised"

        def log_density(self, x):
            return -(x**2).sum(1) / 2 - torch.log(torch.tensor(2 * torch.pi))

    suite(DataSourceConformance, component=Normalised).test_log_density_is_normalised()


# --- evaluators -------------------------------------------------------------------------------
class LitteringEvaluator(Evaluator):
    name = "littering"
    summary = "Writes into the working directory and returns a tensor metric (wrong)."
    Config = NoParams

    def evaluate(self, model, data, out_dir):
        Path("stray.txt").write_text("x")
        return EvalResult(metrics={"m": torch.tensor(1.0)})


class TrainingEvaluator(Evaluator):
    name = "training"
    summary = "Changes the model (wrong)."
    Config = NoParams

    def evaluate(self, model, data, out_dir):
        model.energy(torch.zeros(1, 2)).sum().backward()
        return EvalResult(metrics={"m": 1.0})


def test_evaluator_violations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the littering evaluator writes into the working directory
    s = suite(EvaluatorConformance, component=LitteringEvaluator)
    with pytest.raises(AssertionError, match="finite Python floats"):
        s.test_returns_finite_float_metrics(tmp_path / "a")
    with pytest.raises(AssertionError, match="writes only into out_dir"):
        s.test_figures_are_files_in_out_dir(tmp_path / "b", monkeypatch)
    s = suite(EvaluatorConformance, component=TrainingEvaluator)
    with pytest.raises(AssertionError, match="must not accumulate gradients"):
        s.test_leaves_model_untouched(tmp_path / "c")


def test_toy_configs_are_valid():
    assert GaussianEnergyConfig().variance == 1.0
    assert GaussianPointsConfig().shape == (2,)
