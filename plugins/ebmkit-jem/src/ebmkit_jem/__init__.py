"""ebmkit-jem: labels, class-conditional energies and JEM (a classifier that is also an energy).

* ``jem-cnn`` (energy): a CNN classifier ``f`` read as the conditional energy
  ``U(x, y) = -f(x)[y]``, ``U(x) = -logsumexp f(x)``; :class:`ClassifierEnergy` wraps any
  classifier module the same way (BatchNorm refused with one line). :mod:`ebmkit_jem.energy`.
* ``jem`` (objective): cross-entropy on ``p(y|x)`` + MCMC maximum likelihood on ``p(x)``
  (optionally ``p(x|y)``) + an energy-magnitude penalty; ``ce``: the plain classifier's loss.
  :mod:`ebmkit_jem.objective`.
* evaluators ``accuracy``, ``calibration`` (ECE, reliability diagram), ``ood`` (AUROC of
  log p(x), max softmax, gradient norm), ``class-samples`` (conditional samples judged by an
  independent classifier). :mod:`ebmkit_jem.evaluators`.
* ``[plugins.jem]`` options: the divergence guard with automatic restart. :mod:`ebmkit_jem.guard`.
* presets ``jem-mnist5k``, ``jem-digits8``; :func:`train_classifier` (the plain-classifier
  baseline of the same architecture). :mod:`ebmkit_jem.baseline`.

This module is the plugin (``[project.entry-points.ebmkit] jem = "ebmkit_jem"``); it imports
only what registration needs.
"""

from __future__ import annotations

from pathlib import Path

from ebmkit import hookimpl
from ebmkit.interfaces import Preset

from .energy import (
    ClassifierEnergy,
    ConvClassifier,
    JEMConvNet,
    energy_from_logits,
    refuse_batchnorm,
)
from .evaluators import EVALUATORS, OOD, Accuracy, CalibrationEval, ClassSamples
from .guard import JEMOptions, RestartGuard
from .objective import JEM, CrossEntropy

__all__ = [
    "JEM", "OOD", "Accuracy", "CalibrationEval", "ClassSamples", "ClassifierEnergy",
    "ConvClassifier", "CrossEntropy", "JEMConvNet", "JEMOptions", "RestartGuard",
    "energy_from_logits", "presets", "refuse_batchnorm", "train_classifier",
]

PRESET_DIR = Path(__file__).resolve().parent / "presets"


def presets() -> list[Preset]:
    return Preset.from_dir(PRESET_DIR)


def train_classifier(*args, **kwargs):
    """The plain-classifier baseline (:func:`ebmkit_jem.baseline.train_classifier`)."""
    from .baseline import train_classifier as train

    return train(*args, **kwargs)


@hookimpl
def ebmkit_register(register):
    register(JEMConvNet)
    register(JEM)
    register(CrossEntropy)
    for cls in EVALUATORS:
        register(cls)
    register(JEMOptions)
    for preset in presets():
        register(preset)


@hookimpl
def ebmkit_callbacks(config, out_dir):
    from .guard import from_config

    return from_config(config, out_dir)
