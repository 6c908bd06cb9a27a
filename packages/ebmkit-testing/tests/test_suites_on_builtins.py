"""The conformance suites pass on ebmkit's own built-ins (and on the kit's toy components)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from ebmkit.builtin import datasets, energies, initializers
from ebmkit.builtin.samplers import HMC, MALA, Langevin
from ebmkit.interfaces import EvalResult, Evaluator
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
