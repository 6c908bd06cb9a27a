"""``ebmkit plugin new NAME --kind sampler``: write a working plugin package.

The package has its own ``pyproject.toml`` (hatchling, the ``[project.entry-points.ebmkit]``
table), a skeleton component in ``src/``, a conformance test that subclasses the ebmkit-testing
suite, and a README. Its test suite passes as generated; edit the skeleton from there.

Templates live in ``ebmkit/scaffold_templates/<kind>/`` (``string.Template`` syntax, ``.tmpl``
suffix; ``__module__`` in a path is replaced by the import name).
"""

import re
from pathlib import Path
from string import Template

from .errors import ConfigError

TEMPLATES = Path(__file__).resolve().parent / "scaffold_templates"
NAME_RE = re.compile(r"^[a-z][a-z0-9]*([_-][a-z0-9]+)*$")


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


def render(name: str, kind: str, dest: Path, *, force: bool = False) -> list[Path]:
    """Write the package for ``name`` into ``dest``; return the files written."""
    if kind not in kinds():
        raise ConfigError(f"ebmkit plugin new: unknown kind {kind!r}; available: {', '.join(kinds())}")
    subs = names_for(name)
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()) and not force:
        raise ConfigError(f"{dest} exists and is not empty; choose another --dir or pass --force")
    root = TEMPLATES / kind
    written = []
    for src in sorted(root.rglob("*.tmpl")):
        rel = src.relative_to(root).as_posix().removesuffix(".tmpl").replace("__module__", subs["module"])
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(Template(src.read_text()).substitute(subs))
        written.append(out)
    return written
