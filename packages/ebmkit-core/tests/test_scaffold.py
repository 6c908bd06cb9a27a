"""`ebmkit plugin new`: the generated package is complete and its own tests pass as generated."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from ebmkit import scaffold
from ebmkit.params import build
from ebmkit_testing.samplers import DiagonalGaussianEnergy

ROOT = Path(__file__).resolve().parents[3]


def test_writes_a_complete_package(ebmkit_cli, tmp_path):
    ebmkit_cli.use()  # `plugin new` is a core command: no plugin needed
    dest = tmp_path / "pkg"
    res = ebmkit_cli("plugin", "new", "my-sampler", "--kind", "sampler", "--dir", dest)
    assert res.exit_code == 0, res.output
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == ["README.md", "pyproject.toml", "src/ebmkit_my_sampler/__init__.py",
                     "tests/test_ebmkit_my_sampler.py"]
    meta = tomllib.loads((dest / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "ebmkit-my-sampler"
    assert meta["project"]["entry-points"]["ebmkit"] == {"my-sampler": "ebmkit_my_sampler"}
    assert "$" not in "".join(p.read_text() for p in dest.rglob("*") if p.is_file())
    for py in dest.rglob("*.py"):
        compile(py.read_text(), str(py), "exec")


@pytest.mark.parametrize(("args", "message"), [
    (["My Sampler"], "use lowercase letters and digits"),
    (["ok", "--kind", "sampelr"], "unknown kind 'sampelr'; available: sampler"),
])
def test_bad_arguments_are_one_line_errors(ebmkit_cli, tmp_path, args, message):
    ebmkit_cli.use()  # `plugin new` is a core command: no plugin needed
    res = ebmkit_cli("plugin", "new", *args, "--dir", tmp_path / "x")
    assert res.exit_code != 0
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_refuses_a_non_empty_directory(ebmkit_cli, tmp_path):
    ebmkit_cli.use()  # `plugin new` is a core command: no plugin needed
    (tmp_path / "keep.txt").write_text("mine")
    res = ebmkit_cli("plugin", "new", "s", "--dir", tmp_path)
    assert res.exit_code != 0 and "not empty" in res.stderr
    assert ebmkit_cli("plugin", "new", "s", "--dir", tmp_path, "--force").exit_code == 0
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_generated_tests_pass_in_process(tmp_path):
    """The generated suite passes as written (the entry-point check needs an install: slow test)."""
    scaffold.render("quick-check", "sampler", tmp_path / "pkg")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "pkg" / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-k", "not advertised_by_entry_point"],
        cwd=tmp_path / "pkg", env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


def test_generated_sampler_declares_exact_and_is_tested_where_it_rejects(tmp_path, monkeypatch):
    """The skeleton says `exact = True` (it has a Metropolis test), and its generated test runs
    the kit at a step size where that test rejects: acceptance 0.5-0.8 on the kit's Gaussian
    target at T = 1 (near 1, a wrong reverse-proposal term or a shared accept decision passes)."""
    pkg = tmp_path / "pkg"
    scaffold.render("accept-check", "sampler", pkg)
    src = (pkg / "src" / "ebmkit_accept_check" / "__init__.py").read_text()
    assert re.search(r"^    exact = True\b", src, re.M), "the generated class states `exact`"
    monkeypatch.syspath_prepend(str(pkg / "src"))
    try:
        mod = importlib.import_module("ebmkit_accept_check")
        spec = importlib.util.spec_from_file_location(
            "generated_test_accept_check", pkg / "tests" / "test_ebmkit_accept_check.py")
        tests = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tests)
        cls = mod.AcceptCheck
        assert cls.exact is True and tests.TestAcceptCheck.component is cls
        sampler = cls(build(cls.Config, dict(tests.TestAcceptCheck.config), where="sampler"))
        var, mean = torch.tensor([0.25, 2.0]), torch.tensor([0.5, -1.0])
        e = DiagonalGaussianEnergy(var, mean)
        x0 = mean + torch.randn(4000, 2, generator=torch.Generator().manual_seed(0)) * var.sqrt()
        r = sampler.run(e, x0, 20, generator=torch.Generator().manual_seed(1))
        assert 0.5 <= float(r.accept_rate) <= 0.8, float(r.accept_rate)
    finally:
        sys.modules.pop("ebmkit_accept_check", None)


def _uv() -> str:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("needs uv to build a fresh virtual environment")
    return uv


@pytest.mark.slow
def test_scaffolded_package_installed_from_outside_the_repo(tmp_path):
    """Fresh venv (only ebmkit-core + ebmkit-testing from this checkout), scaffold into a
    directory outside the repository, pip-install it, run its tests, see it in `ebmkit list`."""
    uv = _uv()
    assert ROOT not in tmp_path.parents
    venv = tmp_path / "venv"
    env = {**os.environ, "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    for key in [k for k in env if k.startswith("UV_")]:  # nox's uv backend points uv at its own venv
        env.pop(key)
    run = lambda *a, **k: subprocess.run(a, env=env, capture_output=True, text=True,  # noqa: E731
                                         timeout=600, **k)
    assert run(uv, "venv", "-q", str(venv)).returncode == 0
    p = run(uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(ROOT / "packages/ebmkit-core"),
            str(ROOT / "packages/ebmkit-testing"))
    assert p.returncode == 0, p.stderr
    bin_ = venv / "bin"
    p = run(str(bin_ / "ebmkit"), "plugin", "new", "outside-sampler", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    pkg = tmp_path / "ebmkit-outside-sampler"
    p = run(uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(pkg))
    assert p.returncode == 0, p.stderr
    p = run(str(bin_ / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=pkg)
    assert p.returncode == 0 and "failed" not in p.stdout, p.stdout[-3000:] + p.stderr[-2000:]
    p = run(str(bin_ / "ebmkit"), "list", "samplers", cwd=tmp_path)
    assert p.returncode == 0 and "outside-sampler" in p.stdout and "ebmkit-outside-sampler" in p.stdout, p.stdout
