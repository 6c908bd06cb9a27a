"""Conformance suite for samplers, plus the analytic targets it (and ebmkit's own tests) use.

A plugin checks its sampler in a few lines::

    from ebmkit_testing.samplers import SamplerConformance

    class TestMySampler(SamplerConformance):
        sampler_name = "my-sampler"          # looked up in the installed registry, or:
        # component = MySampler              # the class itself
        config = {"step_size": 0.5}          # suited to a unit-scale Gaussian target
        plugin = my_plugin                   # optional: check registration in-process

The checks: shape/dtype/device/layout preservation, ``x0`` untouched, no gradient leakage into
the energy's parameters and no graph kept, determinism under a seeded generator (and no use of
the global RNG), ``run`` equal to ``init`` + ``step``, valid per-chain statistics, rejection of
divergent proposals (Metropolis samplers), second-order differentiability in ``differentiable``
mode, and statistical correctness on an anisotropic Gaussian at two temperatures: an exact sampler
(``exact = True``) must leave the target invariant; an unadjusted one may declare its known
bias through ``gaussian_variance(variance, steps, initial_variance)`` (as ``langevin`` does),
otherwise that check is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import pytest
import torch
from ebmkit.components import ChainResult, Sampler
from ebmkit.config import build, params
from torch import Tensor, nn

from ._base import ComponentConformance, require

# --------------------------------------------------------------------------------------------
# analytic targets
# --------------------------------------------------------------------------------------------


class DiagonalGaussianEnergy(nn.Module):
    """``U(x) = Σ (x − μ)² / (2σ²)`` over all non-batch dims, so ``exp(-U)`` is
    ``N(μ, diag σ²)``. ``mean`` is an ``nn.Parameter`` (so gradient leakage is observable);
    ``variances`` broadcast against one example's shape."""

    def __init__(self, variances: Sequence[float] | Tensor, mean: Sequence[float] | Tensor | float = 0.0,
                 *, quartic: float = 0.0):
        super().__init__()
        v = torch.as_tensor(variances, dtype=torch.float32)
        self.register_buffer("variances", v)
        self.mean = nn.Parameter(torch.as_tensor(mean, dtype=torch.float32).expand_as(v).clone())
        #: adds ``quartic · Σ x⁴`` (non-Gaussian, non-quadratic: makes second derivatives vary)
        self.quartic = float(quartic)

    def forward(self, x: Tensor) -> Tensor:
        d = x - self.mean
        u = d.square() / (2 * self.variances)
        if self.quartic:
            u = u + self.quartic * d.pow(4)
        return u.flatten(1).sum(1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact draws ``[n, *shape]`` (quartic = 0 only)."""
        z = torch.randn((n, *self.variances.shape), generator=generator,
                        dtype=self.variances.dtype, device=self.variances.device)
        return self.mean.detach() + z * self.variances.sqrt()


class GaussianMixtureEnergy(nn.Module):
    """``U(x) = −log Σ_k w_k N(x; μ_k, s² I)`` in any dimension (means ``[K, D]``)."""

    def __init__(self, means: Sequence[Sequence[float]], weights: Sequence[float], std: float):
        super().__init__()
        self.means = nn.Parameter(torch.as_tensor(means, dtype=torch.float32))
        w = torch.as_tensor(weights, dtype=torch.float32)
        self.register_buffer("log_w", (w / w.sum()).log())
        self.std = float(std)

    def forward(self, x: Tensor) -> Tensor:
        d2 = (x[:, None, :] - self.means[None]).square().sum(-1)  # [B, K]
        dim = x.shape[-1]
        log_n = -d2 / (2 * self.std**2) - dim * math.log(self.std * math.sqrt(2 * math.pi))
        return -torch.logsumexp(self.log_w + log_n, dim=1)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Exact draws ``[n, D]`` and their component labels ``[n]``."""
        k = torch.multinomial(self.log_w.exp(), n, replacement=True, generator=generator)
        z = torch.randn((n, self.means.shape[1]), generator=generator)
        return self.means.detach()[k] + self.std * z, k


# --------------------------------------------------------------------------------------------
# the suite
# --------------------------------------------------------------------------------------------


class _FromRegistry:
    """``component`` looked up by ``sampler_name`` in the installed registry, on first use."""

    def __get__(self, obj: Any, owner: type) -> type:
        name = getattr(owner, "sampler_name", None)
        if not name:
            raise AttributeError("set `sampler_name = '<registered name>'` or `component = <class>`")
        from ebmkit.plugins import default_registry

        return default_registry().get("sampler", name)


def mc_tolerance(values: Tensor, expected_var: Tensor, n_sd: float = 4.0) -> tuple[Tensor, Tensor]:
    """Tolerances (mean, variance) for ``B`` independent draws of a Gaussian with variance ``v``.

    Standard errors: mean ``sqrt(v/B)``; sample variance ``v·sqrt(2/(B−1))`` (exact for Gaussian
    draws: ``(B−1)s²/v ~ χ²_{B−1}``). Returned as ``n_sd`` standard errors.
    """
    b = values.shape[0]
    return n_sd * (expected_var / b).sqrt(), n_sd * expected_var * math.sqrt(2 / (b - 1))


class SamplerConformance(ComponentConformance):
    """Checks a sampler against the ebmkit sampler contract (see the module docstring)."""

    kind = "sampler"
    #: the registered name to test (alternative to setting ``component``)
    sampler_name: ClassVar[str | None] = None
    component: ClassVar[type] = _FromRegistry()  # type: ignore[assignment]
    #: steps for the contract checks
    steps: ClassVar[int] = 4
    #: chains and steps for the statistical check (independent chains, one draw each)
    chains: ClassVar[int] = 4000
    stat_steps: ClassVar[int] = 20

    # helpers --------------------------------------------------------------------------------
    @pytest.fixture(autouse=True)
    def _one_thread(self) -> Iterator[None]:
        """Tiny tensors run fastest (and steadiest on a shared machine) on one thread."""
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(n)

    def make_sampler(self, **overrides: Any) -> Sampler:
        cls = self.component
        return cls(build(cls.Config, {**self.config, **overrides}, where="sampler"))

    def has_param(self, name: str) -> bool:
        return any(p.name == name for p in params(self.component.Config))

    def devices(self) -> list[str]:
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    @staticmethod
    def gen(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
        return torch.Generator(device=device).manual_seed(seed)

    def start(self, shape: tuple[int, ...], *, n: int = 6, seed: int = 0,
              dtype: torch.dtype = torch.float32, device: str = "cpu") -> Tensor:
        return torch.randn((n, *shape), generator=self.gen(seed), dtype=dtype).to(device)

    def energy_for(self, shape: tuple[int, ...], *, dtype=torch.float32, device="cpu",
                   quartic: float = 0.1) -> DiagonalGaussianEnergy:
        v = torch.linspace(0.5, 2.0, math.prod(shape)).reshape(shape)
        return DiagonalGaussianEnergy(v, 0.1, quartic=quartic).to(device=device, dtype=dtype)

    # contract checks ------------------------------------------------------------------------
    @pytest.mark.parametrize("shape", [(2,), (3, 4, 4)])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_keeps_shape_dtype_device_and_layout(self, shape, dtype):
        s = self.make_sampler()
        for device in self.devices():
            e = self.energy_for(shape, dtype=dtype, device=device)
            x0 = self.start(shape, dtype=dtype, device=device)
            r = s.run(e, x0, self.steps, generator=self.gen(1, device))
            require(isinstance(r, ChainResult), "run returns an ebmkit.ChainResult")
            require(r.x.shape == x0.shape and r.x.dtype == dtype and r.x.device == x0.device,
                    f"run keeps x0's shape, dtype and device: {tuple(x0.shape)} {dtype} {device} ->"
                    f" {tuple(r.x.shape)} {r.x.dtype} {r.x.device}")
            require(r.x.is_contiguous(), "a contiguous x0 gives a contiguous result")
            require(r.energy.shape == (x0.shape[0],), f"result.energy is [B]; got {tuple(r.energy.shape)}")
            require(r.grad_norm.ndim == 0 and bool(torch.isfinite(r.grad_norm)) and r.grad_norm >= 0,
                    f"result.grad_norm (v_t) is a finite non-negative scalar; got {r.grad_norm}")
            require(r.steps == self.steps, "result.steps is the number of steps run")

    def test_channels_last_images(self):
        """An image batch in channels-last layout comes back in that layout, same values."""
        s = self.make_sampler()
        shape = (3, 4, 4)
        e = self.energy_for(shape)
        x0 = self.start(shape)
        r1 = s.run(e, x0, self.steps, generator=self.gen(1))
        r2 = s.run(e, x0.contiguous(memory_format=torch.channels_last), self.steps,
                   generator=self.gen(1))
        require(r2.x.is_contiguous(memory_format=torch.channels_last),
                "a channels-last x0 gives a channels-last result")
        require(torch.allclose(r1.x, r2.x, atol=1e-5, rtol=1e-5),
                "the memory layout of x0 does not change the chain")

    def test_leaves_energy_and_x0_alone(self):
        s = self.make_sampler()
        e = self.energy_for((3, 4, 4))
        x0 = self.start((3, 4, 4))
        x0_copy = x0.clone()
        r = s.run(e, x0, self.steps, generator=self.gen(1))
        for name, p in e.named_parameters():
            require(p.grad is None, f"sampling must not write gradients into parameters ({name}.grad)")
            require(p.requires_grad, f"sampling must restore requires_grad of parameters ({name})")
        require(torch.equal(x0, x0_copy), "run must not modify x0 in place")
        for what, t in (("x", r.x), ("energy", r.energy), ("grad_norm", r.grad_norm)):
            require(not t.requires_grad and t.grad_fn is None,
                    f"result.{what} must be detached (no graph kept between or after steps)")

    def test_seeded_generator_is_deterministic(self):
        s = self.make_sampler()
        e = self.energy_for((2,))
        x0 = self.start((2,), n=16)
        a = s.run(e, x0, self.steps, generator=self.gen(7))
        b = s.run(e, x0, self.steps, generator=self.gen(7))
        c = s.run(e, x0, self.steps, generator=self.gen(8))
        require(torch.equal(a.x, b.x), "the same seeded generator gives the same chain")
        require(not torch.equal(a.x, c.x), "a different seed gives a different chain (noise=True)")

    def test_uses_only_the_given_generator(self):
        s = self.make_sampler()
        e = self.energy_for((2,))
        x0 = self.start((2,), n=16)
        before = torch.get_rng_state()
        s.run(e, x0, self.steps, generator=self.gen(7))
        require(torch.equal(before, torch.get_rng_state()),
                "with a generator, sampling must not draw from the global RNG")

    def test_noise_off_is_deterministic(self):
        s = self.make_sampler()
        e = self.energy_for((2,))
        x0 = self.start((2,), n=16)
        torch.manual_seed(1)
        a = s.run(e, x0, self.steps, noise=False)
        torch.manual_seed(2)
        b = s.run(e, x0, self.steps, noise=False)
        require(torch.equal(a.x, b.x), "noise=False gives a deterministic chain (the map x = M(z))")

    def test_run_equals_init_then_steps(self):
        s = self.make_sampler()
        e = self.energy_for((2,))
        x0 = self.start((2,), n=32)
        r = s.run(e, x0, self.steps, generator=self.gen(3), record=True)
        g = self.gen(3)
        state = s.init(e, x0.clone())
        acc, gns = [], []
        for _ in range(self.steps):
            state, info = s.step(e, state, generator=g)
            b = x0.shape[0]
            require(info.grad_norm.shape == (b,) and info.energy.shape == (b,),
                    "StepInfo.grad_norm and .energy are per chain, [B]")
            if info.accepted is not None:
                require(info.accepted.dtype == torch.bool and info.accepted.shape == (b,),
                        "StepInfo.accepted is a [B] bool tensor")
                acc.append(info.accepted.float())
            if info.accept_prob is not None:
                p = info.accept_prob
                require(bool(((p >= 0) & (p <= 1)).all()), "StepInfo.accept_prob lies in [0, 1]")
            gns.append(info.grad_norm.mean())
        require(torch.allclose(r.x, state.x, atol=1e-5, rtol=1e-5),
                "run(x0, K) ends where init(x0) followed by K step() calls ends (same generator)")
        require(torch.allclose(r.energy, state.energy, atol=1e-4, rtol=1e-4),
                "result.energy is U(x_K)/T")
        require(torch.allclose(r.grad_norm, torch.stack(gns).mean(), rtol=1e-4),
                "result.grad_norm is the mean over steps and chains of ‖∇U‖ at each step's start")
        if r.per_step_grad_norm is not None:
            require(r.per_step_grad_norm.shape == (self.steps,), "record=True gives [K] per-step stats")
        if self.component.exact:
            require(r.accept_rate is not None and acc,
                    "an exact (Metropolis) sampler reports acceptance per step and per run")
        if acc and s.warmup_steps == 0:
            require(torch.allclose(r.accept_rate, torch.stack(acc).mean(), atol=1e-6),
                    "result.accept_rate is the mean of the per-step acceptances")
            require(r.per_chain_accept_rate is None or bool(
                ((r.per_chain_accept_rate >= 0) & (r.per_chain_accept_rate <= 1)).all()),
                "per-chain acceptance rates lie in [0, 1]")

    def test_zero_steps(self):
        s = self.make_sampler()
        e = self.energy_for((2,))
        x0 = self.start((2,))
        r = s.run(e, x0, 0, generator=self.gen(0))
        require(torch.equal(r.x, x0), "run(x0, 0) returns x0")
        require(torch.allclose(r.energy, e(x0).detach() / s.temperature, rtol=1e-5),
                "run(x0, 0).energy is U(x0)/T")

    def test_divergent_proposals_are_rejected(self):
        if not self.component.exact:
            pytest.skip("unadjusted samplers accept every move")
        if not self.has_param("step_size"):
            pytest.skip("no step_size parameter to provoke divergence with")

        class Walled(nn.Module):
            def forward(self, x: Tensor) -> Tensor:
                u = 0.5 * x.square().sum(1)
                return torch.where(x.abs().amax(1) > 3, torch.full_like(u, math.nan), u)

        s = self.make_sampler(step_size=3.0)
        x0 = self.start((2,), n=64) * 0.1
        r = s.run(Walled(), x0, self.steps, generator=self.gen(0))
        require(bool(torch.isfinite(r.x).all() & torch.isfinite(r.energy).all()),
                "non-finite proposals are rejected: chains stay finite")
        require(r.divergent is not None and bool(r.divergent.any()),
                "non-finite proposals are flagged in result.divergent")

    def test_differentiable_mode_is_second_order(self):
        """x_K = M(z) with noise off is differentiable in z (checked by finite differences)."""
        s = self.make_sampler()
        e = self.energy_for((2,), dtype=torch.float64, quartic=0.2)
        z = self.start((2,), n=3, dtype=torch.float64).requires_grad_(True)

        def m(z: Tensor) -> Tensor:
            return s.run(e, z, 3, noise=False, differentiable=True).x

        x = m(z)
        require(x.requires_grad, "differentiable=True keeps the graph: x_K requires grad")
        require(torch.autograd.gradcheck(m, (z,), eps=1e-6, atol=1e-5),
                "∂x_K/∂z from differentiable mode matches finite differences")

    # statistical correctness ----------------------------------------------------------------
    @pytest.mark.parametrize("temperature", [1.0, 2.0])
    def test_gaussian_target(self, temperature):
        """Chains started from exact draws of an anisotropic Gaussian ``N(μ, diag(0.25, 2))``.

        Exact samplers must leave it invariant: after K steps the B independent final states are
        still exact draws, so each coordinate's mean and variance lie within 4 Monte Carlo
        standard errors (``mc_tolerance``) of the truth. Unadjusted samplers are held to the
        variance they declare through ``gaussian_variance`` instead.
        """
        if temperature != 1.0 and not self.has_param("temperature"):
            pytest.skip("no temperature parameter")
        s = self.make_sampler(**({"temperature": temperature} if temperature != 1.0 else {}))
        var = torch.tensor([0.25, 2.0])
        e = DiagonalGaussianEnergy(var, torch.tensor([0.5, -1.0]))
        tvar = var * temperature  # exp(-U/T) is N(μ, T·σ²)
        x0 = e.mean.detach() + torch.randn(self.chains, 2, generator=self.gen(11)) * tvar.sqrt()
        if s.exact:
            expected = tvar
        elif hasattr(s, "gaussian_variance"):
            expected = torch.tensor([s.gaussian_variance(float(v), self.stat_steps,
                                                         initial_variance=float(v * temperature))
                                     for v in var])
        else:
            pytest.skip("inexact sampler without gaussian_variance(): no known target law")
        r = s.run(e, x0, self.stat_steps, generator=self.gen(12))
        moved = (r.x - x0).abs().mean()
        require(moved > 1e-3 * float(tvar.sqrt().min()),
                "chains must move on a unit-scale target (is the step size in `config` too small?)")
        tol_m, tol_v = mc_tolerance(r.x, expected)
        mean_err = (r.x.mean(0) - e.mean.detach()).abs()
        var_err = (r.x.var(0) - expected).abs()
        require(bool((mean_err < tol_m).all()),
                f"mean within 4 standard errors: |error| {mean_err.tolist()} vs {tol_m.tolist()}")
        require(bool((var_err < tol_v).all()),
                f"variance within 4 standard errors of {expected.tolist()}: got"
                f" {r.x.var(0).tolist()} (tolerance {tol_v.tolist()})")
