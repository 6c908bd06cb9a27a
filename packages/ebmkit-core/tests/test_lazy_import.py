"""`import ebmkit` is cheap: names load on first use (PEP 562), torch only when one needs it."""

from __future__ import annotations

import subprocess
import sys

import ebmkit


def test_import_ebmkit_does_not_import_torch():
    code = ("import sys, ebmkit; from ebmkit import errors, params, hookimpl; "
            "heavy = [m for m in ('torch', 'accelerate', 'webdataset', 'matplotlib') if m in sys.modules]; "
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_every_exported_name_resolves_and_all_matches_the_table():
    assert sorted(ebmkit.__all__) == sorted([*ebmkit._EXPORTS, "__version__"])
    for name in ebmkit.__all__:
        assert getattr(ebmkit, name) is not None, name
    from ebmkit.api import fit

    assert ebmkit.fit is fit and "fit" in dir(ebmkit)


def test_submodules_and_unknown_names():
    assert ebmkit.checkpoint.FORMAT == "ebmkit.energy/1"
    try:
        ebmkit.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("unknown attribute did not raise")
