"""The command line starts instantly: ``ebmkit --help``, ``list`` and ``describe`` import no
torch (the import budget), answering from the listing cache (cli/listing.py) with exactly what
the full path prints; the cache follows changes to the installed plugins."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHECK = """
import sys
from ebmkit.cli.main import main
code = main({argv!r})
heavy = sorted(m for m in ("torch", "numpy", "accelerate", "webdataset", "matplotlib", "PIL")
               if m in sys.modules)
print("HEAVY:", ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


def _run(argv, cache: Path | None, *, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("EBMKIT_NO_CACHE", "EBMKIT_CACHE_DIR")}
    env.update(COLUMNS="200", TERM="dumb")
    if cache is None:
        env["EBMKIT_NO_CACHE"] = "1"
    else:
        env["EBMKIT_CACHE_DIR"] = str(cache)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHECK.format(argv=list(argv))], env=env,
                          capture_output=True, text=True, timeout=timeout)
    heavy = [ln for ln in done.stderr.splitlines() if ln.startswith("HEAVY:")]
    return done, heavy[-1][len("HEAVY:"):].strip() if heavy else "?", time.perf_counter() - t0


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    done, _, _ = _run(["list"], cache)  # cold: builds the registry and writes the cache
    assert done.returncode == 0, done.stderr
    assert (cache / "cli-listing.json").is_file()
    return cache


LIGHT = [["--help"], ["list"], ["list", "samplers"], ["describe", "sampler", "mala"],
         ["describe", "train"], ["describe", "preset", "quick"]]


@pytest.mark.parametrize("argv", LIGHT, ids=" ".join)
def test_light_commands_import_no_torch_and_print_what_the_full_path_prints(warm_cache, argv):
    fast, heavy, _ = _run(argv, warm_cache)
    assert fast.returncode == 0, fast.stderr
    assert heavy == "", f"`ebmkit {' '.join(argv)}` imported {heavy}"
    full, full_heavy, _ = _run(argv, None)
    assert full.returncode == 0 and "torch" in full_heavy  # the uncached path does load plugins
    assert fast.stdout == full.stdout


def test_unknown_names_fail_the_same_way_from_the_cache(warm_cache):
    fast, heavy, _ = _run(["describe", "sampler", "malla"], warm_cache)
    full, _, _ = _run(["describe", "sampler", "malla"], None)
    assert fast.returncode == full.returncode == 2 and heavy == ""
    assert "Did you mean 'mala'?" in fast.stderr and fast.stderr.splitlines()[0] == full.stderr.splitlines()[0]


def test_the_cache_follows_the_installed_plugins(tmp_path, monkeypatch):
    """A changed plugin source file (an editable install edited) changes the fingerprint."""
    from ebmkit.cli import listing

    monkeypatch.setenv("EBMKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("EBMKIT_NO_CACHE", raising=False)
    before = listing.fingerprint()
    assert listing.fingerprint() == before  # stable
    monkeypatch.setenv("EBMKIT_BLOCK_PLUGINS", "ebmkit-underdamped")
    assert listing.fingerprint() != before
    monkeypatch.delenv("EBMKIT_BLOCK_PLUGINS")
    import ebmkit.builtin.samplers as mod

    path = Path(mod.__file__)
    st = path.stat()
    try:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        assert listing.fingerprint() != before
    finally:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert listing.fingerprint() == before
    listing.write({"format": listing.FORMAT, "entries": []}, "stale")
    assert listing.read() is None  # a cache for other plugins is never used


def test_help_is_fast_once_cached(warm_cache):
    """Wall time of `ebmkit --help` in a fresh interpreter (a loose bound for a shared CI machine;
    the import-budget tests above are the strict guard)."""
    times = sorted(_run(["--help"], warm_cache)[2] for _ in range(3))
    assert times[0] < 2.0, times
