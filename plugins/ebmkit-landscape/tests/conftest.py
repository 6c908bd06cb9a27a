"""Test settings for ebmkit-landscape."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(ebmkit_one_thread):
    """One torch thread for every test here (ebmkit_testing's fixture)."""
