"""ebmkit-drl: diffusion recovery likelihood (Gao, Song, Poole, Wu & Kingma, ICLR 2021).

A sequence of noise-level-conditional EBMs, each learned by short-run Langevin on the recovery
conditional ``p(x_t | x_{t+1})``, which is much easier to sample than the marginal; samples
come from Gaussian noise, level by level.

* ``drl-convnet32``, ``drl-mlp`` (energies): ``U(x, t)``, ``forward(x)`` = level 0; the noise
  schedule in their config. :mod:`ebmkit_drl.energies`, :mod:`ebmkit_drl.schedule`.
* ``drl`` (objective): the recovery-likelihood loss with its own Langevin chains.
  :mod:`ebmkit_drl.objective`.
* ``drl-progressive`` (sampler): progressive sampling through the levels.
  :mod:`ebmkit_drl.sampler`.
* preset ``drl-quick``: MNIST-5k at 32 px in about the CPU time of ``quick``.
* :mod:`ebmkit_drl.targets`: a Gaussian's true noise-conditional energy and the closed-form
  laws of the chains on it (what the tests check against).

This module is the plugin (``[project.entry-points.ebmkit] drl = "ebmkit_drl"``).
"""

from __future__ import annotations

from pathlib import Path

from ebmkit import hookimpl
from ebmkit.interfaces import Preset

from .energies import DRLMLP, DRLConvNet32, NoiseConditionalEnergy, noise_conditional
from .objective import DRL, ObjectiveRandomState
from .sampler import Progressive
from .schedule import DiffusionSchedule

__all__ = [
    "DRL", "DRLMLP", "DRLConvNet32", "DiffusionSchedule", "NoiseConditionalEnergy",
    "ObjectiveRandomState", "Progressive", "noise_conditional", "presets",
]

PRESET_DIR = Path(__file__).resolve().parent / "presets"


def presets() -> list[Preset]:
    """The presets this plugin ships (``presets/*.toml``; the first line is the summary)."""
    return Preset.from_dir(PRESET_DIR)


@hookimpl
def ebmkit_register(register):
    register(DRLConvNet32)
    register(DRLMLP)
    register(DRL)
    register(Progressive)
    for preset in presets():
        register(preset)


@hookimpl
def ebmkit_callbacks(config, out_dir):
    """The ``drl`` objective's random state (seeded per run, saved with every checkpoint)."""
    return ObjectiveRandomState() if config.name("objective") == DRL.name else None
