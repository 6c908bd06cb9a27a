"""ebmkit-fid: sample-quality metrics for ebmkit on torch-fidelity — FID, KID, Inception Score
and precision/recall — offline first, with cached reference statistics and a training callback.

This module is the plugin (``[project.entry-points.ebmkit] fid = "ebmkit_fid"``): it registers
the evaluators ``fid``, ``kid``, ``isc``, ``prc``, adds the ``ebmkit fid`` commands and, when
``$EBMKIT_FID_EVERY`` is set, a training callback. It imports nothing heavy (torch-fidelity and
torchvision load on first use).
"""

from __future__ import annotations

from ebmkit import hookimpl

from .callback import FidelityCallback, from_environment
from .evaluators import EVALUATORS, FID, ISC, KID, PRC, FidelityConfig, FidelityEvaluator
from .fidelity import INCEPTION, PIXELS, Setup, content_hash, score, to_uint8
from .weights import WeightsError, import_helper_weights, resolve_weights

__all__ = [
    "FID", "INCEPTION", "ISC", "KID", "PIXELS", "PRC", "FidelityCallback", "FidelityConfig",
    "FidelityEvaluator", "Setup", "WeightsError", "content_hash", "import_helper_weights",
    "resolve_weights", "score", "to_uint8",
]


@hookimpl
def ebmkit_register(register):
    for cls in EVALUATORS:
        register(cls)


@hookimpl
def ebmkit_cli(app):
    from .cli import add_commands

    add_commands(app)


@hookimpl
def ebmkit_callbacks(config, out_dir):
    return from_environment(config, out_dir)
