"""ebmkit-underdamped: an underdamped (kinetic) Langevin sampler, shipped as an ebmkit plugin.

This module is the plugin: ``pyproject.toml`` lists it under ``[project.entry-points.ebmkit]``
and ebmkit calls its ``ebmkit_register`` hook. It uses only ebmkit's public API.
"""

from ebmkit.hookspecs import hookimpl

from .sampler import INTEGRATORS, Underdamped, UnderdampedConfig, gaussian_stationary_variance

__all__ = ["INTEGRATORS", "Underdamped", "UnderdampedConfig", "gaussian_stationary_variance"]


@hookimpl
def ebmkit_register(register):
    register(Underdamped)
