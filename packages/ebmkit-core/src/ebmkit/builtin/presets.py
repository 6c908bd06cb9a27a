"""Presets: run configurations shipped as TOML files in ``ebmkit/presets``.

The first line of each file is ``# <one-line summary>``.
"""

from __future__ import annotations

from pathlib import Path

from ..hookspecs import hookimpl
from ..interfaces import Preset

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


def presets_in(directory: Path) -> list[Preset]:
    return Preset.from_dir(directory)


@hookimpl
def ebmkit_register(register):
    for preset in presets_in(PRESET_DIR):
        register(preset)
