import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def registry():
    from ebmkit.plugins import build_registry, get_plugin_manager

    return build_registry(get_plugin_manager())


@pytest.fixture
def cli(capsys):
    """Run the ebmkit CLI in-process: returns (exit_code, stdout, stderr)."""
    from ebmkit.cli.main import main

    def run(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
