"""Plugin discovery: a plugin-manager factory and the component registry it fills.

No global plugin state: :func:`get_plugin_manager` builds a fresh manager and
:func:`build_registry` a fresh registry. The CLI caches one per process; tests build their own
with just the plugins they need.

Environment variables:

* ``EBMKIT_BLOCK_PLUGINS`` — comma-separated entry-point names or distribution names to skip.
* ``EBMKIT_TRACE_HOOKS`` — when set (non-empty, not ``0``), every hook call is traced to stderr:
  which plugin's implementation ran, what it registered, and how long it took.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, UnknownComponentError
from .interfaces import KINDS, Component

GROUP = "ebmkit"


@dataclass(frozen=True)
class Preset:
    """A named run configuration (a TOML document) shipped by a plugin."""

    name: str
    summary: str
    path: Path

    kind = "preset"

    def read(self) -> dict[str, dict[str, Any]]:
        import tomllib

        with open(self.path, "rb") as f:
            return tomllib.load(f)


@dataclass(frozen=True)
class PluginInfo:
    name: str  # entry-point name (or the name given when registered by hand)
    dist: str  # distribution name, "" when registered by hand
    version: str
    hooks: tuple[str, ...] = ()
    error: str | None = None  # why it failed to load
    blocked: bool = False


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    obj: Any  # the class (or Preset)
    plugin: str
    dist: str
    version: str

    @property
    def summary(self) -> str:
        return getattr(self.obj, "summary", "") or ""


def _blocked_names() -> set[str]:
    raw = os.environ.get("EBMKIT_BLOCK_PLUGINS", "")
    return {s.strip() for s in raw.split(",") if s.strip()}


def get_plugin_manager(
    *, entry_points: bool = True, plugins: Iterable[Any] = (), block: Iterable[str] | None = None
) -> pluggy.PluginManager:
    """A fresh plugin manager.

    ``entry_points`` loads every module under the ``ebmkit`` entry-point group (ebmkit's built-ins
    included). ``plugins`` are extra objects (modules, instances) to register by hand. A plugin
    that fails to import is recorded, not raised: see ``pm.ebmkit_load_errors``.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.ebmkit_plugin_info = {}  # type: ignore[attr-defined]
    blocked = _blocked_names() if block is None else set(block)
    if entry_points:
        for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else ""
            version = ep.dist.version if ep.dist is not None else ""
            core = dist == "ebmkit-core"
            if (ep.name in blocked or dist in blocked) and not core:
                pm.ebmkit_plugin_info[ep.name] = PluginInfo(ep.name, dist, version, blocked=True)
                continue
            if pm.get_plugin(ep.name) is not None:
                continue  # the same distribution seen twice on sys.path
            try:
                obj = ep.load()
                pm.register(obj, name=ep.name)
            except Exception as exc:  # a broken plugin must not take the CLI down
                last = traceback.extract_tb(exc.__traceback__)[-1:] or None
                where = f" ({Path(last[0].filename).name}:{last[0].lineno})" if last else ""
                msg = f"{type(exc).__name__}: {exc}{where}"
                pm.ebmkit_plugin_info[ep.name] = PluginInfo(ep.name, dist, version, error=msg)
                continue
            pm.ebmkit_plugin_info[ep.name] = PluginInfo(ep.name, dist, version)
    for obj in plugins:
        name = pm.register(obj)
        pm.ebmkit_plugin_info[name] = PluginInfo(name, "", "")
    pm.check_pending()  # a misspelt hook name fails loudly
    if tracing():
        for name, info in sorted(pm.ebmkit_plugin_info.items()):
            state = "blocked" if info.blocked else (f"error: {info.error}" if info.error else "loaded")
            trace(f"plugin {name} ({info.dist or 'local'} {info.version}): {state}".rstrip())
        pm.trace.root.setwriter(lambda s: sys.stderr.write("[ebmkit hooks] " + s))
        pm.enable_tracing()  # hooks called through pm.hook.<name>(...)
    return pm


def tracing() -> bool:
    """Whether ``EBMKIT_TRACE_HOOKS`` asks for hook tracing."""
    return os.environ.get("EBMKIT_TRACE_HOOKS", "") not in ("", "0")


def trace(message: str) -> None:
    if tracing():
        sys.stderr.write(f"[ebmkit hooks] {message}\n")


