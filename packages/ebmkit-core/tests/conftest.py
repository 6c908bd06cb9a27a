import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
# In-process CLI tests swap the registry (cli.main._DEFAULT); the listing cache would bypass it.
# test_cli_startup.py turns the cache on in its own subprocesses.
os.environ.setdefault("EBMKIT_NO_CACHE", "1")


@pytest.fixture(scope="session")
def registry():
    from ebmkit.plugins import build_registry, get_plugin_manager

    return build_registry(get_plugin_manager())


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models gain nothing from more, and on a shared 2-core CPU the
    extra threads' spin-waiting slows them down badly."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def cli(capsys):
    """Run the ebmkit CLI in-process: returns (exit_code, stdout, stderr)."""
    from ebmkit.cli.main import main

    def run(*args):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
