"""ebmkit-landscape: energy-landscape mapping by attraction–diffusion (ADELM) for ebmkit.

This module is the plugin (``[project.entry-points.ebmkit]`` lists it): its ``ebmkit_cli`` hook
adds ``ebmkit landscape``. It stays cheap to import; the mapping (torch, matplotlib) loads on
first use::

    import ebmkit, ebmkit_landscape
    lmap = ebmkit_landscape.map_landscape(ebmkit.load("model.safetensors"), n_minima=64)
    lmap.basins, lmap.barriers, lmap.tree      # the finest level; lmap.levels: one per alpha
    lmap.save("landscape/")                     # landscape.json + minima.safetensors
"""

from __future__ import annotations

from typing import Any

from ebmkit import hookimpl

__all__ = ["Basin", "LandscapeMap", "Level", "Progress", "RichProgress", "Tree", "ad_trials",
           "find_minima", "map_landscape", "write_figures"]

_LAZY = {
    "Basin": "mapping", "LandscapeMap": "mapping", "Level": "mapping", "Progress": "mapping",
    "map_landscape": "mapping", "RichProgress": "progress", "Tree": "tree",
    "ad_trials": "ad", "find_minima": "ad", "write_figures": "plots",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def ebmkit_cli(app):
    from .cli import add_command

    add_command(app)
