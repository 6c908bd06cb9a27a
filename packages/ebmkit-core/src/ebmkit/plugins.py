"""Plugin discovery: a plugin-manager factory and the component registry it fills.

No global plugin state: :func:`get_plugin_manager` builds a fresh manager and
:func:`build_registry` a fresh registry. Only the CLI caches one per process
(``ebmkit.cli.main``); the library builds one per call unless given one; tests build their own
with just the plugins they need.

Environment variables:

* ``EBMKIT_BLOCK_PLUGINS`` — comma-separated entry-point names or distribution names to skip.
* ``EBMKIT_TRACE_HOOKS`` — when set (non-empty, not ``0``), every hook call is traced to stderr:
  which plugin's implementation ran, what it registered, and how long it took.

A failing plugin never takes the others down: one that fails to import (``sys.exit`` included),
implements a hook that does not exist (a misspelt name) or whose ``ebmkit_register`` raises is
recorded by name (:func:`plugin_infos`, ``Registry.load_errors``) and skipped.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy

from . import hookspecs
from .errors import EbmkitError, PluginError, UnknownComponentError

#: The component kinds (``interfaces.KINDS`` maps them to their base classes; not imported here,
#: so that building a plugin manager and reading a cached listing never imports torch).
KIND_NAMES = ("energy", "sampler", "initializer", "evaluator", "dataset", "objective", "options")

GROUP = "ebmkit"


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


def _describe(exc: BaseException) -> str:
    """``Type: message (file.py:line)``, the line being the innermost frame outside this module
    and the import machinery (none for a module that is not there at all)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__
              and not f.filename.startswith("<") and "importlib" not in Path(f.filename).parts]
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    text = " ".join(str(exc).split())  # one line: it is a cell of the `ebmkit plugins` table
    return f"{type(exc).__name__}: {text}{where}" if text else f"{type(exc).__name__}{where}"


def describe_exception(exc: BaseException) -> str:
    """One line for an exception raised in plugin or user code: ``Type: message (file.py:line)``
    with the innermost frame outside ebmkit's machinery."""
    return _describe(exc)


