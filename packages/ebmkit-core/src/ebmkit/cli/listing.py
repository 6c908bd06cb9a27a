"""A cache of what the installed plugins provide, so that ``ebmkit --help``, ``ebmkit list`` and
``ebmkit describe`` answer without importing torch or any plugin.

Every command that builds the registry (any ``ebmkit`` command but these three, or these three
when the cache is stale) writes ``cli-listing.json`` into the cache directory
(``$EBMKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/ebmkit``, else ``~/.cache/ebmkit``): each
component's kind, name, plugin, version, summary and parameters, each preset's file, the load
errors, and the commands plugins add. It is used only while its *fingerprint* matches: the
interpreter, ``EBMKIT_BLOCK_PLUGINS``, every ``ebmkit`` entry point (name, target, distribution
and version) and the size and modification time of every file of the packages those entry points
live in (so editing a plugin's source, an editable install included, invalidates it). Set
``EBMKIT_NO_CACHE=1`` to bypass it. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

FORMAT = 1
FILE = "cli-listing.json"


def cache_path() -> Path | None:
    if os.environ.get("EBMKIT_NO_CACHE"):
        return None
    root = os.environ.get("EBMKIT_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "ebmkit")
    return Path(root) / FILE


def fingerprint() -> str:
    from ..plugins import GROUP

    h = hashlib.sha256()
    h.update(f"{FORMAT}\0{sys.executable}\0{sys.version}\0".encode())
    h.update(os.environ.get("EBMKIT_BLOCK_PLUGINS", "").encode() + b"\0")
    tops: set[str] = set()
    for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: (e.name, e.value)):
        dist = ep.dist
        h.update(f"{ep.name}={ep.value} {dist.name if dist else ''} "
                 f"{dist.version if dist else ''}\0".encode())
        tops.add(ep.value.split(":")[0].split(".")[0])
    for top in sorted(tops):
        try:
            spec = importlib.util.find_spec(top)  # a top-level name: nothing is imported
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            h.update(f"{top}: missing\0".encode())
            continue
        places = list(spec.submodule_search_locations or []) or [spec.origin or ""]
        for place in places:
            for path in sorted(_files(place)):
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                h.update(f"{path} {st.st_size} {st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def _files(place: str):
    if os.path.isfile(place):
        yield place
        return
    for root, dirs, files in os.walk(place):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            if not f.endswith((".pyc", ".pyo")):
                yield os.path.join(root, f)


@dataclass
class CachedComponent:
    """Stands in for a registered class (or preset) in a registry rebuilt from the cache."""

    summary: str
    params: list[dict[str, Any]] | None = None  # ParamInfo fields (default as its repr)
    path: Path | None = None  # presets: the TOML file
    Config: Any = None


def param_rows(config_cls: type) -> list[dict[str, Any]]:
    """A config class's parameters as JSON-able rows (the default as its repr)."""
    from ..params import params

    rows = []
    for p in params(config_cls):
        rows.append({"name": p.name, "type_name": p.type_name, "default": repr(p.default),
                     "required": p.required, "help": p.help,
                     "choices": [str(c) for c in p.choices] if p.choices else None,
                     "min": p.min, "max": p.max, "min_exclusive": p.min_exclusive})
    return rows


def rows_of(obj: Any) -> list[dict[str, Any]]:
    """Parameter rows of a registered class, or of its stand-in from the cache."""
    if isinstance(obj, CachedComponent):
        return list(obj.params or [])
    return param_rows(obj.Config)


def snapshot(reg: Any, commands: list[dict[str, str]]) -> dict[str, Any]:
    """The cache document for a registry and the commands plugins added."""
    from ..runconfig import TrainConfig

    entries = []
    for e in reg.entries():
        item: dict[str, Any] = {"kind": e.kind, "name": e.name, "plugin": e.plugin, "dist": e.dist,
                                "version": e.version, "summary": e.summary}
        if e.kind == "preset":
            item["path"] = str(e.obj.path)
        else:
            item["params"] = param_rows(e.obj.Config)
        entries.append(item)
    return {"format": FORMAT, "entries": entries, "load_errors": dict(reg.load_errors),
            "commands": commands,
            "train": {"doc": TrainConfig.__doc__ or "", "params": param_rows(TrainConfig)}}


def write(doc: dict[str, Any], fp: str) -> None:
    """Write the cache (best effort: an unwritable cache directory only costs speed)."""
    path = cache_path()
    if path is None:
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("fingerprint") == fp and old.get("format") == FORMAT:
            return
    except (OSError, ValueError, AttributeError):
        pass
    try:
        from ..checkpoint import atomic_write_text

        atomic_write_text(path, json.dumps({**doc, "fingerprint": fp}))
    except OSError:
        pass


def read() -> dict[str, Any] | None:
    """The cache document when it matches the installed plugins, else ``None``."""
    path = cache_path()
    if path is None or not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return None
    if doc.get("fingerprint") != fingerprint():
        return None
    return doc


def registry_from(doc: dict[str, Any]):
    """A :class:`~ebmkit.plugins.Registry` of :class:`CachedComponent` stand-ins."""
    from ..plugins import Entry, Registry

    reg = Registry()
    for item in doc["entries"]:
        obj = CachedComponent(item["summary"], item.get("params"),
                              Path(item["path"]) if item.get("path") else None)
        reg.add_entry(Entry(item["kind"], item["name"], obj, item["plugin"], item["dist"],
                            item["version"]))
    reg.load_errors = dict(doc.get("load_errors") or {})
    return reg
