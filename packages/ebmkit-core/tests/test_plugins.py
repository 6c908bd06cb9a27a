"""Registry and plugin behaviour: duplicate names, unknown names, broken plugins, blocking,
tracing, and the hooks reference (every hookspec documented with its exact signature and
tested here as ``test_hook_<name>``)."""

from __future__ import annotations

import inspect
import re
import sys
import textwrap
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest
from ebmkit import ConfigError, PluginError, Sampler, UnknownComponentError, hookimpl, hookspecs
from ebmkit import plugins as P
from ebmkit.builtin import samplers, scaffold

DOCS = Path(__file__).resolve().parents[3] / "docs" / "plugins" / "hooks.md"


def hookspec_names() -> list[str]:
    return sorted(n for n, f in vars(hookspecs).items()
                  if n.startswith("ebmkit_") and hasattr(f, "ebmkit_spec"))


def make_sampler(name: str) -> type[Sampler]:
    return type(name.title(), (samplers.Langevin,), {"name": name})


class Plugin:
    """A hand-made plugin object registering the given classes."""

    def __init__(self, *classes):
        self.classes = classes

    @hookimpl
    def ebmkit_register(self, register):
        for c in self.classes:
            register(c)


# --- fake entry points -----------------------------------------------------------------------
@dataclass
class FakeEntryPoint:
    name: str
    value: str
    dist_name: str = "ebmkit-fake"
    group: str = "ebmkit"

    @property
    def dist(self):
        return SimpleNamespace(name=self.dist_name, version="9.9")

    def load(self):
        import importlib

        return importlib.import_module(self.value)


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    """Installs modules in ``tmp_path`` and advertises them as ``ebmkit`` entry points next to the
    real ones: ``fake_plugins({"name": "module source"})``."""
    real = list(metadata.entry_points(group=P.GROUP))

    def install(sources: dict[str, str], dist: str = "ebmkit-fake"):
        eps = []
        for name, src in sources.items():
            mod = f"_ebmkit_fake_{name}"
            (tmp_path / f"{mod}.py").write_text(textwrap.dedent(src))
            sys.modules.pop(mod, None)
            eps.append(FakeEntryPoint(name, mod, dist))
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setattr(P.metadata, "entry_points", lambda group=None: [*real, *eps])

    yield install
    for m in [m for m in sys.modules if m.startswith("_ebmkit_fake_")]:
        sys.modules.pop(m)


BROKEN = """
import ebmkit
raise RuntimeError("boom: this plugin is broken")
"""

THIRD_PARTY = """
from ebmkit import hookimpl
from ebmkit.builtin.samplers import Langevin

class Mine(Langevin):
    name = "mine"

@hookimpl
def ebmkit_register(register):
    register(Mine)
"""


# --- duplicate and unknown names --------------------------------------------------------------
def test_duplicate_name_is_an_error_naming_both_plugins():
    pm = P.get_plugin_manager(entry_points=False, plugins=[samplers, Plugin(make_sampler("langevin"))])
    with pytest.raises(PluginError) as err:
        P.build_registry(pm)
    msg = str(err.value)
    assert "sampler 'langevin' is provided by two plugins" in msg
    assert pm.get_name(samplers) in msg and "EBMKIT_BLOCK_PLUGINS" in msg
    assert len(re.findall(r"'[^']+' \(local\)", msg)) == 2, msg


def test_registering_the_same_class_twice_is_harmless():
    cls = make_sampler("twice")
    reg = P.build_registry(P.get_plugin_manager(entry_points=False, plugins=[Plugin(cls, cls)]))
    assert reg.names("sampler") == ["twice"]


def test_unknown_name_suggests_and_lists():
    reg = P.build_registry(P.get_plugin_manager(entry_points=False, plugins=[samplers]))
    with pytest.raises(UnknownComponentError) as err:
        reg.get("sampler", "langevn")
    msg = str(err.value)
    assert "Did you mean 'langevin'?" in msg
    assert "Available: " in msg and "langevin" in msg.split("Available: ")[1]
    assert "\n" not in msg and not msg.startswith("'")  # one line, no KeyError quoting
    with pytest.raises(UnknownComponentError, match="unknown kind 'smplers'"):
        reg.names("smplers")


