"""Acceptance: in a fresh virtual environment holding only ebmkit-core, installing this plugin
adds `underdamped` to `ebmkit list samplers` and `ebmkit run`; uninstalling it makes
`--sampler underdamped` a one-line error that lists the available samplers. (slow: builds a venv)"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_install_run_uninstall_in_a_fresh_venv(tmp_path):
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("needs uv to build a fresh virtual environment")
    venv = tmp_path / "venv"
    env = {**os.environ, "VIRTUAL_ENV": str(venv), "COLUMNS": "200", "MPLBACKEND": "Agg"}
    env.pop("PYTHONPATH", None)
    for key in [k for k in env if k.startswith("UV_")]:  # nox's uv backend points uv at its own venv
        env.pop(key)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=600)

    ebmkit = str(venv / "bin" / "ebmkit")
    assert run(uv, "venv", "-q", str(venv)).returncode == 0
    p = run(uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(ROOT / "packages/ebmkit-core"))
    assert p.returncode == 0, p.stderr
    p = run(ebmkit, "list", "samplers")
    assert p.returncode == 0 and "underdamped" not in p.stdout, p.stdout

    p = run(uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(ROOT / "plugins/ebmkit-underdamped"))
    assert p.returncode == 0, p.stderr
    p = run(ebmkit, "list", "samplers")
    assert p.returncode == 0 and "underdamped" in p.stdout and "ebmkit-underdamped" in p.stdout
    p = run(ebmkit, "run", "--preset", "quick", "--sampler", "underdamped",
            "--set", "sampler.step_size=0.05", "--set", "train.batch_size=8",
            "--set", "data.limit=64", "-n", "2", "--no-progress", "--out", str(tmp_path / "run"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "sampler=underdamped" in p.stdout and (tmp_path / "run" / "model.safetensors").is_file()

    p = run(uv, "pip", "uninstall", "-q", "ebmkit-underdamped")
    assert p.returncode == 0, p.stderr
    p = run(ebmkit, "run", "--preset", "quick", "--sampler", "underdamped", "--dry-run")
    assert p.returncode != 0
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "unknown sampler 'underdamped'" in lines[0], p.stderr
    assert "Available: " in lines[0] and "langevin" in lines[0]
