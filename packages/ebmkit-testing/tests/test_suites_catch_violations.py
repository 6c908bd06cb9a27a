"""Each suite fails, with the contract in the message, on a component that breaks it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from ebmkit.builtin.initializers import DataInit, NoiseInit
from ebmkit.builtin.objectives import MaximumLikelihood
from ebmkit.builtin.samplers import MALA, Langevin
from ebmkit.hookspecs import hookimpl
from ebmkit.interfaces import EvalResult, Evaluator, Initializer, ObjectiveOutput, Options, Prior
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
    ObjectiveConformance,
    OptionsConformance,
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


class ForgetfulAges(Initializer):
    """A buffer whose chains restart from noise once they are two updates old; it saves the
    buffer but not the ages (wrong). The ages are all zero until the first update, so one draw
    after a round trip looks right; the resumed run then restarts other chains."""

    name = "forgetful-ages"
    summary = "Keeps per-chain ages it does not save (wrong)."
    Config = NoParams
    size = 16

    def __init__(self, config, shape):
        super().__init__(config, shape)
        self.buffer = torch.zeros((self.size, *shape))
        self.age = torch.zeros(self.size, dtype=torch.long)
        self._idx = None

    def setup(self, *, draw_data=None, generator=None, device=None):
        self.buffer = torch.rand((self.size, *self.shape), generator=generator) * 2 - 1

    def sample(self, n, *, data=None, generator=None, device=None):
        self._idx = torch.randperm(self.size, generator=generator)[:n]
        noise = torch.rand((n, *self.shape), generator=generator) * 2 - 1
        old = (self.age[self._idx] >= 2).view(-1, *[1] * len(self.shape))
        return torch.where(old, noise, self.buffer[self._idx])

    def update(self, x_final):
        self.buffer[self._idx] = x_final
        self.age[self._idx] = torch.where(self.age[self._idx] >= 2, 0, self.age[self._idx] + 1)

    def state_dict(self):
        return {"buffer": self.buffer}  # wrong: "age" is state too

    def load_state_dict(self, state):
        self.buffer = state["buffer"].clone()


class UnsavedCursor(Initializer):
    """Reads its buffer round-robin from a cursor it does not save (wrong: a resumed run reads
    other chains than the original would have)."""

    name = "unsaved-cursor"
    summary = "Keeps a read cursor it does not save (wrong)."
    Config = NoParams
    size = 16

    def __init__(self, config, shape):
        super().__init__(config, shape)
        self.buffer = torch.zeros((self.size, *shape))
        self.cursor = 0

    def setup(self, *, draw_data=None, generator=None, device=None):
        self.buffer = torch.rand((self.size, *self.shape), generator=generator) * 2 - 1

    def sample(self, n, *, data=None, generator=None, device=None):
        self._idx = (self.cursor + torch.arange(n)) % self.size
        self.cursor = (self.cursor + n) % self.size
        return self.buffer[self._idx].clone()

    def update(self, x_final):
        self.buffer[self._idx] = x_final

    def state_dict(self):
        return {"buffer": self.buffer}  # wrong: the cursor is state too

    def load_state_dict(self, state):
        self.buffer = state["buffer"].clone()


@pytest.mark.parametrize(("cls", "message"), [
    (ForgetfulAges, "iteration 2 after load_state_dict.*draws other chain starts"),
    (UnsavedCursor, "iteration 1 after load_state_dict.*draws other chain starts"),
    (ForgetfulBuffer, "iteration 1 after load_state_dict.*draws other chain starts"),
])
def test_initializer_resume_violations(cls, message):
    s = suite(InitializerConformance, component=cls)
    with pytest.raises(AssertionError, match=message):
        s.test_resume_after_update_continues_identically()


def test_one_draw_after_a_round_trip_misses_the_unsaved_ages(tmp_path):
    """Why the resume check follows several iterations: the single-draw round trip passes the
    initializer that forgets its ages."""
    suite(InitializerConformance, component=ForgetfulAges).test_state_dict_is_tensors_and_round_trips(
        tmp_path)


def test_resume_check_passes_on_correct_counterparts():
    class SavedAges(ForgetfulAges):
        name = "saved-ages"

        def state_dict(self):
            return {"buffer": self.buffer, "age": self.age}

        def load_state_dict(self, state):
            self.buffer, self.age = state["buffer"].clone(), state["age"].clone()

    class SavedCursor(UnsavedCursor):
        name = "saved-cursor"

        def state_dict(self):
            return {"buffer": self.buffer, "cursor": torch.tensor(self.cursor)}

        def load_state_dict(self, state):
            self.buffer, self.cursor = state["buffer"].clone(), int(state["cursor"])

    for cls in (SavedAges, SavedCursor):
        suite(InitializerConformance, component=cls).test_resume_after_update_continues_identically()


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


# --- objectives -------------------------------------------------------------------------------
class BackwardObjective(MaximumLikelihood):
    name = "backward"

    def __call__(self, energy, x_pos, x_neg, *, labels=None):
        out = super().__call__(energy, x_pos, x_neg, labels=labels)
        out.loss.backward(retain_graph=True)  # wrong: train_step does that
        return out


class KeepsDimObjective(MaximumLikelihood):
    name = "keepsdim-objective"

    def __call__(self, energy, x_pos, x_neg, *, labels=None):
        out = super().__call__(energy, x_pos, x_neg, labels=labels)
        return ObjectiveOutput(loss=out.loss, u_pos=out.u_pos[:, None], u_neg=out.u_neg[:, None])


class UnwrappingObjective(MaximumLikelihood):
    """Calls the module inside the wrapper it is given (wrong: DDP does not reduce that)."""

    name = "unwrapping"

    def __call__(self, energy, x_pos, x_neg, *, labels=None):
        return super().__call__(getattr(energy, "module", energy), x_pos, x_neg, labels=labels)


class TwoForwardsObjective(MaximumLikelihood):
    name = "two-forwards"

    def __call__(self, energy, x_pos, x_neg, *, labels=None):
        u_pos, u_neg = energy(x_pos), energy(x_neg)  # wrong under DDP: two forwards, one backward
        return ObjectiveOutput(loss=u_pos.mean() - u_neg.mean(), u_pos=u_pos, u_neg=u_neg)


class SummingObjective(MaximumLikelihood):
    name = "summing"

    def __call__(self, energy, x_pos, x_neg, *, labels=None):
        u = energy(torch.cat([x_pos, x_neg]))
        u_pos, u_neg = u.split([x_pos.shape[0], x_neg.shape[0]])
        return ObjectiveOutput(loss=u_pos.sum() - u_neg.sum(), u_pos=u_pos, u_neg=u_neg)


class SyncingObjective(MaximumLikelihood):
    name = "syncing"

    def __call__(self, energy, x_pos, x_neg, *, labels=None):
        out = super().__call__(energy, x_pos, x_neg, labels=labels)
        out.metrics["gap"] = (out.u_pos.mean() - out.u_neg.mean()).item()  # a host sync
        return out


class UpcastingObjective(MaximumLikelihood):
    name = "upcasting"

    def __call__(self, energy, x_pos, x_neg, *, labels=None):
        out = super().__call__(energy, x_pos, x_neg, labels=labels)
        return ObjectiveOutput(loss=out.loss.double(), u_pos=out.u_pos, u_neg=out.u_neg)


class AttachedMetricObjective(MaximumLikelihood):
    name = "attached-metric"

    def __call__(self, energy, x_pos, x_neg, *, labels=None):
        out = super().__call__(energy, x_pos, x_neg, labels=labels)
        out.metrics["u_pos"] = out.u_pos.mean()  # keeps the graph alive
        return out


class LabelHungryObjective(MaximumLikelihood):
    """Uses the labels but declares needs_labels = False (wrong)."""

    name = "label-hungry"

    def __call__(self, energy, x_pos, x_neg, *, labels=None):
        out = super().__call__(energy, x_pos, x_neg)
        out.metrics["n_classes"] = labels.max() + 1  # TypeError without labels
        return out


class UnclearLabelObjective(LabelHungryObjective):
    name = "unclear-label"
    needs_labels = True  # declared, but fails with a TypeError without them


@pytest.mark.parametrize(("cls", "check", "args", "message"), [
    (BackwardObjective, "test_does_not_call_backward_or_step", (), "never calls backward"),
    (KeepsDimObjective, "test_returns_objective_output", (), r"shape \[B\] = \(6,\) \(not \[B, 1\]\)"),
    (UnwrappingObjective, "test_calls_the_energy_it_is_given", (),
     "calls the energy it is given"),
    (TwoForwardsObjective, "test_calls_the_energy_it_is_given", (), "it called it 2 times"),
    (SummingObjective, "test_linear_energy_closed_form", (), r"w·\(mean x\+ − mean x−\)"),
    (SyncingObjective, "test_keeps_device_without_host_sync", (), "without syncing with the host"),
    (UpcastingObjective, "test_keeps_dtype", (torch.float32,), "keeps the energy's dtype"),
    (AttachedMetricObjective, "test_returns_objective_output", (), "carries no autograd graph"),
    (LabelHungryObjective, "test_needs_labels_is_declared_truthfully", (),
     "must work with labels=None"),
    (UnclearLabelObjective, "test_needs_labels_is_declared_truthfully", (),
     "raises a clear ValueError"),
])
def test_objective_violations(cls, check, args, message):
    s = suite(ObjectiveConformance, component=cls, maximum_likelihood=True)
    with pytest.raises(AssertionError, match=message):
        getattr(s, check)(*args)


def test_unwrapping_objective_gradient_goes_around_the_wrapper():
    """Even when it calls the wrapper too (so the call count is right), an objective whose loss
    reaches the module's own parameters is caught."""

    class Sneaky(MaximumLikelihood):
        name = "sneaky"

        def __call__(self, energy, x_pos, x_neg, *, labels=None):
            out = super().__call__(energy, x_pos, x_neg, labels=labels)
            inner = getattr(energy, "module", energy)
            if inner is energy:
                return out
            penalty = sum(p.pow(2).sum() for p in inner.parameters())  # not through `energy`
            return ObjectiveOutput(loss=out.loss + 1e-3 * penalty, u_pos=out.u_pos,
                                   u_neg=out.u_neg)

    s = suite(ObjectiveConformance, component=Sneaky)
    with pytest.raises(AssertionError, match="reached the module's own parameters"):
        s.test_calls_the_energy_it_is_given()


