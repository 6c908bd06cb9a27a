"""ebmkit: energy-based models learned by MCMC-based maximum likelihood.

For users (notebooks, scripts)::

    import ebmkit
    ebm = ebmkit.fit(energy="convnet32", data="mnist5k", iterations=600)   # -> EBM
    x = ebm.sample(64, steps=40, seed=0)
    ebm.save("model.safetensors"); ebm = ebmkit.load("model.safetensors")

For plugin authors: the component interfaces (:class:`Energy`, :class:`Sampler`,
:class:`Initializer`, :class:`DataSource`, :class:`Evaluator`), :func:`param` configs,
:data:`hookimpl`, and the MCMC helpers of :mod:`ebmkit.mcmc`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ebmkit-core")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+local"

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
    default_callbacks,
)
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
    Prior,
    PriorInitializer,
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
from .model import EBM, sampling_steps
from .params import param
from .plugins import Preset, Registry, build_registry, get_plugin_manager
from .runconfig import RunConfig, TrainConfig
from .training import Run, StepOutput, train_step

__all__ = [
    "EBM", "MEMORY_FORMATS", "rand_like_on", "CSVLogger", "Callback", "ChainResult", "ChainState", "ChainStats", "Checkpoint",
    "CheckpointError", "Component", "ConfigError", "DataError", "DataSource", "DiagnosticPlots",
    "DivergenceError", "DivergenceGuard", "EbmkitError", "Energy", "EvalResult", "Evaluator",
    "InMemoryData", "Initializer", "LambdaCallback", "MissingDependencyError", "PluginError",
    "Preset", "Prior", "PriorInitializer", "ProgressBar", "Registry", "Run", "RunConfig",
    "SampleGrids", "Sampler", "StepInfo", "StepOutput", "TensorBoard", "TrainConfig",
    "TrainingInterrupted",
    "UnknownComponentError", "__version__", "build_registry", "chain_grad_norm",
    "chain_layout_for", "chain_sum", "default_callbacks", "energy_and_grad", "evaluate", "fit",
    "frozen",
    "get_plugin_manager", "hookimpl", "load", "memory_format_of", "model_from", "param",
    "rand_chains", "randn_like_on", "restore_layout", "sampling_steps", "train_step",
]