def _unknown_hooks(pm: pluggy.PluginManager, plugin: Any) -> str | None:
    """Why ``plugin`` implements hooks no hookspec declares (a misspelt name), or ``None``."""
    known = sorted(n for n, caller in vars(pm.hook).items() if caller.has_spec())
    problems = []
    for caller in pm.get_hookcallers(plugin) or ():
        if caller.has_spec():
            continue
        impls = [i for i in caller.get_hookimpls() if i.plugin is plugin]
        if all(i.optionalhook for i in impls):
            continue  # declared optional by the plugin: pluggy's check_pending accepts it too
        close = difflib.get_close_matches(caller.name, known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known hooks: {', '.join(known)}"
        problems.append(f"unknown hook '{caller.name}' ({hint})")
    return "; ".join(problems) or None


def _register(pm: pluggy.PluginManager, obj: Any, name: str | None) -> tuple[str, str | None]:
    """Register one plugin; on failure (invalid or unknown hook) leave none of it registered and
    return the error instead of raising: ``(name, error)``."""
    name = name or pm.get_canonical_name(obj)
    try:
        pm.register(obj, name=name)
        error = _unknown_hooks(pm, obj)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # e.g. pluggy's PluginValidationError for a bad signature
        error = _describe(exc)
    if error is not None and pm.get_plugin(name) is obj:
        pm.unregister(name=name)
    return name, error


def get_plugin_manager(
    *, entry_points: bool = True, plugins: Iterable[Any] = (), block: Iterable[str] | None = None
) -> pluggy.PluginManager:
    """A fresh plugin manager.

    ``entry_points`` loads every module under the ``ebmkit`` entry-point group (ebmkit's built-ins
    included). ``plugins`` are extra objects (modules, instances) to register by hand. A plugin
    that fails to import (``sys.exit`` at import included) or implements a hook with no hookspec
    (a misspelt name) is recorded, not raised, and left unregistered: see :func:`plugin_infos`.
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
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # a broken plugin must not take the CLI down, not even
                error = _describe(exc)  # one that calls sys.exit (SystemExit) when imported
            else:
                _, error = _register(pm, obj, ep.name)
            pm.ebmkit_plugin_info[ep.name] = PluginInfo(ep.name, dist, version, error=error)
    for obj in plugins:
        if pm.is_registered(obj):
            continue  # already loaded through its entry point
        name, error = _register(pm, obj, None)
        pm.ebmkit_plugin_info[name] = PluginInfo(name, "", "", error=error)
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
        self._entries: dict[str, dict[str, Entry]] = {k: {} for k in [*KIND_NAMES, "preset"]}
        self.load_errors: dict[str, str] = {}  # plugin name -> why it contributed nothing
        self.pm: pluggy.PluginManager | None = None  # the manager that filled it (for other hooks)

    def add(self, obj: Any, *, plugin: str = "", dist: str = "", version: str = "") -> Any:
        kind, name = _kind_and_name(obj, plugin)
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

    def add_entry(self, entry: Entry) -> None:
        """Add an entry as it is (no checks): the CLI's cached listing restores entries so."""
        self._entries[entry.kind][entry.name] = entry

    def get(self, kind: str, name: str) -> Any:
        return self.entry(kind, name).obj

    def entry(self, kind: str, name: str) -> Entry:
        kind = normalize_kind(kind)
        table = self._entries[kind]
        if name not in table:
            exc = UnknownComponentError(kind, name, table)
            if self.load_errors:  # the plugin that provides it may be one of those
                exc.args = (f"{exc.args[0]} {failed_plugins_line(self.load_errors)}",)
            raise exc
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
            k = normalize_kind(kind)  # evaluator options are set as NAME.KEY=VALUE
            config = build(cls.Config, config or {}, where=name if k == "evaluator" else k)
        return instantiate(cls, config, *args, registry=self)

    def provider(self, cls: type) -> Entry | None:
        """The entry that registered the class ``cls`` (``None`` if it is not registered)."""
        for table in self._entries.values():
            for entry in table.values():
                if entry.obj is cls:
                    return entry
        return None


def instantiate(cls: type, *args: Any, registry: Registry | None = None) -> Any:
    """``cls(*args)`` for a component class. A third-party component whose constructor fails
    with anything but an :class:`~ebmkit.EbmkitError` is a broken plugin, not a user error nor
    an ebmkit bug: that becomes one :class:`PluginError` line naming the plugin and what to do.
    ebmkit's own components are not wrapped (their bugs keep their tracebacks)."""
    try:
        return cls(*args)
    except EbmkitError:
        raise
    except Exception as exc:
        if str(getattr(cls, "__module__", "")).split(".")[0] == "ebmkit":
            raise
        entry = registry.provider(cls) if registry is not None else None
        kind = entry.kind if entry is not None else getattr(cls, "kind", "") or "component"
        name = entry.name if entry is not None else getattr(cls, "name", "") or cls.__qualname__
        if entry is not None:
            dist = " ".join(x for x in (entry.dist or "local", entry.version) if x)
            plugin = f"plugin '{entry.plugin}' ({dist})"
        else:
            plugin = f"module '{cls.__module__}'"
        block = entry.plugin if entry is not None and entry.plugin else "NAME"
        raise PluginError(
            f"{kind} '{name}' from {plugin} failed to start: {_describe(exc)}; report it to the "
            f"plugin's authors, or choose another {kind} (EBMKIT_BLOCK_PLUGINS={block} hides it)"
        ) from exc


_KIND_ALIASES = {
    "energies": "energy", "samplers": "sampler", "initializers": "initializer", "init": "initializer",
    "inits": "initializer", "evaluators": "evaluator", "datasets": "dataset", "data": "dataset",
    "presets": "preset", "objectives": "objective", "loss": "objective", "option": "options",
    "plugins": "options",
}


def normalize_kind(kind: str) -> str:
    k = _KIND_ALIASES.get(kind, kind)
    if k not in KIND_NAMES and k != "preset":
        raise UnknownComponentError("kind", kind, [*KIND_NAMES, "preset"])
    return k


def kind_of(obj: Any) -> str:
    from .interfaces import KINDS, Component, Preset

    if isinstance(obj, Preset):
        return "preset"
    if isinstance(obj, type) and issubclass(obj, Component):
        for kind, base in KINDS.items():
            if issubclass(obj, base):
                return kind
    raise PluginError(
        f"cannot register {obj!r}: expected a subclass of Energy, Sampler, Initializer,"
        " Evaluator, DataSource, Objective or Options, or a Preset"
    )


def _kind_and_name(obj: Any, plugin: str) -> tuple[str, str]:
    kind = kind_of(obj)
    name = getattr(obj, "name", "")
    if not isinstance(name, str) or not name:
        raise PluginError(f"plugin '{plugin}' registered {obj!r} without a name")
    config = getattr(obj, "Config", None)
    if kind != "preset" and not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise PluginError(f"plugin '{plugin}' registered {kind} '{name}' whose Config is not a "
                          "dataclass; declare it with @dataclass(frozen=True, kw_only=True)")
    return kind, name


def build_registry(pm: pluggy.PluginManager | None = None) -> Registry:
    """Call every plugin's ``ebmkit_register`` and collect what they register.

    A plugin whose hook raises (``SystemExit`` included; registering something that is not a
    component included) contributes nothing: what it registered before failing is discarded, the
    error is recorded in ``Registry.load_errors`` and :func:`plugin_infos`, and the other plugins
    go on. Two plugins claiming the same name is a conflict the user must resolve: it raises
    :class:`PluginError` naming both.
    """
    pm = pm or get_plugin_manager()
    reg = Registry()
    reg.pm = pm
    infos = getattr(pm, "ebmkit_plugin_info", None)
    errors = {n: i.error for n, i in (infos or {}).items() if i.error}
    for impl in reversed(pm.hook.ebmkit_register.get_hookimpls()):
        info = (infos or {}).get(impl.plugin_name) or PluginInfo(impl.plugin_name, "", "")
        staged: list[Any] = []  # added to the registry only once the whole hook has succeeded

        def register(obj: Any, _info: PluginInfo = info, _staged: list[Any] = staged) -> Any:
            kind, name = _kind_and_name(obj, _info.name)
            trace(f"  register {kind} '{name}' from {_info.name}")
            _staged.append(obj)
            return obj

        try:
            call_impl(impl, register=register)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # this plugin's failure must not take the others down
            error = _describe(exc)
            trace(f"  {impl.plugin_name} failed, nothing of it registered: {error}")
            errors[info.name] = error
            if infos is not None:
                infos[info.name] = replace(info, error=error)
            continue
        for obj in staged:  # a name another plugin took raises here, naming both
            reg.add(obj, plugin=info.name, dist=info.dist, version=info.version)
    reg.load_errors = errors
    return reg


def failed_plugins_line(load_errors: dict[str, str]) -> str:
    """``2 plugin(s) failed to load: foo (ImportError: …), bar (…); see `ebmkit plugins```."""
    names = ", ".join(f"{n} ({e})" for n, e in sorted(load_errors.items()))
    return f"{len(load_errors)} plugin(s) failed to load: {names}; see `ebmkit plugins`"


def plugin_callbacks(pm: pluggy.PluginManager, config: Any, out_dir: Any,
                     *, origins: dict[int, str] | None = None) -> list[Any]:
    """The training callbacks every plugin's ``ebmkit_callbacks`` contributes, in plugin
    registration order. Each implementation may return ``None``, one callback or a list of them.
    ``origins`` (when given) receives ``id(callback) -> plugin name``, so a callback that fails
    later is reported with its plugin's name. A hook that raises (other than with an ebmkit
    user error, e.g. a ``ConfigError`` about its options, which passes through) is one
    :class:`PluginError` line naming the plugin: the run does not start without the callbacks
    the user's options asked for."""
    out: list[Any] = []
    for impl in pm.hook.ebmkit_callbacks.get_hookimpls():
        try:
            result = call_impl(impl, config=config, out_dir=out_dir)
        except (KeyboardInterrupt, EbmkitError):
            raise
        except BaseException as exc:
            raise PluginError(
                f"plugin '{impl.plugin_name}' failed to add its training callbacks "
                f"(ebmkit_callbacks): {_describe(exc)}; report it to the plugin's authors, or "
                f"hide the plugin with EBMKIT_BLOCK_PLUGINS={impl.plugin_name}") from exc
        if result is None:
            continue
        items = list(result) if isinstance(result, list | tuple) else [result]
        for cb in items:
            if cb is None:
                continue
            out.append(cb)
            if origins is not None:
                origins[id(cb)] = impl.plugin_name
    return out


def plugin_of(obj: Any, registry: Registry | None) -> Entry | None:
    """The registry entry of the plugin that provided ``obj``'s class (a component instance or
    class), or ``None`` for ebmkit's own and unregistered classes."""
    cls = obj if isinstance(obj, type) else type(obj)
    if registry is None:
        return None
    entry = registry.provider(cls)
    if entry is None or entry.dist == "ebmkit-core":
        return None
    return entry


def _package(cls: type) -> str:
    return str(getattr(cls, "__module__", "") or "").split(".")[0]


class contained:
    """A context manager that turns an exception from plugin code into one :class:`PluginError`
    line naming the plugin and the component (the original is ``__cause__``).

    ``components`` are the objects that may run inside the block (``{"sampler": obj, ...}``:
    section or kind -> instance). The failing one is found from the traceback: the innermost
    frame that belongs to the package of one of them, if a plugin registered it (ebmkit's bugs
    and a user's own classes, e.g. an ``nn.Module`` energy in a notebook, keep their
    tracebacks; ebmkit user errors pass through unchanged).
    """

    def __init__(self, components: dict[str, Any], registry: Registry | None = None,
                 *, doing: str = " failed", context: str = ""):
        self.components = {k: v for k, v in components.items() if v is not None}
        self.registry = registry
        self.doing = doing
        self.context = context  # e.g. "evaluator 'longrun'": said unless it is the culprit

    def __enter__(self) -> contained:
        return self

    def __exit__(self, et, exc, tb) -> bool:
        if exc is None or isinstance(exc, (EbmkitError, KeyboardInterrupt)) or not isinstance(exc, Exception):
            return False
        culprit = self.culprit(exc)
        if culprit is None:
            return False
        where = f" (in {self.context})" if self.context and self.context not in culprit else ""
        raise PluginError(f"{culprit}{self.doing}{where}: {_describe(exc)}; report it to the plugin's "
                          "authors, or choose another component") from exc

    def culprit(self, exc: BaseException) -> str | None:
        """``"sampler 'mala2' from plugin 'x' (dist 1.0)"`` for the component whose package
        the innermost matching frame belongs to; ``None`` when no plugin code is involved."""
        packages: dict[str, tuple[str, Any]] = {}
        for kind, obj in self.components.items():
            cls = type(obj)
            pkg = _package(cls)
            if pkg and pkg != "ebmkit" and plugin_of(obj, self.registry) is not None:
                packages.setdefault(pkg, (kind, obj))
        if not packages:
            return None
        import sys as _sys

        frames = traceback.extract_tb(exc.__traceback__)
        for frame in reversed(frames):
            for pkg, (kind, obj) in packages.items():
                mod = _sys.modules.get(pkg)
                base = getattr(mod, "__file__", None)
                root = str(Path(base).parent) if base and Path(base).name == "__init__.py" else base
                if root and frame.filename.startswith(str(root)):
                    return _name_component(kind, obj, self.registry)
        return None


def plugin_in_traceback(exc: BaseException, pm: pluggy.PluginManager) -> str | None:
    """``"plugin 'fid' (ebmkit-fid 0.1.0)"`` when the innermost frame of ``exc``'s traceback that
    belongs to a registered plugin's package (not ebmkit's own) is there, e.g. a plugin's CLI
    command that raised; ``None`` otherwise (ebmkit's bugs keep their tracebacks)."""
    roots: list[tuple[str, str]] = []
    for name, obj in pm.list_name_plugin():
        mod = sys.modules.get(str(getattr(obj, "__name__", "") or type(obj).__module__).split(".")[0])
        base = getattr(mod, "__file__", None)
        if not base or getattr(mod, "__name__", "") == "ebmkit":
            continue
        root = str(Path(base).parent) if Path(base).name == "__init__.py" else base
        roots.append((root, name))
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        for root, name in roots:
            if frame.filename.startswith(root):
                info: PluginInfo | None = getattr(pm, "ebmkit_plugin_info", {}).get(name)
                dist = " ".join(x for x in (info.dist, info.version) if x) if info else ""
                return f"plugin '{name}' ({dist or 'local'})"
    return None


def _name_component(kind: str, obj: Any, registry: Registry | None) -> str:
    entry = plugin_of(obj, registry)
    cls = type(obj)
    name = getattr(cls, "name", "") or cls.__qualname__
    kind = {"init": "initializer", "data": "dataset"}.get(kind, kind)
    if entry is not None:
        dist = " ".join(x for x in (entry.dist or "local", entry.version) if x)
        return f"{kind} '{name}' from plugin '{entry.plugin}' ({dist})"
    return f"{kind} '{name}' ({cls.__module__})"
