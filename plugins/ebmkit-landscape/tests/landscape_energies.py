"""Analytic energies with known minima and saddles, shared by the tests (a uniquely named
module: test directories of several packages run together under `nox -s slow`)."""

from __future__ import annotations

import math

import torch
from torch import nn


class RingOfWells(nn.Module):
    """``U(x) = −log Σ_k exp(−‖x − μ_k‖²/(2 sd²))``: the toy GMM of ebmkit's ``gmm2d`` (8
    Gaussians, sd 0.15, means on a circle of radius 1) as an energy, up to a constant."""

    def __init__(self, k: int = 8, radius: float = 1.0, sd: float = 0.15):
        super().__init__()
        a = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
        self.register_buffer("means", (radius * torch.stack([a.cos(), a.sin()], 1)).float())
        self.sd = sd

    def forward(self, x):
        d2 = (x[:, None, :] - self.means[None]).square().sum(-1)
        return -torch.logsumexp(-d2 / (2 * self.sd**2), dim=1)


class DoubleWell(nn.Module):
    """``U(x, y) = h·(x² − 1)² + k·y²/2``: minima (±1, 0) at U = 0, one saddle (0, 0) at U = h."""

    def __init__(self, h: float = 4.0, k: float = 4.0):
        super().__init__()
        self.h, self.k = h, k

    def forward(self, x):
        return self.h * (x[:, 0].square() - 1).square() + self.k * x[:, 1].square() / 2


class FourWells(nn.Module):
    """``U(x, y) = h_x·(x² − 1)² + h_y·(y² − 1)²``: wells at (±1, ±1); crossing x = 0 costs
    ``h_x``, crossing y = 0 costs ``h_y`` (saddles (0, ±1) at U = h_x, (±1, 0) at U = h_y)."""

    def __init__(self, hx: float = 1.0, hy: float = 4.0):
        super().__init__()
        self.hx, self.hy = hx, hy

    def forward(self, x):
        return self.hx * (x[:, 0].square() - 1).square() + self.hy * (x[:, 1].square() - 1).square()


def model(energy: nn.Module):
    import ebmkit

    return ebmkit.model_from(energy, "mala", shape=(2,))
