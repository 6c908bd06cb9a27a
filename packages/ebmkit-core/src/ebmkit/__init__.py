"""ebmkit: energy-based models learned by MCMC-based maximum likelihood.

For users (notebooks, scripts)::

    import ebmkit
    ebm = ebmkit.fit(energy="convnet32", data="mnist5k", iterations=300)   # -> EBM
    x = ebm.sample(64, steps=40, seed=0)
    ebm.save("model.safetensors"); ebm = ebmkit.load("model.safetensors")

For plugin authors: the component interfaces (:class:`Energy`, :class:`Sampler`,
:class:`Initializer`, :class:`DataSource`, :class:`Evaluator`, :class:`Objective`,
:class:`Options`, :class:`SampleMetric`, :class:`Callback`), :func:`param` configs,
:data:`hookimpl`, and the MCMC helpers of :mod:`ebmkit.mcmc`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("ebmkit-core")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+local"

# Names are imported on first use (PEP 562): `import ebmkit` costs milliseconds, so the command
# line starts without importing torch until a command needs it. `from ebmkit import fit` and
# `ebmkit.fit` work as with eager imports; a test keeps this table and __all__ in step.
_EXPORTS: dict[str, str] = {
    "SampleInfo": "model",
    "SampleMetric": "interfaces",
    "Objective": "interfaces",
    "ObjectiveOutput": "interfaces",
    "Options": "interfaces",
    "Model": "interfaces",
    "CheckpointManager": "checkpoint",
    "KillAt": "checkpoint",
    "Trackers": "callbacks",
    "CallbackError": "training",
    "check_energy": "checks",
    "InMemoryData": "api",
    "evaluate": "api",
    "fit": "api",
    "load": "api",
    "model_from": "api",
    "CSVLogger": "callbacks",
    "Callback": "callbacks",
    "Checkpoint": "callbacks",
    "DiagnosticPlots": "callbacks",
    "DivergenceGuard": "callbacks",
    "LambdaCallback": "callbacks",
    "ProgressBar": "callbacks",
    "SampleGrids": "callbacks",
    "TensorBoard": "callbacks",
    "default_callbacks": "callbacks",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
    "DivergenceError": "errors",
    "EbmkitError": "errors",
    "MissingDependencyError": "errors",
    "PluginError": "errors",
    "TrainingInterrupted": "errors",
    "UnknownComponentError": "errors",
    "hookimpl": "hookspecs",
    "Component": "interfaces",
    "DataSource": "interfaces",
    "Energy": "interfaces",
    "EvalResult": "interfaces",
    "Evaluator": "interfaces",
    "Initializer": "interfaces",
    "Prior": "interfaces",
    "PriorInitializer": "interfaces",
    "Sampler": "interfaces",
    "ChainResult": "mcmc",
    "ChainState": "mcmc",
    "ChainStats": "mcmc",
    "MEMORY_FORMATS": "mcmc",
    "StepInfo": "mcmc",
    "chain_grad_norm": "mcmc",
    "chain_layout_for": "mcmc",
    "chain_sum": "mcmc",
    "energy_and_grad": "mcmc",
    "frozen": "mcmc",
    "memory_format_of": "mcmc",
    "rand_chains": "mcmc",
    "rand_like_on": "mcmc",
    "randn_like_on": "mcmc",
    "restore_layout": "mcmc",
    "EBM": "model",
    "sampling_steps": "model",
    "param": "params",
    "Preset": "interfaces",
    "Registry": "plugins",
    "build_registry": "plugins",
    "get_plugin_manager": "plugins",
    "RunConfig": "runconfig",
    "TrainConfig": "runconfig",
    "Run": "training",
    "StepOutput": "training",
    "train_step": "training",
}

__all__ = [
    "CSVLogger", "Callback", "CallbackError", "ChainResult", "ChainState", "ChainStats",
    "Checkpoint", "CheckpointError", "CheckpointManager", "Component", "ConfigError", "DataError",
    "DataSource", "DiagnosticPlots", "DivergenceError", "DivergenceGuard", "EBM", "EbmkitError",
    "Energy", "EvalResult", "Evaluator", "InMemoryData", "Initializer", "KillAt", "LambdaCallback",
    "MEMORY_FORMATS", "MissingDependencyError", "Model", "Objective", "ObjectiveOutput", "Options",
    "PluginError", "Preset", "Prior", "PriorInitializer", "ProgressBar", "Registry", "Run",
    "RunConfig", "SampleGrids", "SampleInfo", "SampleMetric", "Sampler", "StepInfo", "StepOutput",
    "TensorBoard", "Trackers", "TrainConfig", "TrainingInterrupted", "UnknownComponentError",
    "__version__", "build_registry", "chain_grad_norm", "chain_layout_for", "chain_sum",
    "check_energy", "default_callbacks", "energy_and_grad", "evaluate", "fit", "frozen",
    "get_plugin_manager", "hookimpl", "load", "memory_format_of", "model_from", "param",
    "rand_chains", "rand_like_on", "randn_like_on", "restore_layout", "sampling_steps",
    "train_step",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        try:  # a submodule: ebmkit.checkpoint, ebmkit.mcmc, ...
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'ebmkit' has no attribute '{name}'") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .api import InMemoryData, evaluate, fit, load, model_from
    from .callbacks import (
        Callback,
        Checkpoint,
        CSVLogger,
        DiagnosticPlots,
        DivergenceGuard,
        LambdaCallback,
        ProgressBar,
        SampleGrids,
        TensorBoard,
        Trackers,
        default_callbacks,
    )
    from .checkpoint import CheckpointManager, KillAt
    from .checks import check_energy
    from .errors import (
        CheckpointError,
        ConfigError,
        DataError,
        DivergenceError,
        EbmkitError,
        MissingDependencyError,
        PluginError,
        TrainingInterrupted,
        UnknownComponentError,
    )
    from .hookspecs import hookimpl
    from .interfaces import (
        Component,
        DataSource,
        Energy,
        EvalResult,
        Evaluator,
        Initializer,
        Model,
        Objective,
        ObjectiveOutput,
        Options,
        Preset,
        Prior,
        PriorInitializer,
        SampleMetric,
        Sampler,
    )
    from .mcmc import (
        MEMORY_FORMATS,
        ChainResult,
        ChainState,
        ChainStats,
        StepInfo,
        chain_grad_norm,
        chain_layout_for,
        chain_sum,
        energy_and_grad,
        frozen,
        memory_format_of,
        rand_chains,
        rand_like_on,
        randn_like_on,
        restore_layout,
    )
    from .model import (
        EBM,
        SampleInfo,
        sampling_steps,
    )
    from .params import param
    from .plugins import Registry, build_registry, get_plugin_manager
    from .runconfig import RunConfig, TrainConfig
    from .training import (
        CallbackError,
        Run,
        StepOutput,
        train_step,
    )
