"""``ebmkit landscape``: a thin client of map_landscape; user errors are one line."""

from __future__ import annotations

import hashlib
import json

import ebmkit
import ebmkit_landscape
import pytest
import torch
from safetensors.torch import save_file


@pytest.fixture
def checkpoint(tmp_path):
    """A registered 2-D energy (`mlp`) saved as a model file: loadable by name."""
    cfg = ebmkit.RunConfig.from_dict({"energy": {"name": "mlp"},
                                      "sampler": {"name": "langevin", "step_size": 0.125}})
    torch.manual_seed(0)
    ebm = ebmkit.model_from(cfg.energy((2,)), cfg.sampler(), shape=(2,))
    return ebm.save(tmp_path / "model.safetensors")


@pytest.fixture
def cli(ebmkit_cli):
    ebmkit_cli.use(ebmkit_landscape)
    return ebmkit_cli


def _one_line_error(res, *needles):
    assert res.exit_code != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error:"), lines
    for n in needles:
        assert n in lines[0], lines[0]


def test_listed_as_a_command(cli):
    res = cli("landscape", "--help")
    assert res.exit_code == 0 and "--n-minima" in res.stdout and "--alpha" in res.stdout


def test_maps_a_checkpoint(cli, checkpoint, tmp_path):
    out = tmp_path / "map"
    res = cli("landscape", str(checkpoint), "-n", "4", "--alpha", "5", "--alpha", "50",
              "--temperature", "0.1", "--delta", "0.05", "--ad-steps", "100",
              "--minima-steps", "100", "--no-progress", "-o", str(out))
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "landscape.json").read_text())
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert doc["params"]["sha256"] == digest and doc["params"]["checkpoint"] == str(checkpoint)
    assert [lv["alpha"] for lv in doc["levels"]] == [5.0, 50.0]
    assert doc["params"]["temperature"] == 0.1 and doc["params"]["delta"] == 0.05
    assert doc["params"]["sampler"]["name"] == "mala"
    # the default MALA step: the model's ε = 0.125 times sqrt(T)
    assert doc["params"]["sampler"]["step_size"] == pytest.approx(0.125 * 0.1**0.5)
    assert sum(b["size"] for b in doc["levels"][0]["basins"]) == 4
    for name in ("tree", "sizes", "contour"):
        assert (out / f"landscape-{name}.png").is_file()
    assert "landscape.json" in res.stdout


def test_another_sampler_by_name_and_its_options(cli, checkpoint, tmp_path):
    res = cli("landscape", str(checkpoint), "-n", "2", "--alpha", "5", "--sampler", "hmc",
              "--set", "sampler.step_size=0.02", "--set", "sampler.leapfrog_steps=2",
              "--ad-steps", "20", "--minima-steps", "20", "--no-progress", "-o",
              str(tmp_path / "m"))
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "m" / "landscape.json").read_text())
    assert doc["params"]["sampler"]["name"] == "hmc"
    assert doc["params"]["sampler"]["leapfrog_steps"] == 2


def test_not_an_energy_checkpoint(cli, tmp_path):
    bogus = tmp_path / "state.safetensors"
    save_file({"a": torch.zeros(3)}, str(bogus))
    _one_line_error(cli("landscape", str(bogus), "--no-progress", "-o", str(tmp_path / "o")),
                    "not an ebmkit energy checkpoint")
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    _one_line_error(cli("landscape", str(text), "--no-progress"), str(text))
    _one_line_error(cli("landscape", str(tmp_path / "missing.safetensors"), "--no-progress"),
                    "not found")


@pytest.mark.parametrize(("args", "needle"), [
    (["-n", "0"], "n_minima must be >= 1"),
    (["--delta", "0"], "delta must be a finite number > 0"),
    (["--delta", "-1"], "delta must be a finite number > 0"),
    (["--delta", "inf"], "delta must be a finite number > 0"),
    (["--alpha", "0"], "alpha must be a finite number > 0"),
    (["--alpha", "-3"], "alpha must be a finite number > 0"),
    (["--alpha", "nan"], "alpha must be a finite number > 0"),
    (["--temperature", "0"], "temperature must be a finite number > 0"),
    (["--set", "steps=3"], "expected sampler.KEY=VALUE"),
    (["--set", "sampler.stepz=3"], "sampler.stepz"),
    (["--sampler", "malaa"], "unknown sampler 'malaa'"),
    (["--starts", "grid"], "starts must be"),
    (["--rank-by", "energy"], "rank_by must be"),
])
def test_bad_values_are_one_line(cli, checkpoint, tmp_path, args, needle):
    _one_line_error(cli("landscape", str(checkpoint), *args, "--no-progress", "-o",
                        str(tmp_path / "o")), needle)
    assert not (tmp_path / "o" / "landscape.json").exists()


def test_api_errors_are_ebmkit_errors():
    with pytest.raises(ebmkit.ConfigError, match="n_minima"):
        ebmkit_landscape.map_landscape(object(), n_minima=0)
    with pytest.raises(ebmkit.ConfigError, match="EBM or a checkpoint path"):
        ebmkit_landscape.map_landscape(object())