def test_unknown_sampler_on_the_command_line_is_one_line(ebmkit_cli):
    ebmkit_cli.use(samplers)
    res = ebmkit_cli("run", "--sampler", "langevn", "--dry-run")
    assert res.exit_code != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Did you mean 'langevin'?" in lines[0], res.stderr


def test_registering_a_non_component_names_the_plugin():
    class Bad:
        @hookimpl
        def ebmkit_register(self, register):
            register(object)

    pm = P.get_plugin_manager(entry_points=False, plugins=[Bad()])
    with pytest.raises(PluginError, match="expected a subclass of Energy, Sampler"):
        P.build_registry(pm)


def test_misspelt_hook_fails_loudly():
    class Typo:
        @hookimpl
        def ebmkit_registr(self, register):
            pass

    with pytest.raises(Exception, match="ebmkit_registr"):
        P.get_plugin_manager(entry_points=False, plugins=[Typo()])


# --- broken plugins ---------------------------------------------------------------------------
def test_plugin_raising_on_import_is_recorded_not_raised(fake_plugins):
    fake_plugins({"broken": BROKEN, "mine": THIRD_PARTY})
    pm = P.get_plugin_manager(block=())
    reg = P.build_registry(pm)
    assert "mine" in reg.names("sampler") and "langevin" in reg.names("sampler")
    assert set(reg.load_errors) == {"broken"}
    assert "RuntimeError: boom: this plugin is broken" in reg.load_errors["broken"]
    info = {i.name: i for i in P.plugin_infos(pm)}
    assert info["broken"].dist == "ebmkit-fake" and info["broken"].version == "9.9"
    assert info["mine"].hooks == ("ebmkit_register",) and info["mine"].error is None


def test_broken_plugin_does_not_stop_list_and_shows_in_plugins(fake_plugins, ebmkit_cli):
    fake_plugins({"broken": BROKEN})
    ebmkit_cli.fresh()
    res = ebmkit_cli("list", "samplers")
    assert res.exit_code == 0, res.output
    assert "langevin" in res.stdout
    assert "1 plugin(s) failed to load; see `ebmkit plugins`" in res.stderr
    res = ebmkit_cli("plugins")
    assert res.exit_code == 0, res.output
    row = next(ln for ln in res.stdout.splitlines() if "broken" in ln)
    assert "ebmkit-fake" in row and "9.9" in row and "RuntimeError" in row, res.stdout


# --- EBMKIT_BLOCK_PLUGINS ---------------------------------------------------------------------
@pytest.mark.parametrize("blocked", ["mine", "ebmkit-fake", " other , mine "])
def test_block_by_entry_point_or_distribution(fake_plugins, monkeypatch, blocked):
    fake_plugins({"mine": THIRD_PARTY})
    monkeypatch.setenv("EBMKIT_BLOCK_PLUGINS", blocked)
    pm = P.get_plugin_manager()
    reg = P.build_registry(pm)
    assert "mine" not in reg.names("sampler")
    info = {i.name: i for i in P.plugin_infos(pm)}
    assert info["mine"].blocked and info["mine"].hooks == ()
    monkeypatch.delenv("EBMKIT_BLOCK_PLUGINS")
    assert "mine" in P.build_registry(P.get_plugin_manager()).names("sampler")


def test_block_resolves_a_name_clash(fake_plugins, monkeypatch):
    fake_plugins({"mine": THIRD_PARTY, "clash": THIRD_PARTY.replace("Mine", "Other")})
    with pytest.raises(PluginError, match="sampler 'mine' is provided by two plugins"):
        P.build_registry(P.get_plugin_manager(block=()))
    monkeypatch.setenv("EBMKIT_BLOCK_PLUGINS", "clash")
    assert "mine" in P.build_registry(P.get_plugin_manager()).names("sampler")


def test_core_plugins_cannot_be_blocked(monkeypatch):
    monkeypatch.setenv("EBMKIT_BLOCK_PLUGINS", "core_samplers,ebmkit-core")
    assert "langevin" in P.build_registry(P.get_plugin_manager()).names("sampler")


