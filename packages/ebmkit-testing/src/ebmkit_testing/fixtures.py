"""pytest plugin (registered through the ``pytest11`` entry point): fixtures for ebmkit tests.

* ``ebmkit_plugin_manager(*plugins, entry_points=False, block=None)`` — a fresh pluggy manager
  holding only the given plugin modules/objects (no global state, nothing else installed leaks in).
* ``ebmkit_registry(*plugins, ...)`` — the component registry those plugins fill.
* ``ebmkit_cli`` — runs ``ebmkit`` in-process: ``ebmkit_cli("list", "samplers")`` returns a
  :class:`CliResult` (exit code, stdout, stderr). ``ebmkit_cli.use(*plugins)`` restricts the CLI
  to the given plugins (plus nothing else) for the rest of the test.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _cli_module() -> Any:
    """The module ``ebmkit.cli.main`` (``ebmkit.cli.main`` as an attribute is its ``main``).

    The one import of ``ebmkit.cli`` in the kit, declared in the workspace's import-linter
    contract for ``ebmkit_testing``: this runner swaps the CLI's consoles and cached registry."""
    import ebmkit.cli.main  # noqa: F401 - imported for sys.modules

    return sys.modules["ebmkit.cli.main"]


def _cached_registry_homes() -> list[Any]:
    """The modules that cache the CLI's ``(plugin manager, registry)`` pair in ``_DEFAULT``: the
    CLI itself (``ebmkit.cli.main``) and, where it still has one, ``ebmkit.plugins``."""
    import ebmkit.plugins

    return [mod for mod in (_cli_module(), ebmkit.plugins) if hasattr(mod, "_DEFAULT")]


class CliRunner:
    """Calls :func:`ebmkit.cli.main.main` with ``argv`` and captures what it prints."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self._mp = monkeypatch
        # Rich reads the terminal width when a console is created: make tables wide and plain.
        monkeypatch.setenv("COLUMNS", "200")
        monkeypatch.setenv("NO_COLOR", "1")
        monkeypatch.setenv("TERM", "dumb")
        # The runner swaps the CLI's registry; `ebmkit list`'s on-disk listing cache would
        # bypass it (a plugin registered by the test would not be listed).
        monkeypatch.setenv("EBMKIT_NO_CACHE", "1")
        self._reset_consoles()

    def _reset_consoles(self) -> None:
        from rich.console import Console

        cli = _cli_module()

        self._mp.setattr(cli, "console", Console(width=200, no_color=True, highlight=False))
        self._mp.setattr(cli, "err_console",
                         Console(stderr=True, width=200, no_color=True, highlight=False))

    def use(self, *plugins: Any, entry_points: bool = False, block: Iterable[str] | None = None) -> None:
        """Make the CLI see only ``plugins`` (and, with ``entry_points=True``, installed ones)."""
        from ebmkit.plugins import build_registry, get_plugin_manager

        pm = get_plugin_manager(entry_points=entry_points, plugins=plugins, block=block)
        pair = (pm, build_registry(pm))
        for home in _cached_registry_homes():
            self._mp.setattr(home, "_DEFAULT", pair)

    def fresh(self) -> None:
        """Forget the cached plugin manager, so the next call rediscovers entry points."""
        for home in _cached_registry_homes():
            self._mp.setattr(home, "_DEFAULT", None)

    def __call__(self, *args: str) -> CliResult:
        main = _cli_module().main
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main([str(a) for a in args])
        return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture
def ebmkit_one_thread() -> Iterator[None]:
    """One torch intra-op thread for the test (tiny tensors run fastest, and steadiest on a
    shared machine, on one thread); the previous count is restored afterwards. Make it
    automatic in a conftest: ``@pytest.fixture(autouse=True)`` ``def _one(ebmkit_one_thread): ...``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def ebmkit_plugin_manager() -> Callable[..., Any]:
    """Factory: ``ebmkit_plugin_manager(my_plugin_module)`` -> a fresh ``pluggy.PluginManager``."""
    from ebmkit.plugins import get_plugin_manager

    def make(*plugins: Any, entry_points: bool = False, block: Iterable[str] | None = None):
        return get_plugin_manager(entry_points=entry_points, plugins=plugins,
                                  block=() if block is None else block)

    return make


@pytest.fixture
def ebmkit_registry(ebmkit_plugin_manager) -> Callable[..., Any]:
    """Factory: ``ebmkit_registry(my_plugin_module)`` -> the registry those plugins fill."""
    from ebmkit.plugins import build_registry

    def make(*plugins: Any, entry_points: bool = False, block: Iterable[str] | None = None):
        return build_registry(ebmkit_plugin_manager(*plugins, entry_points=entry_points, block=block))

    return make


@pytest.fixture
def ebmkit_cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    """An in-process ``ebmkit`` runner; the CLI's cached registry is restored afterwards."""
    for home in _cached_registry_homes():
        monkeypatch.setattr(home, "_DEFAULT", None)
    for var in ("EBMKIT_BLOCK_PLUGINS", "EBMKIT_TRACE_HOOKS"):
        if var in os.environ:
            monkeypatch.delenv(var)
    yield CliRunner(monkeypatch)
