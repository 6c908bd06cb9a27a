"""Acceptance: in a fresh virtual environment holding only ebmkit-core, installing this plugin
adds the `ebmkit landscape` command, which maps a checkpoint trained there; uninstalling it
removes the command. (slow: builds a venv)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_install_map_uninstall_in_a_fresh_venv(tmp_path):
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("needs uv to build a fresh virtual environment")
    venv = tmp_path / "venv"
    env = {**os.environ, "VIRTUAL_ENV": str(venv), "COLUMNS": "200", "MPLBACKEND": "Agg",
           "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    for key in [k for k in env if k.startswith("UV_")]:  # nox's uv backend points uv at its own venv
        env.pop(key)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=900)

    ebmkit = str(venv / "bin" / "ebmkit")
    py = str(venv / "bin" / "python")
    assert run(uv, "venv", "-q", str(venv)).returncode == 0
    p = run(uv, "pip", "install", "-q", "--python", py, str(ROOT / "packages/ebmkit-core"))
    assert p.returncode == 0, p.stderr
    p = run(ebmkit, "landscape", "--help")
    assert p.returncode != 0 and "landscape" in p.stdout + p.stderr

    p = run(ebmkit, "run", "--energy", "mlp", "--data", "gmm2d", "--sampler", "langevin",
            "--set", "sampler.steps=5", "--set", "train.batch_size=16", "-n", "2",
            "--no-progress", "--out", str(tmp_path / "run"))
    assert p.returncode == 0, p.stdout + p.stderr

    p = run(uv, "pip", "install", "-q", "--python", py, str(ROOT / "plugins/ebmkit-landscape"))
    assert p.returncode == 0, p.stderr
    p = run(ebmkit, "plugins")
    assert p.returncode == 0 and "ebmkit-landscape" in p.stdout, p.stdout
    p = run(ebmkit, "landscape", str(tmp_path / "run"), "-n", "4", "--alpha", "5",
            "--ad-steps", "50", "--minima-steps", "50", "--no-progress", "-o",
            str(tmp_path / "map"))
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads((tmp_path / "map" / "landscape.json").read_text())
    assert doc["n_minima"] == 4 and doc["params"]["sha256"]
    assert (tmp_path / "map" / "landscape-tree.png").is_file()

    p = run(uv, "pip", "uninstall", "-q", "--python", py, "ebmkit-landscape")
    assert p.returncode == 0, p.stderr
    p = run(ebmkit, "landscape", str(tmp_path / "run"))
    assert p.returncode != 0 and "landscape" in p.stdout + p.stderr
