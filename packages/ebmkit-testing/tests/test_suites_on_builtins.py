"""The conformance suites pass on ebmkit's own built-ins (and on the kit's toy components)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from ebmkit.builtin import datasets, energies, initializers, objectives
from ebmkit.builtin.samplers import HMC, MALA, Langevin
from ebmkit.interfaces import EvalResult, Evaluator, Options
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


class TestMLPEnergy(EnergyConformance):
    component = energies.MLPEnergy
    plugin = energies
    entry_point = "core_energies"
    shape = (2,)


class TestConvNet32(EnergyConformance):
    component = energies.ConvNet32
    plugin = energies
    shape = (1, 32, 32)
    config = {"nf": 4}


class TestGaussianEnergy(EnergyConformance):
    component = GaussianEnergy
    shape = (3, 4)


class TestNoiseInit(InitializerConformance):
    component = initializers.NoiseInit
    plugin = initializers
    entry_point = "core_initializers"


class TestDataInit(InitializerConformance):
    component = initializers.DataInit
    plugin = initializers
    config = {"noise_std": 0.1}


class TestDataInitNoNoise(InitializerConformance):
    component = initializers.DataInit
    random = False


class TestPersistentInit(InitializerConformance):
    component = initializers.PersistentInit
    plugin = initializers
    shape = (1, 4, 4)
    config = {"buffer_size": 32, "rejuvenation": 0.2}


class TestML(ObjectiveConformance):
    component = objectives.MaximumLikelihood
    plugin = objectives
    entry_point = "core_objectives"
    maximum_likelihood = True


class TestMLWithEnergyPenalty(ObjectiveConformance):
    component = objectives.MaximumLikelihood
    config = {"alpha": 0.5}
    shape = (1, 4, 4)


def test_ml_energy_penalty_closed_form():
    """alpha > 0 adds alpha * (mean U(x+)^2 + mean U(x-)^2), logged as `energy_reg`: on a
    linear energy U(x) = w.x, in closed form, with its gradient."""
    alpha = 0.5
    ml = objectives.MaximumLikelihood(objectives.MLConfig(alpha=alpha))
    g = torch.Generator().manual_seed(0)
    x_pos, x_neg = torch.randn(6, 3, generator=g), torch.randn(5, 3, generator=g)
    w = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    out = ml(lambda x: x @ w, x_pos, x_neg)
    a, b = x_pos @ w.detach(), x_neg @ w.detach()
    reg = a.pow(2).mean() + b.pow(2).mean()
    torch.testing.assert_close(out.loss.detach(), a.mean() - b.mean() + alpha * reg)
    torch.testing.assert_close(out.metrics["energy_reg"], reg)
    (grad,) = torch.autograd.grad(out.loss, [w])
    expected = (x_pos.mean(0) - x_neg.mean(0)
                + alpha * (2 * (a[:, None] * x_pos).mean(0) + 2 * (b[:, None] * x_neg).mean(0)))
    torch.testing.assert_close(grad, expected)


@dataclass(frozen=True, kw_only=True)
class ToyOptionsConfig:
    every: int = param(100, "Iterations between two evaluations.", min=1)
    n: int = param(64, "Samples per evaluation.", min=1)


class ToyOptions(Options):
    name = "toy-plugin"
    summary = "A plugin's own settings ([plugins.toy-plugin])."
    Config = ToyOptionsConfig
    resumable = frozenset({"every"})


class TestToyOptions(OptionsConformance):
    component = ToyOptions


class TestGaussianPoints(DataSourceConformance):
    component = GaussianPoints
    splits = ("train", "test")


class TestMNIST5k(DataSourceConformance):
    component = datasets.MNIST5k
    plugin = datasets
    entry_point = "core_datasets"
    config = {"limit": 64, "resolution": 16}


@dataclass(frozen=True, kw_only=True)
class MeanEnergyConfig:
    n: int = param(32, "Samples drawn from the model.", min=1)


class MeanEnergyGap(Evaluator):
    """A minimal evaluator: mean energy of data minus mean energy of model samples, plus a plot."""

    name = "mean-energy-gap"
    summary = "mean U(data) - mean U(samples)."
    Config = MeanEnergyConfig

    def evaluate(self, model, data, out_dir):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x = model.sample(self.config.n, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            u_model = model.energy(x).mean()
            metrics = {"u_model": float(u_model)}
            if data is not None:
                xd = torch.stack([data.open()[i][0] for i in range(self.config.n)])
                metrics["gap"] = float(model.energy(xd).mean() - u_model)
        fig, ax = plt.subplots()
        ax.hist(model.energy(x).detach().numpy())
        path = out_dir / "energies.png"
        fig.savefig(path)
        plt.close(fig)
        return EvalResult(metrics=metrics, figures={"energies": path})


class TestMeanEnergyGap(EvaluatorConformance):
    component = MeanEnergyGap
    needs_data = False


# The full sampler suite runs over every registered sampler in ebmkit-core's test_samplers.py;
# here, the kit's RNG, exactness and grad_coef checks on the built-ins.
@pytest.mark.parametrize(("cls", "config", "grad_coef_is_step"), [
    (Langevin, {"step_size": 0.5}, True),
    (Langevin, {"step_size": 0.5, "memory_format": "preserve"}, True),
    (MALA, {"step_size": 0.9}, True),
    (HMC, {"step_size": 0.9, "leapfrog_steps": 3}, False),
], ids=["langevin", "langevin-preserve", "mala", "hmc"])
def test_sampler_rng_exactness_and_grad_coef_checks_pass_on_builtins(cls, config, grad_coef_is_step):
    s = type("TestCase", (SamplerConformance,), {
        "component": cls, "config": config, "grad_coef_is_step": grad_coef_is_step})()
    s.test_channels_last_images()
    s.test_cpu_generator_drives_chains_on_another_device()
    s.test_acceptances_are_reported_only_by_exact_samplers()
    s.test_grad_coef_is_none_or_positive()
    if grad_coef_is_step:
        s.test_noise_free_step_moves_by_grad_coef()
    for t in (1.0, 2.0):
        s.test_gaussian_target(t)
