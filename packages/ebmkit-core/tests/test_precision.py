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


def test_bf16_chain_follows_fp32_without_noise(one_thread):
    """Noise off, 5 steps: the bf16 chain ends near the fp32 one. One bf16 input-gradient of a
    small ConvNet differs from fp32 by a few percent of its size, so 5 steps of size a·|g|
    move the state by at most 5 · 0.05 · (a·|g|); states and energies come back in fp32."""
    e = _energy()
    s = Langevin(LangevinConfig(grad_coef=0.05, noise_std=0.0, steps=5))
    x0 = torch.rand(16, 1, 8, 8) * 2 - 1
    ref = s.run(e, x0, generator=torch.Generator().manual_seed(1), noise=False)
    bf = s.run(Autocast(e), x0, generator=torch.Generator().manual_seed(1), noise=False)
    assert bf.x.dtype == torch.float32 and bf.energy.dtype == torch.float32
    moved = (ref.x - x0).norm()
    assert moved > 0
    assert (bf.x - ref.x).norm() <= 0.25 * moved
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
