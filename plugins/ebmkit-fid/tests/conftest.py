from __future__ import annotations

import pytest
from ebmkit_fid.weights import WeightsError, resolve_weights

try:  # the user's real weights, looked up before the tests isolate the caches
    REAL_WEIGHTS = resolve_weights().path
except WeightsError:
    REAL_WEIGHTS = None


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own ebmkit-fid cache."""
    monkeypatch.setenv("EBMKIT_FID_CACHE", str(tmp_path_factory.mktemp("fidcache")))


@pytest.fixture
def real_inception_weights():
    """The Inception weights found on this machine (explicit, hub cache or imported), else skip."""
    if REAL_WEIGHTS is None:
        pytest.skip("no Inception weights on this machine (ebmkit fid weights)")
    return REAL_WEIGHTS
