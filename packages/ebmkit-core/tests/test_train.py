"""The training loop: exact resume, the divergence guard, d_t dynamics, every preset starts."""

import json
import math
from dataclasses import dataclass

import pytest
import torch
from ebmkit import Energy, fit, hookimpl, param
from ebmkit.checkpoint import load_energy
from ebmkit.diagnostics import read_csv
from ebmkit.errors import DataError, DivergenceError, MissingDependencyError
from ebmkit.plugins import build_registry, get_plugin_manager
from ebmkit.runconfig import build_document, resolve
from ebmkit.training import data_noise_at, lr_at
from safetensors.torch import load_file
from torch import nn


# --- a test plugin: an energy that turns NaN on demand ---------------------------------------
@dataclass(frozen=True, kw_only=True)
class NanCfg:
    after: int = param(3, "training forwards before the output turns NaN")


class NanAfter(Energy):
    name = "test-nan-after"
    summary = "MLP energy whose output becomes NaN after `after` training iterations."
    Config = NanCfg

    def __init__(self, config, shape):
        super().__init__(config, shape)
        self.f = nn.Sequential(nn.Linear(shape[0], 16), nn.SiLU(), nn.Linear(16, 1))
        self.calls = 0

    def forward(self, x):
        u = self.f(x).squeeze(1)
        if self.training:
            self.calls += 1
            if self.calls > self.config.after:
                return u * math.nan
        return u


class _Plugin:
    @hookimpl
    def ebmkit_register(self, register):
        register(NanAfter)


@pytest.fixture(scope="module")
def reg():
    return build_registry(get_plugin_manager(plugins=[_Plugin()]))


def tiny_image_run(**train):
    over = ["energy.nf=4", "sampler.steps=3", "data.limit=64", "train.batch_size=8",
            "train.sample_every=0", "train.plots=false"]
    return build_document(overrides=over + [f"train.{k}={v}" for k, v in train.items()])


def test_schedules():
    from ebmkit.runconfig import TrainConfig

    c = TrainConfig(iterations=11, lr=1.0, lr_schedule="exponential", lr_decay=0.5, decay_start=4,
                    data_noise=0.1, data_noise_final=0.0)
    assert lr_at(c, 3) == 1.0 and lr_at(c, 6) == pytest.approx(0.25)
    assert data_noise_at(c, 4) == pytest.approx(0.1) and data_noise_at(c, 10) == pytest.approx(0.0)
    assert data_noise_at(c, 7) == pytest.approx(0.05)


def test_resume_reproduces_the_uninterrupted_run_exactly(reg, tmp_path):
    """Kill after 4 iterations (last checkpoint at 3), resume, and compare with a straight run.

    Covers every piece of state: weights, Adam moments, lr schedule, persistent buffer, random K,
    data order and chain noise."""
    doc = build_document(overrides=[
        "energy.nf=4", "sampler.steps=2", "train.steps_max=4", "init.name=persistent",
        "init.buffer_size=24", "data.limit=64", "train.batch_size=8", "train.iterations=7",
        "train.checkpoint_every=3", "train.sample_every=0", "train.plots=false",
        "train.lr_schedule=exponential", "train.lr_decay=0.9", "train.lr=1e-3"])
    spec = resolve(doc, reg)

    full = tmp_path / "full"
    fit(config=spec, out_dir=full, registry=reg)
    part = tmp_path / "part"
    r = fit(config=spec, out_dir=part, registry=reg, stop_after=4)  # "killed" during iteration 5
    assert r.step == 4
    assert (part / "checkpoints" / "LATEST").read_text().strip() == "step-000003"
    assert json.loads((part / "checkpoints" / "step-000003" / "state.json").read_text())["step"] == 3
    r = fit(out_dir=part, resume=True, registry=reg)
    assert r.step == 7

    a, b = load_file(str(full / "model.safetensors")), load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = load_file(str(full / "checkpoints" / "step-000007" / "rank0.safetensors"))
    sb = load_file(str(part / "checkpoints" / "step-000007" / "rank0.safetensors"))
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    da, db = read_csv(full / "diagnostics.csv"), read_csv(part / "diagnostics.csv")
    assert list(db["iter"]) == list(range(1, 8))  # rows after the checkpoint were replaced
    for col in ("d_t", "v_t", "e_pos", "e_neg", "lr", "steps"):
        assert list(da[col]) == list(db[col]), col
    assert len(set(da["steps"])) > 1  # K really was random


