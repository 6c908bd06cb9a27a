"""Each suite fails, with the contract in the message, on a component that breaks it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from ebmkit.builtin.initializers import DataInit, NoiseInit
from ebmkit.builtin.samplers import MALA, Langevin
from ebmkit.hookspecs import hookimpl
from ebmkit.interfaces import EvalResult, Evaluator, Initializer, Prior
from ebmkit.mcmc import (
    ChainState,
    StepInfo,
    chain_grad_norm,
    chain_sum,
    energy_and_grad,
    rand_chains,
    randn_like_on,
)
from ebmkit.params import param
from ebmkit_testing import (
    DataSourceConformance,
    EnergyConformance,
    EvaluatorConformance,
    GaussianEnergy,
    GaussianPoints,
    InitializerConformance,
    SamplerConformance,
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


class UndeclaredDataInit(DataInit):
    name = "undeclared-data"
    needs_data = False  # wrong: sample() needs the data batch


class UnclearDataInit(Initializer):
    name = "unclear-data"
    summary = "Needs data but fails with a TypeError without it (wrong)."
    Config = NoParams
    needs_data = True

    def sample(self, n, *, data=None, generator=None, device=None):
        return data[:n].clone()  # TypeError: 'NoneType' object is not subscriptable


class OverclaimingInit(NoiseInit):
    name = "overclaiming"
    needs_data = True  # wrong: it samples fine without data


class MisshapenPriorInit(NoiseInit):
    name = "misshapen-prior"

    @property
    def prior(self):
        return Prior((*self.shape, 1))


class OverCapacityInit(NoiseInit):
    name = "over-capacity"

    @property
    def capacity(self):
        return 4

    def sample(self, n, *, data=None, generator=None, device=None):
        if n >= 4:
            raise ValueError("at most 3 chains")
        return super().sample(n, data=data, generator=generator, device=device)


class DataBoundStandalone(DataInit):
    name = "data-bound"

    def standalone(self):
        return self  # wrong: needs data, so standalone sampling must fall back to the prior


@pytest.mark.parametrize(("cls", "check", "message"), [
    (UndeclaredDataInit, "test_needs_data_is_declared_truthfully",
     "must work without a data batch"),
    (UnclearDataInit, "test_needs_data_is_declared_truthfully", "raises a clear ValueError"),
    (OverclaimingInit, "test_needs_data_is_declared_truthfully", "declare needs_data = False"),
    (MisshapenPriorInit, "test_prior", "the prior's shape is one example's shape"),
    (OverCapacityInit, "test_capacity", "at most 3 chains"),
    (DataBoundStandalone, "test_standalone", "must start chains without data"),
])
def test_initializer_property_violations(cls, check, message):
    s = suite(InitializerConformance, component=cls)
    with pytest.raises((AssertionError, ValueError), match=message):
        getattr(s, check)()


def test_initializer_properties_of_a_correct_data_initializer_pass():
    s = suite(InitializerConformance, component=DataInit)
    for check in ("test_needs_data_is_declared_truthfully", "test_prior", "test_capacity",
                  "test_standalone"):
        getattr(s, check)()


# --- samplers ---------------------------------------------------------------------------------
class DeviceDrawLangevin(Langevin):
    """Draws its noise on the chains' device with the caller's generator (wrong: a CPU generator
    cannot drive CUDA chains this way)."""

    name = "device-draw"

    def _move(self, x, g, generator, noise, inplace):
        x = x - self.a * g
        if noise:
            x = x + self.b * torch.randn(x.shape, generator=generator, device=x.device,
                                         dtype=x.dtype)
        return x

    def run(self, energy, x0, steps=None, **kw):  # the step-by-step loop only
        return super(Langevin, self).run(energy, x0, steps, **kw)


class LayoutDrawLangevin(DeviceDrawLangevin):
    """Draws noise shaped like the chains (wrong: fills memory in the chains' stride order)."""

    name = "layout-draw"

    def _move(self, x, g, generator, noise, inplace):
        x = x - self.a * g
        if noise:
            x = x + self.b * torch.empty_like(x).normal_(generator=generator)
        return x


class InexactMALA(MALA):
    name = "inexact-mala"
    exact = False  # wrong: it reports acceptances (it has a Metropolis test)


class SignedGradCoef(Langevin):
    name = "signed-grad-coef"

    @property
    def grad_coef(self):
        return -self.a


class DoubledGradCoef(Langevin):
    name = "doubled-grad-coef"

    @property
    def grad_coef(self):
        return 2 * self.a


class ReverseWithForwardGradient(MALA):
    """MALA whose reverse proposal density uses ∇U(x) instead of ∇U(y) (wrong)."""

    name = "wrong-reverse"

    def propose(self, energy, state, eps, generator, noise, differentiable):
        x, g_x, u_x = state.x, state.grad, state.energy
        a = eps * eps / 2
        y = x - a * g_x + eps * randn_like_on(x, generator)
        u_y, g_y = energy_and_grad(energy, y, temperature=self.temperature)
        fwd = chain_sum((y - x + a * g_x).square())
        bwd = chain_sum((x - y + a * g_x).square())  # should be + a * g_y
        log_alpha = (u_x - u_y) + (fwd - bwd) / (2 * eps * eps)
        return y, u_y, g_y, log_alpha, torch.zeros_like(u_y, dtype=torch.bool)


class SharedDecisionMALA(MALA):
    """One accept decision for all chains, with the mean acceptance probability (wrong)."""

    name = "shared-decision"

    def step(self, energy, state, *, generator=None, noise=True, differentiable=False):
        x = state.x
        gn = chain_grad_norm(state.grad)
        eps = float(self.config.step_size)
        y, u_y, g_y, log_alpha, div = self.propose(energy, state, eps, generator, noise, False)
        p = log_alpha.clamp(max=0).exp()
        acc = (rand_chains(x[:1], generator) < p.mean()).expand(x.shape[0])
        m = acc.view(-1, *[1] * (x.ndim - 1))
        new = ChainState(x=torch.where(m, y, x), energy=torch.where(acc, u_y, state.energy),
                         grad=torch.where(m, g_y, state.grad))
        return new, StepInfo(grad_norm=gn, energy=new.energy, accepted=acc, accept_prob=p,
                             divergent=div)


@pytest.mark.parametrize(("cls", "config", "attrs", "check", "args", "message"), [
    (DeviceDrawLangevin, {"step_size": 0.5}, {}, "test_cpu_generator_drives_chains_on_another_device",
     (), r"a CPU generator may drive chains on another device.*torch\.randn on meta"),
    (LayoutDrawLangevin, {"step_size": 0.5}, {}, "test_channels_last_images", (),
     "same chain for a contiguous and a channels-last x0"),
    (LayoutDrawLangevin, {"step_size": 0.5}, {}, "test_cpu_generator_drives_chains_on_another_device",
     (), r"Tensor\.normal_ on meta"),
    (InexactMALA, {"step_size": 0.9}, {}, "test_acceptances_are_reported_only_by_exact_samplers",
     (), r"reports acceptances \(ChainResult.accept_rate.*leaves `exact = False`"),
    (SignedGradCoef, {"step_size": 0.5}, {}, "test_grad_coef_is_none_or_positive", (),
     "finite positive"),
    (DoubledGradCoef, {"step_size": 0.5}, {"grad_coef_is_step": True},
     "test_noise_free_step_moves_by_grad_coef", (), "moves x by −grad_coef·∇U/T"),
    (MALA, {"step_size": 0.1}, {}, "test_gaussian_target", (1.0,), "at acceptance 0.999"),
    (ReverseWithForwardGradient, {"step_size": 0.9}, {}, "test_gaussian_target", (1.0,),
     "variance within 4 standard errors"),
    (SharedDecisionMALA, {"step_size": 0.9}, {}, "test_gaussian_target", (1.0,),
     "within 4 standard errors"),
])
def test_sampler_violations(cls, config, attrs, check, args, message):
    s = suite(SamplerConformance, component=cls, config=config, **attrs)
    with pytest.raises(AssertionError, match=message):
        getattr(s, check)(*args)


def test_small_step_hides_the_planted_metropolis_errors():
    """Why exact samplers must be checked where they reject: at step 0.1 (acceptance 0.999) the
    wrong reverse term and the shared decision pass the Gaussian check."""
    for cls in (ReverseWithForwardGradient, SharedDecisionMALA):
        suite(SamplerConformance, component=cls, config={"step_size": 0.1},
              max_accept_rate=None).test_gaussian_target(1.0)


def test_sampler_checks_pass_on_correct_counterparts():
    for cls, config in ((Langevin, {"step_size": 0.5, "memory_format": "preserve"}),
                        (MALA, {"step_size": 0.9})):
        s = suite(SamplerConformance, component=cls, config=config, grad_coef_is_step=True)
        s.test_cpu_generator_drives_chains_on_another_device()
        s.test_channels_last_images()
        s.test_acceptances_are_reported_only_by_exact_samplers()
        s.test_grad_coef_is_none_or_positive()
        s.test_noise_free_step_moves_by_grad_coef()


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
