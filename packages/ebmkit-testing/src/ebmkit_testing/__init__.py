"""ebmkit-testing: the conformance kit for ebmkit components and plugins.

Subclass a suite in your plugin's tests (pytest collects classes named ``Test*``)::

    from ebmkit_testing import SamplerConformance
    import my_plugin

    class TestMySampler(SamplerConformance):
        component = my_plugin.MySampler
        plugin = my_plugin

Suites: :class:`SamplerConformance`, :class:`EnergyConformance`,
:class:`ConditionalEnergyConformance`, :class:`InitializerConformance`,
:class:`EvaluatorConformance`, :class:`DataSourceConformance`, :class:`ObjectiveConformance`,
:class:`OptionsConformance`.
Each failing check says what the contract requires.
Installing the package also registers a pytest plugin with the fixtures
``ebmkit_plugin_manager``, ``ebmkit_registry`` and ``ebmkit_cli`` (see
:mod:`ebmkit_testing.fixtures`). Helpers for a plugin's own tests: the analytic targets
:class:`DiagonalGaussianEnergy` and :class:`GaussianMixtureEnergy`, :func:`mc_tolerance`
(Monte Carlo tolerances) and :func:`watch_generator_draws` (where RNG draws are made).
"""

from ._base import ComponentConformance, require
from .conditional import ConditionalEnergyConformance
from .datasets import DataSourceConformance
from .energies import EnergyConformance
from .evaluators import EvaluatorConformance
from .fixtures import CliResult, CliRunner
from .initializers import InitializerConformance
from .objectives import ObjectiveConformance, Replica, SmallEnergy
from .options import OptionsConformance
from .samplers import (
    DiagonalGaussianEnergy,
    GaussianMixtureEnergy,
    SamplerConformance,
    mc_tolerance,
    watch_generator_draws,
)
from .toys import GaussianEnergy, GaussianPoints, gaussian_energy, gaussian_points

__all__ = [
    "CliResult", "CliRunner", "ComponentConformance", "ConditionalEnergyConformance",
    "DataSourceConformance",
    "DiagonalGaussianEnergy", "EnergyConformance", "GaussianMixtureEnergy",
    "EvaluatorConformance", "GaussianEnergy", "GaussianPoints", "InitializerConformance",
    "ObjectiveConformance", "OptionsConformance", "Replica", "SamplerConformance", "SmallEnergy",
    "gaussian_energy", "gaussian_points", "mc_tolerance", "require", "watch_generator_draws",
]