def test_divergence_stops_with_message_and_keeps_checkpoint(reg, tmp_path):
    doc = build_document(overrides=[
        "energy.name=test-nan-after", "energy.after=3", "data.name=gmm2d", "sampler.steps=2",
        "train.batch_size=16", "train.iterations=10", "train.checkpoint_every=2",
        "train.sample_every=0", "train.data_noise=0"])
    spec = resolve(doc, reg)
    with pytest.raises(DivergenceError) as e:
        fit(config=spec, out_dir=tmp_path, registry=reg)
    msg = str(e.value)
    assert "diverged at iteration 4" in msg and "train.lr" in msg and "\n" not in msg
    energy, meta = load_energy(tmp_path / "model.safetensors", reg)
    assert meta["step"] == 2
    assert all(torch.isfinite(p).all() for p in energy.parameters())


def test_persistent_toy_run_oscillates_between_expansion_and_contraction(reg, tmp_path):
    """Anatomy §3: with persistent chains and noisy ULA, d_t takes both signs after burn-in."""
    doc = build_document(overrides=[
        "energy.name=mlp", "energy.hidden=64", "data.name=gmm2d", "init.name=persistent",
        "init.buffer_size=500", "init.low=-2", "init.high=2", "sampler.step_size=0.05",
        "sampler.steps=10", "train.batch_size=64", "train.iterations=100", "train.lr=1e-3",
        "train.data_noise=0", "train.sample_every=0", "train.checkpoint_every=0", "train.plots=true",
        "train.tensorboard=off"])
    res = fit(config=resolve(doc, reg), out_dir=tmp_path, registry=reg)
    d = read_csv(tmp_path / "diagnostics.csv")
    after = d["d_t"][33:]  # after burn-in; this seed gives 20 contraction / 47 expansion steps
    assert (after > 0).sum() >= 5 and (after < 0).sum() >= 5, after
    assert all(math.isfinite(v) for v in d["e_pos"]) and all(math.isfinite(v) for v in d["e_neg"])
    assert res.step == 100
    assert (tmp_path / "plots" / "oscillation.png").is_file()


def _tiny_preset_doc(reg, preset):
    """A preset shrunk to seconds: tiny widths/steps/iterations, and the embedded digits in place
    of datasets that need a download or torchvision."""
    doc = reg.get("preset", preset).read()
    over = ["train.iterations=1", "train.batch_size=4", "train.sample_every=1",
            "train.checkpoint_every=0", "train.plots=false", "sampler.steps=2"]
    if "nf" in doc.get("energy", {}):
        over.append("energy.nf=2")
    if doc.get("init", {}).get("name") == "persistent":
        over.append("init.buffer_size=8")
    data = doc.get("data", {})
    spec = resolve(build_document(preset_doc=doc), reg)
    try:
        spec.data_source().open(split="train")
    except (MissingDependencyError, DataError):
        doc["data"] = {"name": "mnist5k", "resolution": data.get("resolution", 32),
                       "channels": data.get("channels", 1), "limit": 16}
    return build_document(preset_doc=doc, overrides=over)


def test_every_preset_starts(reg, tmp_path):
    presets = reg.names("preset")
    assert {"quick", "shortrun-cifar10", "anatomy-convergent-cifar10"} <= set(presets)
    for preset in presets:
        spec = resolve(_tiny_preset_doc(reg, preset), reg)
        res = fit(config=spec, out_dir=tmp_path / preset, registry=reg)
        assert res.step == 1, preset
        assert (tmp_path / preset / "model.safetensors").is_file(), preset
