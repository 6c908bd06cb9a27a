"""User-facing errors.

Every failure a user can cause (an unknown name, a bad config value, a corrupt checkpoint, a
missing dataset or optional dependency, a diverged run) is an :class:`EbmkitError`. The CLI
prints its message on one line and exits non-zero; nothing else is caught, so a real bug still
shows its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EbmkitError(Exception):
    """An error the user can fix; ``str(err)`` is one line that says what to do."""

    exit_code = 2


class ConfigError(EbmkitError, ValueError):
    """A config key or value is wrong."""


class UnknownComponentError(EbmkitError, LookupError):
    """A component name is not registered. (A LookupError, not a KeyError: no quoted message.)"""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        known = sorted(known)
        self.kind, self.name, self.known = kind, name, known
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        avail = ", ".join(known) if known else "(none)"
        super().__init__(
            f"unknown {kind} '{name}'.{hint} Available: {avail}"
            " (a plugin providing it may not be installed)."
        )

    def __str__(self) -> str:  # LookupError would add nothing, but be explicit
        return self.args[0]


class PluginError(EbmkitError):
    """Two plugins claim one name, or a plugin breaks the hook contract."""


class CheckpointError(EbmkitError):
    """A checkpoint is missing, corrupt, foreign or incompatible."""


class DataError(EbmkitError):
    """A dataset is missing or malformed."""


class MissingDependencyError(EbmkitError, ImportError):
    """An optional dependency is not installed; the message holds the install line."""

    def __init__(self, what: str, install: str):
        super().__init__(f"{what} needs an optional dependency: run `{install}`.")


class DivergenceError(EbmkitError):
    """Training produced non-finite values."""

    exit_code = 3


class TrainingInterrupted(EbmkitError):
    """Training stopped on SIGINT (Ctrl-C) or SIGTERM after finishing an iteration and writing a
    checkpoint (with a run directory). ``model`` is the :class:`ebmkit.EBM` as trained so far;
    the CLI exits with 130 (SIGINT) or 143 (SIGTERM), as a shell does for a killed command."""

    def __init__(self, message: str, *, signum: int, model=None, checkpoint=None):
        super().__init__(message)
        self.signum, self.model, self.checkpoint = signum, model, checkpoint
        self.exit_code = 128 + signum


def require(module: str, *, what: str, install: str):
    """Import an optional dependency or raise a one-line :class:`MissingDependencyError`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised via tests that fake the import
        raise MissingDependencyError(what, install) from exc
