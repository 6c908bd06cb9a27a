"""Conformance suite for energies: ``[B, *shape] -> [B]``, differentiable in x and θ,
batch-independent, rebuildable from ``(config, shape)`` plus a tensor-only state dict."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from ebmkit.mcmc import energy_and_grad
from torch import Tensor

from ._base import ComponentConformance, require


class EnergyConformance(ComponentConformance):
    """Subclass and set ``component`` and ``shape`` (one example's shape)::

        class TestMyEnergy(EnergyConformance):
            component = MyEnergy
            shape = (1, 32, 32)
            config = {"nf": 8}   # small is fast
    """

    kind = "energy"
    shape: ClassVar[tuple[int, ...]] = (2,)
    batch_size: ClassVar[int] = 4
    #: Tolerance for comparing a batched evaluation with per-example ones (float32).
    atol: ClassVar[float] = 1e-4

    def make_energy(self) -> Any:
        torch.manual_seed(0)
        return self.component(self.make_config(), tuple(self.shape)).eval()

    def make_input(self, n: int, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
        """Inputs in the data range ``[-1, 1]``."""
        g = torch.Generator().manual_seed(seed)
        return torch.rand((n, *self.shape), generator=g, dtype=dtype) * 2 - 1

    def test_constructed_from_config_and_shape(self):
        e = self.make_energy()
        require(isinstance(e, torch.nn.Module), "an energy is an nn.Module (subclass ebmkit.Energy)")
        require(tuple(e.shape) == tuple(self.shape),
                f"an energy keeps one example's shape as `self.shape` (call"
                f" super().__init__(config, shape)); expected {tuple(self.shape)}, got {getattr(e, 'shape', None)}")
        require(e.config == self.make_config(),
                "an energy keeps its config as `self.config` so a checkpoint can rebuild it")

    def test_maps_batch_to_vector(self):
        e = self.make_energy()
        x = self.make_input(self.batch_size)
        with torch.no_grad():
            u = e(x)
        require(isinstance(u, Tensor) and tuple(u.shape) == (self.batch_size,),
                f"forward maps [B, *shape] to one energy per example, shape [B];"
                f" input {tuple(x.shape)} gave {tuple(u.shape) if isinstance(u, Tensor) else type(u)}")
        require(u.dtype == x.dtype, f"the energy keeps the input's dtype; {x.dtype} gave {u.dtype}")
        require(torch.isfinite(u).all(), "energies of inputs in [-1, 1] must be finite")

    def test_batch_of_one(self):
        e = self.make_energy()
        with torch.no_grad():
            u = e(self.make_input(1))
        require(tuple(u.shape) == (1,), f"a batch of one gives shape [1], not {tuple(u.shape)}"
                " (do not squeeze the batch dimension)")

    def test_examples_are_independent(self):
        e = self.make_energy()
        x = self.make_input(self.batch_size)
        with torch.no_grad():
            batched = e(x)
            single = torch.cat([e(x[i : i + 1]) for i in range(x.shape[0])])
        require(torch.allclose(batched, single, atol=self.atol, rtol=1e-4),
                "U(x)[i] depends on example i only (no batch statistics such as BatchNorm in"
                f" train mode); max difference {float((batched - single).abs().max()):.3g}")

    def test_deterministic(self):
        e = self.make_energy()
        x = self.make_input(self.batch_size)
        with torch.no_grad():
            require(torch.equal(e(x), e(x)),
                    "forward is a deterministic function of x (no dropout or noise in eval mode)")

    def test_input_gradient(self):
        e = self.make_energy()
        x = self.make_input(self.batch_size)
        u, g = energy_and_grad(e, x)
        require(g.shape == x.shape and torch.isfinite(g).all(),
                "∇ₓU exists and is finite (samplers need it): shape"
                f" {tuple(x.shape)} expected, got {tuple(g.shape)}")
        require(g.abs().sum() > 0, "∇ₓU is not identically zero on random inputs (is x used?)")

    def test_parameter_gradient(self):
        e = self.make_energy().train()
        ps = [p for p in e.parameters() if p.requires_grad]
        if not ps:
            import pytest

            pytest.skip("the energy has no trainable parameters")
        x_pos, x_neg = self.make_input(self.batch_size, seed=1), self.make_input(self.batch_size, seed=2)
        loss = e(x_pos).mean() - e(x_neg).mean()
        loss.backward()
        got = [p.grad is not None and torch.isfinite(p.grad).all() for p in ps]
        require(any(p.grad is not None and p.grad.abs().sum() > 0 for p in ps),
                "the ML loss mean U(x+) - mean U(x-) must give a non-zero gradient to the parameters")
        require(all(got), "every trainable parameter gets a finite gradient from the loss")

    def test_second_order_autograd(self):
        e = self.make_energy()
        x = self.make_input(self.batch_size).requires_grad_(True)
        u, g = energy_and_grad(e, x, create_graph=True)
        require(g.requires_grad,
                "∇ₓU must be differentiable (create_graph=True) for reconstruction and flow"
                " densities: avoid .detach()/.item() inside forward")
        (gg,) = torch.autograd.grad(g.pow(2).sum(), x)
        require(torch.isfinite(gg).all(), "second derivatives must be finite")

    def test_float64(self):
        e = self.make_energy().double()
        x = self.make_input(self.batch_size, dtype=torch.float64)
        with torch.no_grad():
            u = e(x)
        require(u.dtype == torch.float64, "the energy runs in the dtype of its parameters/input"
                f" (float64 in, float64 out); got {u.dtype}")

    def test_rebuilt_from_config_shape_and_state_dict(self):
        e = self.make_energy()
        sd = e.state_dict()
        require(all(isinstance(v, Tensor) for v in sd.values()),
                "the state dict holds tensors only (it is stored with safetensors)")
        with torch.no_grad():
            for p in e.parameters():
                p.add_(0.01)
        torch.manual_seed(123)
        f = self.component(self.make_config(), tuple(self.shape)).eval()
        f.load_state_dict({k: v.clone() for k, v in e.state_dict().items()})
        x = self.make_input(self.batch_size)
        with torch.no_grad():
            require(torch.allclose(e(x), f(x), atol=self.atol),
                    "a checkpoint rebuilds the energy as cls(config, shape) + load_state_dict;"
                    " the rebuilt energy must compute the same values (keep every tensor that"
                    " matters in parameters or buffers)")
