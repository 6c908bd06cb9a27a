"""Conformance suite for conditional energies (``Energy.n_classes = K``): ``forward(x, y=None)``
with ``y`` ``[B]`` in ``0 .. K-1`` gives ``U(x, y)`` ``[B]``, and without ``y`` the marginal
``U(x) = -log sum_y exp(-U(x, y))``; everything :class:`EnergyConformance` checks holds for the
marginal (what samplers and the trainer see)."""

from __future__ import annotations

from typing import ClassVar

import torch
from ebmkit.interfaces import classes_of
from torch import Tensor

from ._base import require
from .energies import EnergyConformance


class ConditionalEnergyConformance(EnergyConformance):
    """Subclass like :class:`EnergyConformance`; the energy declares ``n_classes``::

        class TestMyConditional(ConditionalEnergyConformance):
            component = MyClassEnergy
            shape = (1, 8, 8)
            config = {"n_classes": 3}
    """

    #: Tolerance of the marginal identity (float64).
    identity_atol: ClassVar[float] = 1e-9

    def make_labels(self, n: int, k: int, *, seed: int = 1) -> Tensor:
        return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(seed))

    def test_declares_classes(self):
        e = self.make_energy()
        k = classes_of(e)
        require(isinstance(k, int) and k >= 1,
                "a conditional energy declares its number of classes as `n_classes` (an int >= 1)")

    def test_conditional_maps_batch_to_vector(self):
        e = self.make_energy()
        k = classes_of(e)
        x = self.make_input(self.batch_size)
        y = self.make_labels(self.batch_size, k)
        with torch.no_grad():
            u = e(x, y=y)
        require(isinstance(u, Tensor) and tuple(u.shape) == (self.batch_size,),
                "forward(x, y=y) maps [B, *shape] and labels [B] to U(x, y) of shape [B]")
        require(bool(torch.isfinite(u).all()), "U(x, y) is finite on inputs in [-1, 1]")
        with torch.no_grad():
            single = torch.cat([e(x[i:i + 1], y=y[i:i + 1]) for i in range(len(y))])
        require(torch.allclose(u, single, atol=self.atol, rtol=1e-4),
                "U(x, y)[i] depends on example i and its label y[i] only")

    def test_marginal_is_log_sum_exp_of_the_joint(self):
        """``U(x) = -log sum_y exp(-U(x, y))`` exactly (float64): ``p(x, y) ∝ exp(-U(x, y))``
        and ``p(x)`` its marginal, so conditional and unconditional sampling agree."""
        e = self.make_energy().double()
        k = classes_of(e)
        x = self.make_input(self.batch_size, dtype=torch.float64)
        with torch.no_grad():
            joint = torch.stack([e(x, y=torch.full((len(x),), c, dtype=torch.int64))
                                 for c in range(k)], dim=1)
            marginal = e(x)
        want = -torch.logsumexp(-joint, dim=1)
        require(torch.allclose(marginal, want, atol=self.identity_atol, rtol=1e-9),
                "without y the energy is the marginal -log sum_y exp(-U(x, y)); max difference "
                f"{float((marginal - want).abs().max()):.3g}")

    def test_conditional_input_gradient(self):
        e = self.make_energy()
        k = classes_of(e)
        x = self.make_input(self.batch_size).requires_grad_(True)
        y = self.make_labels(self.batch_size, k)
        (g,) = torch.autograd.grad(e(x, y=y).sum(), x)
        require(g.shape == x.shape and bool(torch.isfinite(g).all()) and bool(g.abs().sum() > 0),
                "U(x, y) is differentiable in x with a finite, non-zero gradient (samplers run on "
                "the closure x -> U(x, y))")
