"""The noise-conditional energies: the conformance kit (forward(x) = level 0), the level
argument, the 1/s_t^2 output scale, unwrapping, and bad configurations as one line."""

from __future__ import annotations

import ebmkit
import ebmkit_drl
import pytest
import torch
from ebmkit.params import build
from ebmkit_drl import DRLMLP, DRLConvNet32, noise_conditional
from ebmkit_testing import EnergyConformance
from torch import nn


class TestDRLConvNet32(EnergyConformance):
    component = DRLConvNet32
    plugin = ebmkit_drl
    entry_point = "drl"
    shape = (1, 32, 32)
    config = {"nf": 4}


class TestDRLMLP(EnergyConformance):
    component = DRLMLP
    plugin = ebmkit_drl
    shape = (2,)
    config = {"hidden": 16, "levels": 3}


def make(cls, shape, **values):
    torch.manual_seed(0)
    e = cls(build(cls.Config, values, where="energy"), shape)
    with torch.no_grad():  # non-zero level embeddings: the levels differ
        for film in e.films:
            film.embed.weight.normal_(0, 0.3)
    return e.eval()


@pytest.mark.parametrize("cls,shape,cfg", [(DRLConvNet32, (1, 32, 32), {"nf": 4}),
                                           (DRLMLP, (3,), {"hidden": 8, "levels": 4})])
def test_levels_and_output_scale(cls, shape, cfg):
    """forward(x) is level 0 (an int, a tensor of zeros, None agree); each example takes its
    own level; U(x, t) = net(x, t) / s_t^2 exactly; different levels give different energies."""
    e = make(cls, shape, **cfg)
    x = torch.rand(4, *shape) * 2 - 1
    t = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        u0 = e(x)
        assert torch.equal(u0, e(x, 0)) and torch.equal(u0, e(x, torch.zeros(4, dtype=torch.long)))
        u = e(x, t)
        per = torch.stack([e(x[i:i + 1], int(t[i]))[0] for i in range(4)])
        assert torch.allclose(u, per, rtol=1e-5, atol=1e-5)
        s2 = e.diffusion.schedule.step_var.float()
        assert torch.allclose(u, e.net(x, t) / s2[t], rtol=1e-6)
        assert not torch.allclose(e(x, 1), e(x, 2) * s2[2] / s2[1])


def test_bf16_autocast_keeps_the_input_dtype():
    e = make(DRLConvNet32, (1, 32, 32), nf=4)
    x = torch.rand(2, 1, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        u = e(x, 1)
    assert u.dtype == torch.float32 and torch.isfinite(u).all()


def test_noise_conditional_looks_through_wrappers():
    e = make(DRLMLP, (2,), hidden=4)

    class Wrapper(nn.Module):  # what DDP (.module) and the trainer's Autocast (.inner) look like
        def __init__(self, inner, attr):
            super().__init__()
            setattr(self, attr, inner)

    assert noise_conditional(e) is e
    assert noise_conditional(Wrapper(Wrapper(e, "inner"), "module")) is e
    with pytest.raises(ebmkit.ConfigError, match="noise-conditional energy"):
        noise_conditional(nn.Linear(2, 1), "sampler 'drl-progressive'")


def test_wrong_image_size_is_one_line():
    with pytest.raises(ebmkit.ConfigError) as err:
        DRLConvNet32(DRLConvNet32.default_config(), (1, 28, 28))
    assert "32" in str(err.value) and "\n" not in str(err.value)


def test_saved_and_loaded_with_its_schedule(tmp_path):
    """The schedule lives in the config: a model file rebuilds it (no schedule tensors in the
    state dict, which holds only weights)."""
    e = make(DRLMLP, (2,), hidden=4, levels=3, step_b2=1e-3)
    assert not any(k.startswith("diffusion") for k in e.state_dict())
    model = ebmkit.model_from(e, {"name": "drl-progressive", "steps": 2},
                              {"name": "noise", "distribution": "gaussian"}, shape=(2,))
    model.save(tmp_path / "m.safetensors")
    back = ebmkit.load(tmp_path / "m.safetensors")
    assert back.energy.config == e.config and back.energy.levels == 3
    x = torch.randn(5, 2)
    with torch.no_grad():
        assert torch.allclose(back.energy(x, 2), e(x, 2))
    assert torch.equal(back.sample(8, seed=3), model.sample(8, seed=3))
