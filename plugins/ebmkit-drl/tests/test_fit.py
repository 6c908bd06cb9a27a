"""The plugin inside ebmkit.fit: the preset, a smoke run that writes samples and a loadable
checkpoint, resume continuing the objective's random numbers exactly, and one-line errors."""

from __future__ import annotations

import ebmkit
import pytest
import torch

TINY = dict(energy={"name": "drl-convnet32", "nf": 4, "levels": 3},
            objective={"name": "drl", "steps": 2}, batch_size=8, sample_steps=2, grid_size=8,
            threads=1, plots=False, tensorboard="off")


def test_preset_resolves():
    cfg = ebmkit.RunConfig.from_preset("drl-quick")
    assert [cfg.name(k) for k in ("energy", "sampler", "objective")] == [
        "drl-convnet32", "drl-progressive", "drl"]
    assert cfg.configs["sampler"].steps == 0 and cfg.train.sample_steps == 30
    assert cfg.configs["init"].distribution == "gaussian"


def test_smoke_fit_writes_samples_and_a_loadable_model(tmp_path):
    ebm = ebmkit.fit(preset="drl-quick", iterations=3, checkpoint_every=2, out_dir=tmp_path / "run",
                     **TINY)
    assert (tmp_path / "run" / "samples" / "final.png").is_file()
    for key in ("gap_t0", "gap_t2", "disp"):
        assert key in ebm.last
    assert ebm.last["grad_evals"] == 3 * (8 * 2 + 16)  # the chains' and the loss pass's, no more
    back = ebmkit.load(tmp_path / "run")
    x = back.sample(4, seed=0)
    assert x.shape == (4, 1, 32, 32) and torch.isfinite(x).all()
    assert torch.equal(x, ebm.sample(4, seed=0))


def test_resume_continues_exactly(tmp_path):
    """Two iterations, then a resume for two more, equal four uninterrupted iterations bit for
    bit: the objective's generator state is saved with each checkpoint and restored."""
    straight = ebmkit.fit(preset="drl-quick", iterations=4, out_dir=tmp_path / "a", **TINY)
    ebmkit.fit(preset="drl-quick", iterations=2, out_dir=tmp_path / "b", **TINY)
    resumed = ebmkit.fit(out_dir=tmp_path / "b", resume=True, iterations=4)
    for p, q in zip(straight.energy.parameters(), resumed.energy.parameters(), strict=True):
        assert torch.equal(p, q)


def test_drl_objective_needs_a_noise_conditional_energy():
    with pytest.raises(ebmkit.ConfigError) as err:
        ebmkit.fit(preset="drl-quick", energy={"name": "convnet32", "nf": 4}, iterations=1,
                   batch_size=4, threads=1)
    assert "noise-conditional" in str(err.value) and "\n" not in str(err.value)
