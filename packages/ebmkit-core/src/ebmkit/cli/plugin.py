"""``ebmkit plugin new``: write a plugin package from the scaffold templates."""

# No `from __future__ import annotations`: typer reads the command's annotations at runtime.
from pathlib import Path
from typing import Annotated, Any

from ..scaffold import kinds, names_for, next_steps, render


def add_commands(app: Any) -> None:
    import typer

    plugin_app = typer.Typer(help="Plugin authoring: generate a plugin package.", no_args_is_help=True)

    @plugin_app.command("new")
    def new(
        name: Annotated[str, typer.Argument(help="Component name, e.g. my-sampler (also names the package).")],
        kind: Annotated[str, typer.Option("--kind", "-k", help=f"Component kind: {', '.join(kinds())}.")] = "sampler",
        directory: Annotated[Path | None, typer.Option("--dir", help="Target directory (default ./ebmkit-NAME).")] = None,
        force: Annotated[bool, typer.Option(help="Write into a non-empty directory.")] = False,
    ) -> None:
        """Write a plugin package: pyproject with entry point, skeleton class, conformance test, README.

        One kind per component kind, plus `callback` (a training callback switched on by the
        plugin's own [plugins.NAME] options)."""
        subs = names_for(name)
        dest = directory if directory is not None else Path(subs["dist"])
        existing = next(p for p in (dest, *dest.parents) if p.exists() or p == p.parent)
        if existing.exists() and not existing.is_dir():
            from ..errors import ConfigError

            raise ConfigError(f"--dir {dest}: {existing} is a file, not a directory; choose another --dir")
        files = render(name, kind, dest, force=force)
        typer.echo(f"wrote {len(files)} files to {dest}/ ({kind} '{name}', import {subs['module']})")
        typer.echo(f"next:  {next_steps(name, kind, dest)}")

    app.add_typer(plugin_app, name="plugin")
