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
    :class:`ebmkit.Evaluator` or :class:`ebmkit.DataSource` (the kind is read from the base
    class), or a :class:`ebmkit.Preset`. Names are unique across all installed plugins; a
    second plugin claiming a taken name is an error naming both.
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

    ``config`` is the run's :class:`ebmkit.RunConfig`; ``out_dir`` the run directory, or ``None``
    for an in-memory fit. Return a :class:`ebmkit.Callback` or a list of them (or ``None`` to add
    nothing for this run). They run after the built-in callbacks, in plugin registration order.
    A plugin whose hook raises is reported and skipped; training goes on.
    """
