"""The conformance suites pass on ebmkit's own built-ins (and on the kit's toy components)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from ebmkit import EvalResult, Evaluator, param
from ebmkit.builtin import datasets, energies, initializers
from ebmkit_testing import (
    DataSourceConformance,
    EnergyConformance,
    EvaluatorConformance,
    GaussianEnergy,
    GaussianPoints,
    InitializerConformance,
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
