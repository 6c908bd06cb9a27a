"""Test sessions for the ebmkit monorepo: one `tests` session per workspace member, plus lint.

    nox                      # lint + every member's tests (what CI runs)
    nox -s "tests(package='ebmkit-core')"
    nox -s slow              # long statistical checks and reproductions (opt-in)
    nox -s digits            # only the full digits reproduction (opt-in, ~20 min on 2 cores)
    nox -s jem               # JEM vs a plain classifier on mnist5k (opt-in, ~2 h on one core)

Each tests session syncs only its member (and that member's `test` dependency group) into its
own virtual environment with uv, so a member that forgets to declare a dependency fails here.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

ROOT = Path(__file__).parent
nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

MEMBERS = {
    p.name: p
    for group in ("packages", "plugins")
    for p in sorted((ROOT / group).glob("*"))
    if (p / "pyproject.toml").is_file()
}


def _sync(session: nox.Session, package: str, *extra: str) -> None:
    env = {"UV_PROJECT_ENVIRONMENT": session.virtualenv.location}
    session.run_install("uv", "sync", "--package", package, "--group", "test", *extra,
                        env=env, silent=True)


@nox.session
@nox.parametrize("package", list(MEMBERS))
def tests(session: nox.Session, package: str) -> None:
    """Run one member's test suite in an environment holding only that member."""
    _sync(session, package)
    tests_dir = MEMBERS[package] / "tests"
    args = session.posargs or ["-q"]
    session.run("pytest", str(tests_dir), *args, env={"MPLBACKEND": "Agg"})


@nox.session
def slow(session: nox.Session) -> None:
    """Opt-in: long statistical checks and the toy reproductions (marked `slow`)."""
    for package in MEMBERS:
        _sync(session, package, "--inexact")
    dirs = [str(p / "tests") for p in MEMBERS.values()]
    session.run("pytest", *dirs, "-m", "slow", "-q", *session.posargs, env={"MPLBACKEND": "Agg"},
                success_codes=[0, 5])


@nox.session
def digits(session: nox.Session) -> None:
    """Opt-in: the full digits reproduction (docs/reproductions/digits.md), both regimes."""
    _sync(session, "ebmkit-core")
    test = MEMBERS["ebmkit-core"] / "tests" / "test_digits.py"
    session.run("pytest", f"{test}::test_full_reproduction_meets_the_thresholds", "-m", "slow",
                "-q", *session.posargs, env={"MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"})


@nox.session
def jem(session: nox.Session) -> None:
    """Opt-in: JEM vs a plain classifier on mnist5k (docs/jem.md), about an hour per model on one
    core: `nox -s jem -- --minutes 60 --out runs/jem-compare` (defaults: 60 minutes)."""
    _sync(session, "ebmkit-jem")
    args = session.posargs or ["--minutes", "60", "--out", "runs/jem-compare"]
    session.run("python", str(ROOT / "tools" / "jem_compare.py"), *args,
                env={"MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"})


@nox.session(venv_backend="uv")
def lint(session: nox.Session) -> None:
    """ruff over the whole tree; the import-linter architecture contracts (pyproject.toml)."""
    session.install("ruff>=0.5", "import-linter>=2.3")
    session.run("ruff", "check", ".")
    # grimp parses the source statically: every member's package (the contracts' root packages)
    # only has to be findable, not installed (no torch). --no-cache: the graph takes well under
    # a second; no cache directory in the tree.
    src_dirs = [str(p / "src") for p in MEMBERS.values() if (p / "src").is_dir()]
    session.run("lint-imports", "--no-cache", env={"PYTHONPATH": os.pathsep.join(src_dirs)})
