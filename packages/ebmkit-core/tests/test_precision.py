"""train.precision: the bf16 path against the fp32 reference, and what auto picks."""

import pytest
import torch
from ebmkit.builtin.samplers import MALA, Langevin, LangevinConfig, MALAConfig
from ebmkit.errors import ConfigError
from ebmkit.training import Autocast, resolve_precision


def _energy():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, 1, 1), torch.nn.SiLU(),
                               torch.nn.Conv2d(8, 1, 8), torch.nn.Flatten(0)).eval()


# bf16 keeps 8 mantissa bits: rounding an operand costs at most u = 2**-8 of it. The input
# gradient of this two-conv energy goes through four bf16 GEMMs (two convolutions forward, their
# two input-backward passes; accumulation stays fp32), so to first order its relative error is at
# most 4u, and a noise-free chain of small steps inherits the error of its gradients. Measured
# (seeds 0-4, 16 states): one-step gradient 0.0033-0.0043, 5-step state error / distance moved
# 0.0028-0.0038, i.e. about u; the tolerance 4u = 2**-6 leaves a 4x margin.
BF16_TOL = 4 * 2.0**-8


def test_bf16_gradient_within_bf16_rounding():
    e = _energy()
    x0 = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x = x0.clone().requires_grad_()
    g = torch.autograd.grad(e(x).sum(), x)[0]
    xb = x0.clone().requires_grad_()
    gb = torch.autograd.grad(Autocast(e)(xb).sum(), xb)[0]
    assert gb.dtype == torch.float32
    err = ((gb - g).norm() / g.norm()).item()
    assert 0 < err <= BF16_TOL  # > 0: it really ran in bf16


def test_bf16_chain_follows_fp32_without_noise(one_thread):
    """Noise off, 5 steps: the bf16 chain ends within 4u of the distance the fp32 chain moved;
    states and energies come back in fp32."""
    e = _energy()
    s = Langevin(LangevinConfig(grad_coef=0.05, noise_std=0.0, steps=5))
    x0 = torch.rand(16, 1, 8, 8) * 2 - 1
    ref = s.run(e, x0, generator=torch.Generator().manual_seed(1), noise=False)
    bf = s.run(Autocast(e), x0, generator=torch.Generator().manual_seed(1), noise=False)
    assert bf.x.dtype == torch.float32 and bf.energy.dtype == torch.float32
    moved = (ref.x - x0).norm()
    assert moved > 0
    assert (bf.x - ref.x).norm() <= BF16_TOL * moved
    assert not torch.equal(bf.x, ref.x)  # it really ran in bf16


def test_autocast_wrapper_shares_parameters_and_attributes():
    e = _energy()
    e.custom_flag = 7
    w = Autocast(e)
    assert list(w.parameters()) == list(e.parameters())
    assert w.custom_flag == 7


def test_auto_keeps_exact_samplers_in_fp32_and_explicit_choices():
    mala = MALA(MALAConfig(step_size=0.1))
    assert resolve_precision("auto", "cpu", mala) == "fp32"
    lang = Langevin(LangevinConfig())
    assert resolve_precision("auto", "cpu", lang) in ("fp32", "bf16")
    assert resolve_precision("bf16", "cpu", mala) == "bf16"
    with pytest.raises(ConfigError):
        resolve_precision("fp8", "cpu", lang)


def test_precision_and_legacy_mixed_precision_together_is_refused():
    import ebmkit

    with pytest.raises(Exception, match="precision"):
        ebmkit.fit(preset="quick", iterations=1, precision="bf16", mixed_precision="bf16")
