"""Component configs: one frozen, keyword-only dataclass per component.

A config declares each parameter once, with its type, default and help text::

    @dataclass(frozen=True, kw_only=True)
    class Config:
        steps: int = param(100, "Langevin steps K per chain.", min=0)
        grad_coef: float | None = param(None, "x += -grad_coef * dU/dx + ...")

From that single declaration ebmkit derives the CLI help (`ebmkit describe`), TOML parsing and
validation (`--config`, `--set key=value`), and the JSON stored in checkpoint metadata.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

_MISSING = dataclasses.MISSING


def param(
    default: Any = _MISSING,
    help: str = "",
    *,
    choices: Sequence[Any] | None = None,
    min: float | None = None,
    max: float | None = None,
    min_exclusive: bool = False,
) -> Any:
    """A config field with help text and optional choices / numeric range.

    Mutable defaults (lists) are given as tuples; they are stored as tuples.
    """
    meta = {"help": help, "choices": tuple(choices) if choices else None, "min": min,
            "max": max, "min_exclusive": min_exclusive}
    if default is _MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class ParamInfo:
    name: str
    type: Any
    type_name: str
    default: Any
    required: bool
    help: str
    choices: tuple | None
    min: float | None
    max: float | None
    min_exclusive: bool


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        args = typing.get_args(tp)
        inner = _type_name(args[0]) if args else "any"
        return f"list[{inner}]"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def params(config_cls: type) -> list[ParamInfo]:
    """The parameters a config class declares, in declaration order."""
    hints = typing.get_type_hints(config_cls)
    out = []
    for f in dataclasses.fields(config_cls):
        tp = hints[f.name]
        required = f.default is _MISSING and f.default_factory is _MISSING
        default = None if required else (f.default if f.default is not _MISSING else f.default_factory())
        m = f.metadata
        out.append(ParamInfo(f.name, tp, _type_name(tp), default, required, m.get("help", ""),
                             m.get("choices"), m.get("min"), m.get("max"),
                             m.get("min_exclusive", False)))
    return out


FLOAT32_MAX = 3.4028234663852886e38  # larger floats become inf in the float32 tensors they feed

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Turn a TOML value or a command-line string into ``tp``; raise ConfigError otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        is_none = value is None or (isinstance(value, str) and value.lower() in {"none", "null"})
        if is_none and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin in (tuple, list):
        (inner, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            s = value.strip()
            if s.startswith("[") and s.endswith("]"):
                s = s[1:-1]
            value = [v.strip().strip("'\"") for v in s.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, inner, where) for v in value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    f = math.nan
                if math.isfinite(f) and f.is_integer():
                    return int(f)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported parameter type {tp!r}")  # pragma: no cover


def _check(info: ParamInfo, value: Any, where: str) -> None:
    if value is None:
        return
    if info.choices is not None and value not in info.choices:
        opts = ", ".join(map(str, info.choices))
        raise ConfigError(f"{where}: {value!r} is not one of: {opts}")
    vals = value if isinstance(value, tuple) else (value,)
    for v in vals:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if not math.isfinite(v):
            raise ConfigError(f"{where}: must be finite, got {v!r}")
        if isinstance(v, float) and abs(v) > FLOAT32_MAX:
            raise ConfigError(f"{where}: {v!r} overflows float32 (tensors are float32); "
                              f"use a value within +-{FLOAT32_MAX:.3g}")
        if info.min is not None and (v < info.min or (info.min_exclusive and v == info.min)):
            op = ">" if info.min_exclusive else ">="
            raise ConfigError(f"{where}: must be {op} {info.min}, got {v!r}")
        if info.max is not None and v > info.max:
            raise ConfigError(f"{where}: must be <= {info.max}, got {v!r}")


def build(config_cls: type, values: Mapping[str, Any] | None = None, *, where: str = "config") -> Any:
    """Validate ``values`` against ``config_cls`` and return a config instance.

    Unknown keys, wrong types, values outside ``choices`` or the numeric range, and errors raised
    by the config's own ``__post_init__`` all become one-line :class:`ConfigError` messages that
    name the key and the valid options.
    """
    values = dict(values or {})
    infos = {p.name: p for p in params(config_cls)}
    kwargs = {}
    for key, raw in values.items():
        if key not in infos:
            close = difflib.get_close_matches(key, infos, n=1)
            hint = f" Did you mean '{where}.{close[0]}'?" if close else ""
            valid = ", ".join(infos) or "(none)"
            raise ConfigError(f"unknown key '{where}.{key}'.{hint} Valid keys: {valid}")
        info = infos[key]
        value = _coerce(raw, info.type, f"{where}.{key}")
        _check(info, value, f"{where}.{key}")
        kwargs[key] = value
    missing = [n for n, i in infos.items() if i.required and n not in kwargs]
    if missing:
        raise ConfigError(f"{where}: missing required key(s): {', '.join(missing)}")
    try:
        return config_cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON/TOML-friendly dict of a config (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def parse_override(text: str, *, section: str | None = None, flag: str = "--set") -> tuple[str, str, str]:
    """Split ``section.key=value`` into its parts — the one ``KEY=VALUE`` parser of every command
    (``--set``, ``--eval-set``, ``ebmkit data --set``, :meth:`RunConfig.with_overrides`).

    With ``section`` given, ``key=value`` is accepted too and means ``section.key=value``
    (``section.key=value`` with that section also works). Raises ConfigError when malformed.
    """
    example = f"{section}.KEY=VALUE" if section else "SECTION.KEY=VALUE, e.g. sampler.steps=100"
    if "=" not in text:
        raise ConfigError(f"{flag} {text!r}: expected {'KEY=VALUE' if section else example}")
    lhs, value = text.split("=", 1)
    lhs = lhs.strip()
    if section is not None:
        key = lhs.removeprefix(f"{section}.")
        if not key or "." in key:
            raise ConfigError(f"{flag} {text!r}: expected KEY=VALUE (or {section}.KEY=VALUE)")
        return section, key, value.strip()
    if "." not in lhs:
        raise ConfigError(f"{flag} {text!r}: expected {example}")
    sec, key = lhs.split(".", 1)
    if not sec.strip() or not key.strip():
        raise ConfigError(f"{flag} {text!r}: expected {example}")
    return sec.strip(), key.strip(), value.strip()


def dumps_toml(doc: Mapping[str, Mapping[str, Any]]) -> str:
    """Write a document of sections (tables of scalars / lists, or of tables: ``[plugins.fid]``)
    as TOML."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    lines = []

    def table_lines(name: str, table: Mapping[str, Any]) -> None:
        subs = {k: v for k, v in table.items() if isinstance(v, Mapping)}
        scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
        if scalars or not subs:
            lines.append(f"[{name}]")
            for k, v in scalars.items():
                if v is None:
                    continue  # TOML has no null; absent means default
                lines.append(f"{k} = {fmt(v)}")
            lines.append("")
        for k, v in subs.items():  # [plugins.fid]: a plugin's own table
            table_lines(f"{name}.{k}", v)

    for section, table in doc.items():
        table_lines(section, table)
    return "\n".join(lines)
