"""``ebmkit plugin new NAME --kind KIND``: write a working plugin package.

The package has its own ``pyproject.toml`` (hatchling, the ``[project.entry-points.ebmkit]``
table), a skeleton component with a :func:`ebmkit.param` config in ``src/``, tests that subclass
the ebmkit-testing conformance suite of its kind, and a README. Its test suite passes as
generated; edit the skeleton from there. Kinds: one per component kind (``sampler``,
``energy``, ``initializer``, ``evaluator``, ``dataset``, ``objective``) plus ``callback``: a
plugin implementing the ``ebmkit_callbacks`` hook whose callback is switched on by its own
options table ``[plugins.NAME]`` (an :class:`ebmkit.interfaces.Options` class).

Templates live in ``ebmkit/scaffold_templates/<kind>/`` (``string.Template`` syntax, ``.tmpl``
suffix; ``__module__`` in a path is replaced by the import name). Files every kind shares live
in ``scaffold_templates/_common/``; a kind's own file of the same path wins.

A leaf module: of ebmkit it imports only :mod:`ebmkit.errors` (an import-linter contract), so
it knows the kinds by their template directories, not from ``ebmkit.interfaces``.
"""

import re
from pathlib import Path
from string import Template

from .errors import ConfigError

TEMPLATES = Path(__file__).resolve().parent / "scaffold_templates"
COMMON = "_common"
NAME_RE = re.compile(r"^[a-z][a-z0-9]*([_-][a-z0-9]+)*$")

#: What to try once the package is installed: ``ebmkit list WORD`` (the CLI's plural of the kind).
LIST_WORD = {
    "sampler": "samplers", "energy": "energies", "initializer": "initializers",
    "evaluator": "evaluators", "dataset": "datasets", "objective": "objectives",
    "callback": "options",
}


def kinds() -> list[str]:
    return sorted(p.name for p in TEMPLATES.iterdir() if p.is_dir() and not p.name.startswith("_"))


def names_for(name: str) -> dict[str, str]:
    """The names one plugin uses: component ``name``, distribution, module, class."""
    if not NAME_RE.match(name):
        raise ConfigError(
            f"plugin name {name!r}: use lowercase letters and digits, words separated by '-' or '_'"
            " (e.g. my-sampler)")
    words = re.split(r"[-_]", name)
    from importlib.metadata import PackageNotFoundError, version

    try:
        base = version("ebmkit-core").split("+")[0]
    except PackageNotFoundError:  # pragma: no cover - a source tree
        base = "0.0.0"
    return {
        "name": name,
        "dist": "ebmkit-" + "-".join(words),
        "module": "ebmkit_" + "_".join(words),
        "cls": "".join(w.capitalize() for w in words),
        "ebmkit_version": base,
    }


def next_steps(name: str, kind: str, dest: Path) -> str:
    """The commands to run after ``plugin new`` (printed by the CLI)."""
    what = f"describe options {name}" if kind == "callback" else f"list {LIST_WORD.get(kind, kind)}"
    return f'cd {dest} && pip install -e ".[test]" && pytest && ebmkit {what}'


def _templates(kind: str) -> dict[str, Path]:
    """Relative output path (before ``__module__`` substitution) -> template file."""
    out: dict[str, Path] = {}
    for root in (TEMPLATES / COMMON, TEMPLATES / kind):  # the kind's own file wins
        if root.is_dir():
            for src in root.rglob("*.tmpl"):
                out[src.relative_to(root).as_posix().removesuffix(".tmpl")] = src
    return out


def render(name: str, kind: str, dest: Path, *, force: bool = False) -> list[Path]:
    """Write the package for ``name`` into ``dest``; return the files written."""
    if kind not in kinds():
        import difflib

        close = difflib.get_close_matches(kind, kinds(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"ebmkit plugin new: unknown kind {kind!r}{hint}; available: "
                          f"{', '.join(kinds())}")
    subs = {**names_for(name), "kind": kind}
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()) and not force:
        raise ConfigError(f"{dest} exists and is not empty; choose another --dir or pass --force")
    written = []
    for rel, src in sorted(_templates(kind).items()):
        out = dest / rel.replace("__module__", subs["module"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(Template(src.read_text()).substitute(subs))
        written.append(out)
    return written