def test_objective_checks_pass_on_correct_counterparts():
    class Labelled(MaximumLikelihood):
        name = "labelled"
        needs_labels = True

        def __call__(self, energy, x_pos, x_neg, *, labels=None):
            if labels is None:
                raise ValueError("objective 'labelled' needs the data's labels")
            out = super().__call__(energy, x_pos, x_neg)
            out.metrics["n_labels"] = torch.tensor(float(labels.numel()), device=x_pos.device)
            return out

    s = suite(ObjectiveConformance, component=Labelled, maximum_likelihood=True)
    for check in ("test_returns_objective_output", "test_energies_are_those_of_the_inputs",
                  "test_loss_is_differentiable", "test_calls_the_energy_it_is_given",
                  "test_does_not_call_backward_or_step", "test_keeps_device_without_host_sync",
                  "test_needs_labels_is_declared_truthfully", "test_linear_energy_closed_form"):
        getattr(s, check)()
    s.test_keeps_dtype(torch.float32)


# --- options ------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class EveryConfig:
    every: int = param(100, "Iterations between two evaluations.", min=1)


@dataclass(frozen=True, kw_only=True)
class RequiredConfig:
    path: str = param(help="Where to write (no default).")


class MisspeltResumable(Options):
    name = "misspelt"
    summary = "Declares a resumable key that is not a field (wrong)."
    Config = EveryConfig
    resumable = frozenset({"evry"})


class NoDefaults(Options):
    name = "no-defaults"
    summary = "A field without a default (wrong: runs without the table cannot build it)."
    Config = RequiredConfig


def test_options_violations():
    with pytest.raises(AssertionError, match="not fields: evry"):
        suite(OptionsConformance, component=MisspeltResumable).test_resumable_keys_are_config_fields()
    with pytest.raises(AssertionError, match=r"has no \[plugins.no-defaults\] table"):
        suite(OptionsConformance, component=NoDefaults).test_config_builds_with_defaults()


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
