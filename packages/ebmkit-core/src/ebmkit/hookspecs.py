"""The hook specifications of ebmkit: every hook a plugin may implement.

Plugins are modules (or objects) listed under the ``ebmkit`` entry-point group::

    [project.entry-points.ebmkit]
    my_sampler = "my_package.plugin"

and implement hooks with ``@ebmkit.hookimpl``. A hook implementation may accept a subset of the
arguments named in the spec. ebmkit's own built-ins are registered through the same path.
Every hook here is documented in ``docs/plugins/hooks.md``; a test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "ebmkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ebmkit_register(register: Callable[[Any], Any]) -> None:
    """Register components.

    Call ``register(cls)`` for each class the plugin provides: a subclass of
    :class:`ebmkit.Energy`, :class:`ebmkit.Sampler`, :class:`ebmkit.Initializer`,
    :class:`ebmkit.Evaluator`, :class:`ebmkit.DataSource`, :class:`ebmkit.Objective` (a loss)
    or :class:`ebmkit.Options` (the plugin's ``[plugins.<name>]`` table of the run document;
    the kind is read from the base class), or a :class:`ebmkit.Preset`. Names are unique per
    kind across all installed plugins; a second plugin claiming a taken name is an error naming
    both. A hook that raises leaves the plugin's components out (what it registered before the
    error is discarded); the other plugins are unaffected.
    """


@hookspec
def ebmkit_cli(app: Any) -> None:
    """Add commands to the ``ebmkit`` command line.

    ``app`` is the root :class:`typer.Typer`; add commands with ``@app.command()`` or groups with
    ``app.add_typer(...)``. Keep the hook cheap: import heavy modules inside the commands.
    """


@hookspec
def ebmkit_callbacks(config: Any, out_dir: Any) -> Any:
    """Contribute training callbacks to every :func:`ebmkit.fit` (and ``ebmkit run``).

    ``config`` is the run's :class:`ebmkit.RunConfig` (the plugin's own options are
    ``config.plugin(name)``); ``out_dir`` the run directory, or ``None`` for an in-memory fit.
    Return a :class:`ebmkit.Callback` or a list of them (or ``None`` to add nothing for this
    run). They run after the built-in callbacks and those passed to ``fit(callbacks=...)``, in
    plugin registration order. A hook that raises is one :class:`ebmkit.PluginError` line
    naming the plugin, and the run does not start (an :class:`ebmkit.EbmkitError` it raises on
    purpose, e.g. a ``ConfigError`` about its options, passes through unchanged).
    """
