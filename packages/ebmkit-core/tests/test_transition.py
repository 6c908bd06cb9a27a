"""The K-transition evaluator: the same chains to growing K, energy and saturation per K, the
verdict, the strips; FID/KID per K only when an installed plugin registers `fid` and `kid`."""

from __future__ import annotations

import importlib.util
import json

import ebmkit
import pytest
import torch
from ebmkit.builtin import transition
from torch import nn


class Quadratic(nn.Module):
    """U(x) = c/2 ‖x‖² (per example). c < 0 pushes chains outward: energy falls and pixels run
    to the range limits as K grows; c > 0 large pulls them to 0: nothing saturates."""

    def __init__(self, c):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(float(c)))

    def forward(self, x):
        return 0.5 * self.c * x.flatten(1).pow(2).sum(1)


def _model(c, registry):
    return ebmkit.model_from(Quadratic(c), {"name": "langevin", "steps": 20, "step_size": 0.1},
                             shape=(1, 8, 8), registry=registry)


@pytest.fixture(scope="module")
def core_registry():
    """ebmkit-core's built-ins only (so the fid plugin, if installed, is not seen)."""
    from importlib.metadata import entry_points

    core = [ep.load() for ep in entry_points(group="ebmkit") if ep.dist and ep.dist.name == "ebmkit-core"]
    return ebmkit.build_registry(ebmkit.get_plugin_manager(entry_points=False, plugins=core))


def test_expanding_energy_oversaturates(tmp_path, core_registry):
    model = _model(-4.0, core_registry)
    res = ebmkit.evaluate(model, "transition", out_dir=tmp_path, registry=core_registry,
                          config={"n": 32, "max_k": 200, "k_step": 20, "columns": 6})
    doc = json.loads((tmp_path / "transition_metrics.json").read_text())
    ks = [r["K"] for r in doc["curve"]]
    assert ks == list(range(0, 201, 20))
    e = [r["energy"] for r in doc["curve"]]
    s = [r["saturation"] for r in doc["curve"]]
    # ULA's drift x ← (1 + ε²|c|/2) x = 1.02 x per step (ε = 0.1, c = −4) grows |x| by 1.02^K
    # (plus noise ε z): energy strictly falls; from uniform starts on [−1, 1] the saturated
    # fraction is ≈ P(|x0| > 0.95/1.02^K) = 1 − 0.95/1.02^K: 0.36 at K = 20, 0.98 at K = 200
    assert all(b < a for a, b in zip(e, e[1:], strict=False))
    assert s[-1] > 0.9 and s[-1] > s[1] + 0.3
    assert res.metrics["oversaturates"] == 1.0 and "over-saturates beyond K" in doc["verdict"]
    assert (tmp_path / "transition_verdict.txt").read_text().strip() == doc["verdict"]
    assert "fid" not in doc["curve"][0] and doc["fid_setup"] is None  # no fid plugin here
    assert res.figures["strips"].is_file() and res.figures["curves"].is_file()
    assert all(isinstance(v, float) for v in res.metrics.values())


def test_contracting_energy_is_stable(tmp_path, core_registry):
    model = _model(50.0, core_registry)  # N(0, 1/50): |x| > 0.95 is a 6.7σ event
    res = ebmkit.evaluate(model, "transition", out_dir=tmp_path, registry=core_registry,
                          config={"n": 16, "max_k": 100, "k_step": 25})
    doc = json.loads((tmp_path / "transition_metrics.json").read_text())
    assert res.metrics["oversaturates"] == 0.0 and doc["verdict"].startswith("stable up to K = 100")
    assert res.metrics["saturation_k_max"] < 0.05


def test_same_chains_as_one_long_run(core_registry, tmp_path):
    """The grid continues one set of chains: its last state is that of a single run of max_k
    steps from the same starts and generator."""
    model = _model(-0.5, core_registry)
    ebmkit.evaluate(model, "transition", out_dir=tmp_path, registry=core_registry,
                    config={"n": 8, "max_k": 60, "k_step": 20, "strips": 0, "seed": 3})
    doc = json.loads((tmp_path / "transition_metrics.json").read_text())
    g = torch.Generator().manual_seed(3)
    x = model.sampler.run(model.energy, model.starts(8, generator=g), 60, generator=g).x
    with torch.no_grad():
        assert doc["curve"][-1]["energy"] == pytest.approx(float(model.energy(x).mean()), rel=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("ebmkit_fid") is None, reason="ebmkit-fid not installed")
def test_fid_kid_per_k_with_the_fid_plugin(tmp_path, monkeypatch, core_registry):
    import ebmkit_fid

    monkeypatch.setenv("EBMKIT_FID_CACHE", str(tmp_path / "cache"))
    from importlib.metadata import entry_points

    core = [ep.load() for ep in entry_points(group="ebmkit") if ep.dist and ep.dist.name == "ebmkit-core"]
    reg = ebmkit.build_registry(ebmkit.get_plugin_manager(entry_points=False, plugins=[*core, ebmkit_fid]))
    model = _model(-1.0, reg)
    data = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.2 - 0.1
    res = ebmkit.evaluate(model, "transition", data=data, out_dir=tmp_path / "out", registry=reg,
                          config={"n": 32, "max_k": 100, "k_step": 20, "fid_every": 2,
                                  "fid_extractor": "ebmkit-pixels"})
    doc = json.loads((tmp_path / "out" / "transition_metrics.json").read_text())
    scored = [r for r in doc["curve"] if "fid" in r]
    assert [r["K"] for r in scored] == [0, 20, 40, 80, 100]  # every 2nd K, the model's K = 20, the last
    # the data sit near 0 and the chains run away from it: FID grows with K past the start
    assert scored[-1]["fid"] > scored[1]["fid"] and scored[-1]["kid_mean"] > scored[1]["kid_mean"]
    assert doc["fid_setup"]["feature_extractor"] == "ebmkit-pixels"
    assert "fid_k_max" in res.metrics


def test_registered_through_the_core_entry_point(core_registry):
    assert core_registry.get("evaluator", "transition") is transition.Transition
