from __future__ import annotations

import pytest
from torch import nn


class MLPClassifier(nn.Module):
    """A small classifier [B, *shape] -> [B, K] (tests)."""

    def __init__(self, d: int, k: int, hidden: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, k))

    def forward(self, x):
        return self.net(x)


@pytest.fixture(autouse=True)
def _one_thread(ebmkit_one_thread):
    """One torch thread for every test here (ebmkit_testing's fixture)."""