def call_impl(impl: Any, **kwargs: Any) -> Any:
    """Call one hook implementation with the subset of ``kwargs`` it accepts (traced when
    ``EBMKIT_TRACE_HOOKS`` is set). ebmkit calls implementations one by one so that each gets
    its own ``register`` callback and a failure can be attributed to its plugin."""
    if not tracing():
        return impl.function(**{k: kwargs[k] for k in impl.argnames})
    hook = getattr(impl.function, "__name__", "?")
    trace(f"{hook} -> {impl.plugin_name}")
    t0 = time.perf_counter()
    try:
        return impl.function(**{k: kwargs[k] for k in impl.argnames})
    finally:
        trace(f"{hook} <- {impl.plugin_name} ({(time.perf_counter() - t0) * 1e3:.1f} ms)")


def plugin_infos(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Every plugin the manager saw, with the hooks it implements and any load error."""
    out = []
    for name, info in sorted(pm.ebmkit_plugin_info.items()):
        plugin = pm.get_plugin(name)
        hooks = tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ())) if plugin else ()
        out.append(PluginInfo(info.name, info.dist, info.version, hooks, info.error, info.blocked))
    return out


class Registry:
    """Components by kind and name, each remembering the plugin that provided it."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {k: {} for k in [*KINDS, "preset"]}
        self.load_errors: dict[str, str] = {}

    def add(self, obj: Any, *, plugin: str = "", dist: str = "", version: str = "") -> Any:
        kind = kind_of(obj)
        name = getattr(obj, "name", "")
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin '{plugin}' registered {obj!r} without a name")
        table = self._entries[kind]
        if name in table and table[name].obj is not obj:
            other = table[name]
            raise PluginError(
                f"{kind} '{name}' is provided by two plugins: '{other.plugin}' ({other.dist or 'local'})"
                f" and '{plugin}' ({dist or 'local'}); uninstall one or block it with"
                " EBMKIT_BLOCK_PLUGINS"
            )
        table[name] = Entry(kind, name, obj, plugin, dist, version)
        return obj

    def get(self, kind: str, name: str) -> Any:
        return self.entry(kind, name).obj

    def entry(self, kind: str, name: str) -> Entry:
        kind = normalize_kind(kind)
        table = self._entries[kind]
        if name not in table:
            raise UnknownComponentError(kind, name, table)
        return table[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self._entries[normalize_kind(kind)])

    def entries(self, kind: str | None = None) -> list[Entry]:
        kinds = [normalize_kind(kind)] if kind else list(self._entries)
        return [e for k in kinds for _, e in sorted(self._entries[k].items())]

    def create(self, kind: str, name: str, config: Any = None, *args: Any) -> Any:
        """Instantiate ``name`` with a validated config (a dict or a config instance)."""
        from .params import build

        cls = self.get(kind, name)
        if config is None or isinstance(config, dict):
            config = build(cls.Config, config or {}, where=normalize_kind(kind))
        return cls(config, *args)


_KIND_ALIASES = {
    "energies": "energy", "samplers": "sampler", "initializers": "initializer", "init": "initializer",
    "inits": "initializer", "evaluators": "evaluator", "datasets": "dataset", "data": "dataset",
    "presets": "preset",
}


def normalize_kind(kind: str) -> str:
    k = _KIND_ALIASES.get(kind, kind)
    if k not in KINDS and k != "preset":
        raise UnknownComponentError("kind", kind, [*KINDS, "preset"])
    return k


def kind_of(obj: Any) -> str:
    if isinstance(obj, Preset):
        return "preset"
    if isinstance(obj, type) and issubclass(obj, Component):
        for kind, base in KINDS.items():
            if issubclass(obj, base):
                return kind
    raise PluginError(
        f"cannot register {obj!r}: expected a subclass of Energy, Sampler, Initializer,"
        " Evaluator or DataSource, or a Preset"
    )


def build_registry(pm: pluggy.PluginManager | None = None) -> Registry:
    """Call every plugin's ``ebmkit_register`` and collect what they register."""
    pm = pm or get_plugin_manager()
    reg = Registry()
    infos = getattr(pm, "ebmkit_plugin_info", {})
    for impl in reversed(pm.hook.ebmkit_register.get_hookimpls()):  # registration order
        info = infos.get(impl.plugin_name, PluginInfo(impl.plugin_name, "", ""))

        def register(obj: Any, _info: PluginInfo = info) -> Any:
            trace(f"  register {kind_of(obj)} '{getattr(obj, 'name', '?')}' from {_info.name}")
            return reg.add(obj, plugin=_info.name, dist=_info.dist, version=_info.version)

        call_impl(impl, register=register)
    reg.load_errors = {n: i.error for n, i in infos.items() if i.error}
    return reg


_DEFAULT: tuple[pluggy.PluginManager, Registry] | None = None


def default() -> tuple[pluggy.PluginManager, Registry]:
    """The CLI's per-process plugin manager and registry (built on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        pm = get_plugin_manager()
        _DEFAULT = (pm, build_registry(pm))
    return _DEFAULT


def default_registry() -> Registry:
    return default()[1]
