"""Acceptance: in a fresh virtual environment holding only ebmkit-core, installing this plugin
adds the evaluators `fid`, `kid`, `isc`, `prc` and the `ebmkit fid` commands; `ebmkit eval -e
fid` works end to end on a `quick` checkpoint (with the weight-free test extractor: no network);
uninstalling it makes `-e fid` a one-line error. (slow: builds a venv)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_install_eval_uninstall_in_a_fresh_venv(tmp_path):
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("needs uv to build a fresh virtual environment")
    venv = tmp_path / "venv"
    env = {**os.environ, "VIRTUAL_ENV": str(venv), "COLUMNS": "200", "MPLBACKEND": "Agg",
           "EBMKIT_FID_CACHE": str(tmp_path / "cache"), "TORCH_HOME": str(tmp_path / "torch")}
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
    p = run(ebmkit, "run", "--preset", "quick", "--set", "train.batch_size=4",
            "--set", "sampler.steps=2", "--set", "data.limit=64", "-n", "1", "--no-progress",
            "--out", str(tmp_path / "run"))
    assert p.returncode == 0, p.stdout + p.stderr
    p = run(ebmkit, "list", "evaluators")
    assert p.returncode == 0 and " fid " not in p.stdout and "transition" in p.stdout, p.stdout

    p = run(uv, "pip", "install", "-q", "--python", py, str(ROOT / "plugins/ebmkit-fid"))
    assert p.returncode == 0, p.stderr
    p = run(ebmkit, "list", "evaluators")
    assert p.returncode == 0 and all(f" {e} " in p.stdout for e in ("fid", "kid", "isc", "prc"))
    assert "ebmkit-fid" in p.stdout
    p = run(ebmkit, "eval", str(tmp_path / "run" / "model.safetensors"), "-e", "fid", "--n", "32",
            "--set", "fid.feature_extractor=ebmkit-pixels", "-o", str(tmp_path / "eval"))
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads((tmp_path / "eval" / "fid_metrics.json").read_text())
    assert doc["fid"] > 0 and doc["setup"]["n_samples"] == 32
    p = run(ebmkit, "fid", "weights")  # offline, nothing in the caches: one line, no download
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode != 0 and len(lines) == 1 and "Inception weights not found" in lines[0]

    p = run(uv, "pip", "uninstall", "-q", "--python", py, "ebmkit-fid")
    assert p.returncode == 0, p.stderr
    p = run(ebmkit, "eval", str(tmp_path / "run" / "model.safetensors"), "-e", "fid")
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode != 0 and len(lines) == 1 and "unknown evaluator 'fid'" in lines[0], p.stderr