def test_blocked_plugin_shown_in_plugins_command(fake_plugins, monkeypatch, ebmkit_cli):
    fake_plugins({"mine": THIRD_PARTY})
    monkeypatch.setenv("EBMKIT_BLOCK_PLUGINS", "mine")
    ebmkit_cli.fresh()
    res = ebmkit_cli("plugins")
    row = next(ln for ln in res.stdout.splitlines() if ln.split("│")[1:2] and "mine" in ln)
    assert "blocked" in row, res.stdout


# --- EBMKIT_TRACE_HOOKS -----------------------------------------------------------------------
def test_trace_hooks(monkeypatch, capsys):
    monkeypatch.setenv("EBMKIT_TRACE_HOOKS", "1")
    P.build_registry(P.get_plugin_manager(entry_points=False, plugins=[samplers]))
    err = capsys.readouterr().err
    name = "ebmkit.builtin.samplers"
    assert f"[ebmkit hooks] ebmkit_register -> {name}" in err
    assert "[ebmkit hooks]   register sampler 'langevin'" in err
    assert re.search(rf"ebmkit_register <- {re.escape(name)} \(\d+\.\d ms\)", err)
    monkeypatch.setenv("EBMKIT_TRACE_HOOKS", "0")
    P.build_registry(P.get_plugin_manager(entry_points=False, plugins=[samplers]))
    assert capsys.readouterr().err == ""


# --- one test per hook ------------------------------------------------------------------------
def test_hook_ebmkit_register():
    """A plugin registers each kind, with a subset of the spec's arguments."""
    from ebmkit import Preset
    from ebmkit_testing import GaussianEnergy, GaussianPoints

    preset = Preset("mine", "A preset.", Path(__file__))
    reg = P.build_registry(P.get_plugin_manager(entry_points=False, plugins=[
        Plugin(GaussianEnergy, GaussianPoints, make_sampler("s1"), preset)]))
    assert reg.names("energy") == ["test-gaussian"] and reg.names("dataset") == ["test-gaussian-points"]
    assert reg.names("sampler") == ["s1"] and reg.get("preset", "mine") is preset
    entry = reg.entry("sampler", "s1")
    assert entry.plugin and entry.summary


def test_hook_ebmkit_cli(ebmkit_cli):
    """A plugin adds a command; the CLI survives a plugin whose hook raises."""
    import typer

    class Cmd:
        @hookimpl
        def ebmkit_cli(self, app):
            @app.command("hello")
            def hello(name: str = "world"):
                typer.echo(f"hello {name}")

    class Broken:
        @hookimpl
        def ebmkit_cli(self, app):
            raise RuntimeError("no commands today")

    class Unbuildable:  # typer only fails when it builds the command (annotation it cannot read)
        @hookimpl
        def ebmkit_cli(self, app):
            @app.command("bad")
            def bad(x: NoSuchType = 1):  # noqa: F821
                pass

    ebmkit_cli.use(Cmd(), Broken(), Unbuildable(), samplers)
    res = ebmkit_cli("hello", "--name", "ebm")
    assert res.exit_code == 0 and "hello ebm" in res.stdout, res.output
    assert "failed to add commands: no commands today" in res.stderr
    assert "failed to add commands: name 'NoSuchType' is not defined" in res.stderr
    ebmkit_cli.use(samplers)  # another plugin set: the command is gone again
    assert ebmkit_cli("hello").exit_code != 0


def test_every_hook_is_tested():
    missing = [n for n in hookspec_names() if f"test_hook_{n}" not in globals()]
    assert not missing, f"add a test_hook_<name> test for: {', '.join(missing)}"


def test_every_hook_is_documented_with_its_signature():
    text = DOCS.read_text()
    for name in hookspec_names():
        fn = getattr(hookspecs, name)
        sig = f"{name}{inspect.signature(fn)}".replace("'", "")
        assert f"### `{name}`" in text, f"docs/plugins/hooks.md: add a '### `{name}`' section"
        assert sig in text, f"docs/plugins/hooks.md must show the exact signature `{sig}`"
        assert all(f"`{a}`" in text for a in inspect.signature(fn).parameters), name


def test_scaffold_entry_point_is_a_cli_plugin():
    pm = P.get_plugin_manager(entry_points=False, plugins=[scaffold])
    assert [i.plugin_name for i in pm.hook.ebmkit_cli.get_hookimpls()] == [pm.get_name(scaffold)]
    with pytest.raises(ConfigError):
        scaffold.names_for("Bad Name")
