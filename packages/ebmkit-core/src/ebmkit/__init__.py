"""ebmkit: energy-based models learned by MCMC-based maximum likelihood.

Public API for users and plugin authors (everything a plugin needs is importable from here).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ebmkit-core")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+local"

from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DivergenceError,
    EbmkitError,
    MissingDependencyError,
    PluginError,
    UnknownComponentError,
)
from .hookspecs import hookimpl
from .interfaces import (
    EBM,
    ChainResult,
    ChainState,
    Component,
    DataSource,
    Energy,
    EvalResult,
    Evaluator,
    Initializer,
    Sampler,
    StepInfo,
    chain_grad_norm,
    energy_and_grad,
    frozen,
)
from .params import param
from .plugins import Preset, Registry, build_registry, get_plugin_manager

__all__ = [
    "EBM", "ChainResult", "ChainState", "CheckpointError", "Component", "ConfigError", "DataError",
    "DataSource", "DivergenceError", "EbmkitError", "Energy", "EvalResult", "Evaluator",
    "Initializer", "MissingDependencyError", "PluginError", "Preset", "Registry", "Sampler",
    "StepInfo", "UnknownComponentError", "__version__", "build_registry", "chain_grad_norm",
    "energy_and_grad", "frozen", "get_plugin_manager", "hookimpl", "param",
]
