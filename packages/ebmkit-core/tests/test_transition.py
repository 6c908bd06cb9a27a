"""The K-transition evaluator: the same chains to growing K, energy and saturation per K, the
verdict, the strips; per K, the installed sample metrics (evaluators implementing
ebmkit.SampleMetric: FID/KID with ebmkit-fid, or any plugin's), found by that interface."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass

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
    assert set(doc["curve"][0]) == {"K", "energy", "saturation"}  # no sample metric installed
    assert doc["sample_metrics"] == {}
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
                          config={"n": 32, "max_k": 100, "k_step": 20, "metric_every": 2,
                                  "metric_options": ["feature_extractor=ebmkit-pixels"]})
    doc = json.loads((tmp_path / "out" / "transition_metrics.json").read_text())
    scored = [r for r in doc["curve"] if "fid" in r]
    assert [r["K"] for r in scored] == [0, 20, 40, 80, 100]  # every 2nd K, the model's K = 20, the last
    # the data sit near 0 and the chains run away from it: FID grows with K past the start
    assert scored[-1]["fid"] > scored[1]["fid"] and scored[-1]["kid_mean"] > scored[1]["kid_mean"]
    assert set(doc["sample_metrics"]) == {"fid", "kid"}  # the cheap ones, by default
    assert doc["sample_metrics"]["fid"]["feature_extractor"] == "ebmkit-pixels"
    assert doc["sample_metrics"]["kid"]["n"] == 32
    assert "fid_k_max" in res.metrics and "kid_mean_k_model" in res.metrics
    assert "precision" not in scored[0]  # prc is installed but not cheap: only when named


def test_registered_through_the_core_entry_point(core_registry):
    assert core_registry.get("evaluator", "transition") is transition.Transition


# -- any plugin's sample metric, found by the interface ---------------------------------------------
class Spread(ebmkit.Evaluator, ebmkit.interfaces.SampleMetric):
    """A toy sample metric: the chains' std over the data's (1 when they match)."""

    name = "spread-ratio"
    summary = "Toy sample metric (tests)."
    metric_names = ("spread", "spread_calls")
    cheap = True
    calls = 0

    @dataclass(frozen=True, kw_only=True)
    class Config:
        n: int = ebmkit.param(8, "Recorded only.")
        power: float = ebmkit.param(1.0, "The ratio is raised to this power.")

    def score(self, samples, reference):
        type(self).calls += 1
        ratio = float(samples.std() / reference.std()) ** self.config.power
        return {"spread": ratio, "spread_calls": float(type(self).calls)}

    def evaluate(self, model, data, out_dir):
        raise NotImplementedError  # transition only calls score()


class Costly(Spread):
    name = "costly"
    metric_names = ("costly",)
    cheap = False

    def score(self, samples, reference):
        return {"costly": 1.0}


class _ToyPlugin:
    @ebmkit.hookimpl
    def ebmkit_register(self, register):
        register(Spread)
        register(Costly)


@pytest.fixture
def toy_registry():
    from importlib.metadata import entry_points

    core = [ep.load() for ep in entry_points(group="ebmkit") if ep.dist and ep.dist.name == "ebmkit-core"]
    return ebmkit.build_registry(ebmkit.get_plugin_manager(entry_points=False,
                                                           plugins=[*core, _ToyPlugin()]))


DATA = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.2 - 0.1


def test_any_plugins_sample_metric_is_scored_per_k(toy_registry):
    """A sample metric of any plugin, under any name: picked by default when it says it is
    cheap, called through score() at every metric_every-th K, the model's K and the last; the
    others only when named. Its options come from metric_options when its Config has them."""
    Spread.calls = 0
    model = _model(-1.0, toy_registry)  # chains run away from the data near 0: spread grows
    res = ebmkit.evaluate(model, "transition", data=DATA, out_dir=None, registry=toy_registry,
                          config={"n": 16, "max_k": 100, "k_step": 20, "metric_every": 2,
                                  "metric_options": ["power=2"]})
    assert Spread.calls == 5  # K = 0, 20 (the model's), 40, 80, 100
    assert "costly_k_max" not in res.metrics
    assert res.metrics["spread_k_max"] > res.metrics["spread_k_model"] > 1
    named = ebmkit.evaluate(model, "transition", data=DATA, out_dir=None, registry=toy_registry,
                            config={"n": 16, "max_k": 40, "k_step": 20, "metrics": ["costly"]})
    assert named.metrics["costly_k_max"] == 1.0 and "spread_k_max" not in named.metrics
    none = ebmkit.evaluate(model, "transition", data=DATA, out_dir=None, registry=toy_registry,
                           config={"n": 16, "max_k": 40, "k_step": 20, "metrics": []})
    assert not any(k.startswith(("spread", "costly")) for k in none.metrics)


def test_sample_metric_json_and_plot(tmp_path, toy_registry):
    model = _model(-1.0, toy_registry)
    ebmkit.evaluate(model, "transition", data=DATA, out_dir=tmp_path, registry=toy_registry,
                    config={"n": 16, "max_k": 40, "k_step": 20, "metrics": ["spread-ratio"]})
    doc = json.loads((tmp_path / "transition_metrics.json").read_text())
    assert doc["sample_metrics"] == {"spread-ratio": {"n": 16, "power": 1.0}}
    assert all("spread" in r for r in doc["curve"]) and (tmp_path / "transition_curves.png").is_file()


def test_unknown_sample_metric_and_option_are_one_line(toy_registry):
    model = _model(-1.0, toy_registry)
    with pytest.raises(ebmkit.ConfigError, match="'sprad' is not a sample metric.*Available: "
                                                 "costly, spread-ratio") as e:
        ebmkit.evaluate(model, "transition", data=DATA, out_dir=None, registry=toy_registry,
                        config={"metrics": ["sprad"]})
    assert "\n" not in str(e.value)
    with pytest.raises(ebmkit.ConfigError, match="no chosen metric .* has the option 'powr'"):
        ebmkit.evaluate(model, "transition", data=DATA, out_dir=None, registry=toy_registry,
                        config={"metric_options": ["powr=2"]})
    with pytest.raises(ebmkit.DataError, match="reference data"):
        ebmkit.evaluate(model, "transition", data=None, out_dir=None, registry=toy_registry,
                        config={"metrics": ["costly"]})
    # the model's own run data is not there: default metrics are simply skipped without data
    res = ebmkit.evaluate(model, "transition", out_dir=None, registry=toy_registry,
                          config={"n": 8, "max_k": 20, "k_step": 20})
    assert "spread_k_max" not in res.metrics
