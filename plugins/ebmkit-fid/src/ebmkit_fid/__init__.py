"""ebmkit-fid: sample-quality metrics for ebmkit on torch-fidelity — FID, KID, Inception Score
and precision/recall — offline first, with cached reference statistics and a training callback.

This module is the plugin (``[project.entry-points.ebmkit] fid = "ebmkit_fid"``): it registers
the evaluators ``fid``, ``kid``, ``isc``, ``prc`` (``fid``, ``kid`` and ``prc`` are also
:class:`ebmkit.SampleMetric` implementations), the run options ``[plugins.fid]`` (``--set
plugins.fid.every=100`` scores samples during training) and the ``ebmkit fid`` commands. It
imports nothing heavy (torch-fidelity and torchvision load on first use).
"""

from __future__ import annotations

from ebmkit import hookimpl

from .callback import FidelityCallback, from_config, sample_metric_names
from .evaluators import (
    EVALUATORS,
    FID,
    ISC,
    KID,
    PRC,
    FidelityConfig,
    FidelityEvaluator,
    FidelityMetric,
)
from .fidelity import INCEPTION, PIXELS, Setup, content_hash, score, to_uint8
from .options import FidOptions, FidOptionsConfig
from .weights import WeightsError, import_helper_weights, resolve_weights

__all__ = [
    "FID", "INCEPTION", "ISC", "KID", "PIXELS", "PRC", "FidOptions", "FidOptionsConfig",
    "FidelityCallback", "FidelityConfig", "FidelityEvaluator", "FidelityMetric", "Setup",
    "WeightsError", "content_hash", "import_helper_weights", "resolve_weights",
    "sample_metric_names", "score", "to_uint8",
]


@hookimpl
def ebmkit_register(register):
    for cls in EVALUATORS:
        register(cls)
    register(FidOptions)


@hookimpl
def ebmkit_cli(app):
    from .cli import add_commands

    add_commands(app)


@hookimpl
def ebmkit_callbacks(config, out_dir):
    return from_config(config, out_dir)
