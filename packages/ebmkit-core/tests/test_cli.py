"""The command line as a user drives it: listing, describing, bad input, a real run, sampling."""

import json

import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

TINY = ["--set", "energy.nf=4", "--set", "sampler.steps=3", "--set", "train.batch_size=8",
        "--set", "data.limit=64", "--set", "train.plots=true"]


def test_list_and_describe(cli):
    code, out, _ = cli("list")
    assert code == 0
    for name in ("convnet32", "convnet64", "convnet128", "langevin", "noise", "persistent", "mnist5k", "quick"):
        assert name in out
    code, out, _ = cli("list", "samplers")
    assert code == 0 and "langevin" in out and "convnet32" not in out
    code, out, _ = cli("describe", "sampler", "langevin")
    assert code == 0
    for p in ("steps", "step_size", "tau", "grad_coef", "noise_std", "temperature", "clamp"):
        assert p in out
    code, out, _ = cli("describe", "initializer", "noise")
    assert code == 0 and "[one of: uniform," in out and "[low, high]" in out  # not eaten as markup
    code, out, _ = cli("describe", "train")
    assert code == 0 and "data_noise" in out
    code, out, _ = cli("describe", "preset", "quick")
    assert code == 0 and "mnist5k" in out


@pytest.mark.parametrize(
    "args, expected",
    [
        (["run", "--sampler", "langevn"], "unknown sampler 'langevn'. Did you mean 'langevin'? Available:"),
        (["run", "--energy", "convnet65"], "Did you mean 'convnet64'?"),
        (["run", "--set", "sampler.steps=abc"], "sampler.steps: expected an integer, got 'abc'"),
        (["run", "--set", "sampler.stepz=3"], "unknown key 'sampler.stepz'. Did you mean 'sampler.steps'?"),
        (["run", "--set", "train.lr=-1"], "train.lr: must be > 0.0"),
        (["run", "--preset", "quik"], "unknown preset 'quik'. Did you mean 'quick'?"),
        (["run", "--config", "/nonexistent/run.toml"], "config file not found"),
        (["run", "--config", "/nonexistent/[extra].toml"], "/nonexistent/[extra].toml"),
        (["run", "--set", "steps"], "expected SECTION.KEY=VALUE"),
        (["list", "widgets"], "unknown kind 'widgets'"),
        (["run", "--energy", "convnet64", "--set", "data.resolution=32", "--dry-run"], "expects images [C, 64, 64]"),
        (["sample", "/nonexistent/model.safetensors"], "checkpoint not found"),
    ],
)
def test_user_errors_are_one_line(cli, args, expected):
    code, out, err = cli(*args)
    assert code == 2, (out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert expected in lines[0]
    assert "Traceback" not in err + out


def test_data_resolution_follows_the_energy_unless_set(cli):
    code, out, _ = cli("run", "--energy", "convnet64", "--sampler", "langevin", "--init", "noise", "--dry-run")
    assert code == 0 and 'name = "convnet64"' in out and "resolution = 64" in out
    code, out, _ = cli("run", "--energy", "convnet128", "--dry-run")
    assert code == 0 and "resolution = 128" in out
    code, out, _ = cli("run", "--energy", "nonlocal", "--set", "data.resolution=64", "--dry-run")
    assert code == 0 and "resolution = 64" in out


def test_run_writes_grid_and_checkpoint_then_sample(cli, tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = cli("run", "--preset", "quick", "-n", "4", "--set", "train.sample_every=2",
                         "--no-progress", "--out", out_dir, *TINY)
    assert code == 0, err
    grids = sorted((out_dir / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["final.png", "iter_000002.png", "iter_000004.png"]
    img = Image.open(grids[0])
    assert img.size[0] > 32 and img.mode in ("L", "RGB")
    import numpy as np

    assert len(np.unique(np.asarray(img))) > 2  # not a blank image
    assert (out_dir / "plots" / "diagnostics.png").is_file()
    rows = (out_dir / "diagnostics.csv").read_text().strip().splitlines()
    assert len(rows) == 5 and rows[0].startswith("iter,d_t,v_t,r_t")

    # the checkpoint is readable with safetensors alone; its metadata describes the run
    ckpt = out_dir / "model.safetensors"
    with safe_open(str(ckpt), framework="pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["format"] == "ebmkit.energy/1" and meta["energy"] == "convnet32"
    assert meta["step"] == "4" and meta["ebmkit_version"]
    doc = json.loads(meta["config"])
    assert doc["sampler"]["name"] == "langevin" and doc["energy"]["nf"] == 4
    assert doc["init"]["name"] == "noise" and doc["data"]["name"] == "mnist5k"
    assert json.loads(meta["shape"]) == [1, 32, 32]
    assert any(k.endswith("weight") for k in keys)

    grid = tmp_path / "grid.png"
    code, out, err = cli("sample", ckpt, "-n", "9", "--steps", "3", "-o", grid)
    assert code == 0, err
    assert Image.open(grid).size == (3 * 34 + 2, 3 * 34 + 2)
    # a raw tensor dump and deterministic generator mode
    code, _, err = cli("sample", ckpt, "-n", "4", "--steps", "2", "--no-noise", "-o", tmp_path / "s.safetensors")
    assert code == 0, err

    # writing into an existing run is refused (nothing is lost)
    code, _, err = cli("run", "--preset", "quick", "-n", "1", "--out", out_dir, *TINY)
    assert code == 2 and "already holds a run" in err


def test_corrupt_and_foreign_checkpoints(cli, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    code, _, err = cli("sample", bad)
    assert code == 2 and "not a readable safetensors file" in err and len(err.strip().splitlines()) == 1
    import torch

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    code, _, err = cli("sample", foreign)
    assert code == 2 and "not an ebmkit energy checkpoint" in err
    pickle = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, pickle)
    code, _, err = cli("sample", pickle)
    assert code == 2 and "not a readable safetensors file" in err


def test_sampling_a_persistent_run_starts_from_its_noise(cli, tmp_path):
    out_dir = tmp_path / "pcd"
    code, _, err = cli("run", "--preset", "quick", "-n", "2", "--init", "persistent", "--set",
                       "init.buffer_size=16", "--no-progress", "--out", out_dir, *TINY)
    assert code == 0, err
    code, _, err = cli("sample", out_dir / "model.safetensors", "-n", "4", "--steps", "2",
                       "-o", tmp_path / "g.png")
    assert code == 0, err
    code, _, err = cli("sample", out_dir / "model.safetensors", "--init", "data", "-o", tmp_path / "h.png")
    assert code == 2 and "init 'data' cannot start chains without data" in err


def test_ctrl_c_is_not_success(monkeypatch, capsys):
    """typer (standalone_mode=False) returns 130 on Ctrl-C instead of raising: main() must turn
    it into the interrupted message and a non-zero exit code."""
    import typer
    from ebmkit.cli.main import main

    monkeypatch.setattr(typer.Typer, "__call__", lambda self, *a, **k: 130)
    assert main(["list"]) == 130
    assert "interrupted" in capsys.readouterr().err
