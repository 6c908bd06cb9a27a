"""`ebmkit plugin new`: for every kind, the generated package is complete, its component registers
and builds, and its own tests pass as generated."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import ebmkit
import ebmkit_testing
import pytest
import torch
from ebmkit import scaffold
from ebmkit.callbacks import Callback
from ebmkit.interfaces import KINDS as INTERFACES
from ebmkit.params import build
from ebmkit_testing.samplers import DiagonalGaussianEnergy

ROOT = Path(__file__).resolve().parents[3]
KINDS = ["callback", "dataset", "energy", "evaluator", "initializer", "objective", "sampler"]
#: The registry kind of each scaffold kind's component (a callback plugin registers its options).
REGISTERS = {**{k: k for k in KINDS}, "callback": "options"}


def test_every_kind_has_a_template():
    assert scaffold.kinds() == KINDS
    assert set(scaffold.LIST_WORD) == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_writes_a_complete_package(ebmkit_cli, tmp_path, kind):
    ebmkit_cli.use()  # `plugin new` is a core command: no plugin needed
    dest = tmp_path / "pkg"
    res = ebmkit_cli("plugin", "new", f"my-{kind}", "--kind", kind, "--dir", dest)
    assert res.exit_code == 0, res.output
    assert 'pip install -e ".[test]"' in res.stdout
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == ["README.md", "pyproject.toml", f"src/ebmkit_my_{kind}/__init__.py",
                     f"tests/test_ebmkit_my_{kind}.py"]
    meta = tomllib.loads((dest / "pyproject.toml").read_text())
    assert meta["project"]["name"] == f"ebmkit-my-{kind}"
    assert meta["project"]["description"] == f"The 'my-{kind}' {kind} for ebmkit."
    assert meta["project"]["entry-points"]["ebmkit"] == {f"my-{kind}": f"ebmkit_my_{kind}"}
    assert "$" not in "".join(p.read_text() for p in dest.rglob("*") if p.is_file())
    for py in dest.rglob("*.py"):
        compile(py.read_text(), str(py), "exec")


@pytest.fixture
def generated(tmp_path, monkeypatch):
    """``generated(kind)`` -> the generated plugin module, imported from ``tmp_path/src``."""
    names = []

    def make(kind: str, name: str | None = None):
        name = name or f"gen-{kind}"
        pkg = tmp_path / name
        scaffold.render(name, kind, pkg)
        monkeypatch.syspath_prepend(str(pkg / "src"))
        module = scaffold.names_for(name)["module"]
        names.append(module)
        return importlib.import_module(module)

    yield make
    for module in names:
        sys.modules.pop(module, None)


@pytest.mark.parametrize("kind", KINDS)
def test_generated_component_registers_and_builds_with_defaults(generated, kind):
    """The generated hook registers one class of the kind; built with its defaults, it is an
    instance of the kind's interface."""
    mod = generated(kind)
    seen = []
    mod.ebmkit_register(seen.append)
    assert len(seen) == 1
    cls = seen[0]
    reg = ebmkit.build_registry(ebmkit.get_plugin_manager(entry_points=False, plugins=[mod]))
    assert not reg.load_errors
    kind_of = REGISTERS[kind]
    assert reg.names(kind_of) == [f"gen-{kind}"] and reg.get(kind_of, f"gen-{kind}") is cls
    if kind == "callback":
        return  # options are not built as components: see the test below
    args = ((2,),) if kind in ("energy", "initializer") else ()
    obj = reg.create(kind, f"gen-{kind}", None, *args)
    assert isinstance(obj, INTERFACES[kind]) and isinstance(obj, cls)


