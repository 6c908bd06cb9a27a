"""``train.ema``: an exponential moving average of the energy's weights, used for samples,
evaluations and ``model.safetensors``; the training chains use the raw weights; resume restores
both bit for bit."""

from __future__ import annotations

import ebmkit
import pytest
import torch
from ebmkit.training import update_ema
from safetensors.torch import load_file

TOY = dict(energy={"name": "mlp", "hidden": 8, "layers": 2}, data="gmm2d", batch_size=16,
           sampler={"name": "langevin", "steps": 3, "grad_coef": 0.01, "noise_std": 0.05},
           plots=False, tensorboard="off", progress=False, lr=1e-2)


def test_the_update_and_its_warm_up():
    energy = torch.nn.Linear(2, 1)
    ema = torch.nn.Linear(2, 1).requires_grad_(False)
    ema.load_state_dict(energy.state_dict())
    a0 = ema.weight.clone()
    with torch.no_grad():
        energy.weight.add_(1.0)
    update_ema(ema, energy, 0.999, it=0)  # warm-up: d = min(0.999, 1/10) = 0.1
    assert torch.allclose(ema.weight, 0.1 * a0 + 0.9 * energy.weight)
    before = ema.weight.clone()
    update_ema(ema, energy, 0.5, it=10_000)  # past the warm-up: d = 0.5
    assert torch.allclose(ema.weight, 0.5 * before + 0.5 * energy.weight)


def test_the_model_file_is_the_average_and_resume_restores_both(tmp_path, one_thread):
    straight, split = tmp_path / "straight", tmp_path / "split"
    ebm = ebmkit.fit(**TOY, iterations=6, ema=0.9, out_dir=straight)
    raw_dir = ebmkit.CheckpointManager(straight).latest()
    published = load_file(str(straight / "model.safetensors"))
    raw = {k[4:]: v for k, v in load_file(str(raw_dir / "rank0.safetensors")).items()
           if k.startswith("raw.")}
    assert raw.keys() == published.keys()
    assert any(not torch.equal(raw[k], published[k]) for k in raw)  # the average differs
    for k, v in ebm.energy.state_dict().items():  # fit returns the averaged model
        assert torch.equal(v, published[k])
    ebmkit.fit(**TOY, iterations=6, ema=0.9, out_dir=split, checkpoint_every=1, stop_after=3)
    ebmkit.fit(out_dir=split, resume=True)
    again = load_file(str(split / "model.safetensors"))
    raw2 = {k[4:]: v for k, v in
            load_file(str(ebmkit.CheckpointManager(split).latest() / "rank0.safetensors")).items()
            if k.startswith("raw.")}
    for k in published:
        assert torch.equal(again[k], published[k]) and torch.equal(raw2[k], raw[k])
    loaded = ebmkit.load(straight)
    for k, v in loaded.energy.state_dict().items():
        assert torch.equal(v, published[k])


def test_ema_cannot_change_on_resume(tmp_path, one_thread):
    out = tmp_path / "run"
    ebmkit.fit(**TOY, iterations=4, ema=0.9, out_dir=out, checkpoint_every=1, stop_after=2)
    with pytest.raises(ebmkit.ConfigError, match="ema"):
        ebmkit.fit(out_dir=out, resume=True, ema=0.0)