def test_generated_callback_is_switched_on_by_its_options(generated):
    """A callback plugin declares [plugins.NAME]; its hook adds the callback only when the run's
    options switch it on, and the callback's state is JSON-able."""
    mod = generated("callback")
    reg = ebmkit.build_registry(ebmkit.get_plugin_manager(plugins=[mod]))  # + built-ins
    off = ebmkit.RunConfig.from_dict({}, registry=reg)
    assert off.plugin("gen-callback").enabled is False
    assert mod.ebmkit_callbacks(off, None) is None
    on = ebmkit.RunConfig.from_dict({"plugins": {"gen-callback": {"enabled": True}}}, registry=reg)
    assert on.to_dict()["plugins"]["gen-callback"]["enabled"] is True
    cb = mod.ebmkit_callbacks(on, None)
    assert isinstance(cb, Callback)
    json.dumps(cb.state_dict())
    assert "every" in mod.GenCallbackOptions.resumable


def test_generated_initializer_is_a_buffer_that_round_trips(generated):
    """The initializer skeleton is the documented buffered initializer: capacity, a standalone
    prior while empty, a tensors-only state that a fresh instance restores."""
    mod = generated("initializer")
    cls = mod.GenInitializer
    init = cls(build(cls.Config, {"buffer_size": 16}, where="init"), (2,))
    assert init.capacity == 16
    assert isinstance(init.standalone(), ebmkit.PriorInitializer)
    g = torch.Generator().manual_seed(0)
    init.setup(generator=g)
    init.update(init.sample(8, generator=g) + 1)
    other = cls(build(cls.Config, {"buffer_size": 16}, where="init"), (2,))
    other.load_state_dict({k: v.clone() for k, v in init.state_dict().items()})
    assert other.standalone() is other
    a = init.sample(8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, other.sample(8, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match="buffer"):
        cls(build(cls.Config, {"buffer_size": 8}, where="init"), (2,)).load_state_dict(
            init.state_dict())


@pytest.mark.parametrize(("args", "message"), [
    (["My Sampler"], "use lowercase letters and digits"),
    (["ok", "--kind", "sampelr"], "unknown kind 'sampelr' (did you mean 'sampler'?); available: "
                                  "callback, dataset, energy, evaluator, initializer, objective, sampler"),
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


@pytest.mark.parametrize("kinds", [
    pytest.param(["callback", "dataset", "energy", "evaluator", "initializer", "sampler"], id="kits"),
    pytest.param(["objective"], id="objective", marks=pytest.mark.skipif(
        not hasattr(ebmkit_testing, "ObjectiveConformance"),
        reason="ebmkit_testing.ObjectiveConformance is not there yet")),
])
def test_generated_tests_pass_in_process(tmp_path, kinds):
    """The generated suites pass as written, all kinds in one pytest run (the entry-point check
    needs an install: slow test)."""
    for kind in kinds:
        scaffold.render(f"quick-{kind}", kind, tmp_path / kind)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(tmp_path / k / "src") for k in kinds)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-k", "not advertised_by_entry_point", *[str(tmp_path / k / "tests") for k in kinds]],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
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
@pytest.mark.parametrize(("kind", "shows"), [("sampler", ("list", "samplers")),
                                             ("callback", ("describe", "options"))])
def test_scaffolded_package_installed_from_outside_the_repo(tmp_path, kind, shows):
    """Fresh venv (only ebmkit-core + ebmkit-testing from this checkout), scaffold into a
    directory outside the repository, pip-install it, run its tests (the entry-point checks
    included), see it in `ebmkit list` (a callback plugin: its options in `ebmkit describe`)."""
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
    name = f"outside-{kind}"
    p = run(str(bin_ / "ebmkit"), "plugin", "new", name, "--kind", kind, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    pkg = tmp_path / f"ebmkit-{name}"
    p = run(uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), str(pkg))
    assert p.returncode == 0, p.stderr
    p = run(str(bin_ / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=pkg)
    assert p.returncode == 0 and "failed" not in p.stdout, p.stdout[-3000:] + p.stderr[-2000:]
    p = run(str(bin_ / "ebmkit"), *shows, *([name] if shows[0] == "describe" else []), cwd=tmp_path)
    assert p.returncode == 0 and name in p.stdout and f"ebmkit-{name}" in p.stdout, p.stdout
