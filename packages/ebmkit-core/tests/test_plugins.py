"""Registry and plugin behaviour: duplicate names, unknown names, broken plugins (isolated and
reported by name), blocking, tracing, and the hooks reference (every hookspec documented with its exact signature and
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
from ebmkit.builtin import samplers

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


@dataclass
class ExitingEntryPoint(FakeEntryPoint):
    """An entry point whose module calls ``sys.exit`` when imported."""

    def load(self):
        sys.exit("plugin gave up at import")


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    """Installs modules in ``tmp_path`` and advertises them as ``ebmkit`` entry points next to the
    real ones: ``fake_plugins({"name": "module source"})``."""
    real = list(metadata.entry_points(group=P.GROUP))

    def install(sources: dict[str, str], dist: str = "ebmkit-fake", extra: tuple = ()):
        eps = [*extra]
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

EXITING = """
import sys
sys.exit(3)
"""

RAISES_ON_REGISTER = """
from ebmkit import hookimpl
from ebmkit.builtin.samplers import Langevin

class Half(Langevin):
    name = "half"

@hookimpl
def ebmkit_register(register):
    register(Half)  # discarded: the hook fails below
    raise RuntimeError("register exploded")
"""

MISSPELT = """
from ebmkit import hookimpl
from ebmkit.builtin.samplers import Langevin

class Typo(Langevin):
    name = "typo"

@hookimpl
def ebmkit_regster(register):
    register(Typo)
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


def test_registering_a_non_component_is_reported_under_the_plugin_name():
    class Bad:
        @hookimpl
        def ebmkit_register(self, register):
            register(make_sampler("bad-half"))  # discarded with the rest of this plugin
            register(object)

    bad = Bad()
    pm = P.get_plugin_manager(entry_points=False, plugins=[samplers, bad])
    reg = P.build_registry(pm)
    name = pm.get_name(bad)
    assert "PluginError" in reg.load_errors[name]
    assert "expected a subclass of Energy, Sampler" in reg.load_errors[name]
    assert "test_plugins.py:" in reg.load_errors[name]  # the line in the plugin that failed
    assert "bad-half" not in reg.names("sampler") and "langevin" in reg.names("sampler")


def test_misspelt_hook_is_reported_and_the_plugin_left_out():
    class Typo:
        @hookimpl
        def ebmkit_regster(self, register):
            register(make_sampler("typo"))

        @hookimpl
        def ebmkit_cli(self, app):  # a valid hook of the same plugin: left out as well
            pass

    typo = Typo()
    pm = P.get_plugin_manager(entry_points=False, plugins=[samplers, typo])
    info = {i.name: i for i in P.plugin_infos(pm)}[pm.get_canonical_name(typo)]
    assert info.error == "unknown hook 'ebmkit_regster' (did you mean 'ebmkit_register'?)"
    assert info.hooks == () and not pm.is_registered(typo)
    assert pm.hook.ebmkit_cli.get_hookimpls() == []
    reg = P.build_registry(pm)
    assert "typo" not in reg.names("sampler") and "langevin" in reg.names("sampler")
    assert reg.load_errors == {info.name: info.error}


def test_unknown_hook_without_a_close_match_lists_the_known_ones():
    class Odd:
        @hookimpl
        def on_train_start(self):
            pass

    pm = P.get_plugin_manager(entry_points=False, plugins=[Odd()])
    (info,) = P.plugin_infos(pm)
    assert info.error == ("unknown hook 'on_train_start' (known hooks: "
                          + ", ".join(hookspec_names()) + ")")


def test_optional_unknown_hook_is_accepted():
    class Optional:
        @hookimpl(optionalhook=True)
        def ebmkit_future_hook(self):
            pass

    pm = P.get_plugin_manager(entry_points=False, plugins=[Optional()])
    (info,) = P.plugin_infos(pm)
    assert info.error is None and info.hooks == ("ebmkit_future_hook",)


def test_hook_with_arguments_not_in_the_spec_is_reported():
    class WrongArgs:
        @hookimpl
        def ebmkit_register(self, register, registry):
            pass

    obj = WrongArgs()
    pm = P.get_plugin_manager(entry_points=False, plugins=[samplers, obj])
    (info,) = [i for i in P.plugin_infos(pm) if i.error]
    assert "PluginValidationError" in info.error and "registry" in info.error
    assert not pm.is_registered(obj)
    assert "langevin" in P.build_registry(pm).names("sampler")


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


def test_register_hook_raising_is_isolated(fake_plugins):
    fake_plugins({"halfway": RAISES_ON_REGISTER, "mine": THIRD_PARTY})
    pm = P.get_plugin_manager(block=())
    reg = P.build_registry(pm)
    assert "half" not in reg.names("sampler")  # registered before the failure: discarded
    assert "mine" in reg.names("sampler") and "langevin" in reg.names("sampler")
    assert set(reg.load_errors) == {"halfway"}
    err = reg.load_errors["halfway"]
    assert err.startswith("RuntimeError: register exploded (_ebmkit_fake_halfway.py:"), err
    info = {i.name: i for i in P.plugin_infos(pm)}
    assert info["halfway"].error == err and info["halfway"].hooks == ("ebmkit_register",)
    assert info["halfway"].dist == "ebmkit-fake" and info["mine"].error is None


def test_register_hook_calling_sys_exit_is_isolated():
    class Quitter:
        @hookimpl
        def ebmkit_register(self, register):
            register(make_sampler("quitter"))
            sys.exit(2)

    quitter = Quitter()
    pm = P.get_plugin_manager(entry_points=False, plugins=[samplers, quitter])
    reg = P.build_registry(pm)
    assert "quitter" not in reg.names("sampler") and "langevin" in reg.names("sampler")
    assert reg.load_errors[pm.get_name(quitter)].startswith("SystemExit: 2")


def test_misspelt_hook_in_an_installed_plugin(fake_plugins):
    fake_plugins({"typo": MISSPELT, "mine": THIRD_PARTY})
    pm = P.get_plugin_manager(block=())
    info = {i.name: i for i in P.plugin_infos(pm)}
    assert info["typo"].error == "unknown hook 'ebmkit_regster' (did you mean 'ebmkit_register'?)"
    assert info["typo"].dist == "ebmkit-fake" and info["typo"].hooks == ()
    reg = P.build_registry(pm)
    assert "typo" not in reg.names("sampler") and "mine" in reg.names("sampler")
    assert "langevin" in reg.names("sampler") and set(reg.load_errors) == {"typo"}


@pytest.mark.parametrize("how", ["module", "entry point"])
def test_plugin_calling_sys_exit_at_import_is_recorded(fake_plugins, how):
    if how == "module":  # the module body calls sys.exit(3)
        fake_plugins({"quits": EXITING, "mine": THIRD_PARTY})
    else:  # the entry point's load() raises SystemExit itself
        fake_plugins({"mine": THIRD_PARTY}, extra=(ExitingEntryPoint("quits", "-"),))
    pm = P.get_plugin_manager(block=())
    reg = P.build_registry(pm)
    assert "mine" in reg.names("sampler") and "langevin" in reg.names("sampler")
    assert set(reg.load_errors) == {"quits"}
    expected = "SystemExit: 3" if how == "module" else "SystemExit: plugin gave up at import"
    assert reg.load_errors["quits"].startswith(expected), reg.load_errors
    info = {i.name: i for i in P.plugin_infos(pm)}
    assert info["quits"].error == reg.load_errors["quits"] and info["quits"].hooks == ()


def test_keyboard_interrupt_at_import_is_not_swallowed(fake_plugins):
    fake_plugins({"ctrl_c": "raise KeyboardInterrupt\n"})
    with pytest.raises(KeyboardInterrupt):
        P.get_plugin_manager(block=())


BROKEN_SET = {"broken": BROKEN, "quits": EXITING, "typo": MISSPELT, "halfway": RAISES_ON_REGISTER,
              "mine": THIRD_PARTY}


def test_broken_plugins_do_not_stop_the_cli(fake_plugins, ebmkit_cli):
    """Every kind of broken plugin at once: `list` and `plugins` still work, each is named."""
    fake_plugins(BROKEN_SET)
    ebmkit_cli.fresh()
    res = ebmkit_cli("list", "samplers")
    assert res.exit_code == 0, res.output
    names = {ln.split("│")[1].strip() for ln in res.stdout.splitlines() if ln.count("│") > 2}
    assert {"langevin", "mine"} <= names and not {"half", "typo"} & names, res.stdout
    line = res.stderr.strip()
    assert line.startswith("4 plugin(s) failed to load: broken (RuntimeError: boom") and "\n" not in line
    assert "halfway (RuntimeError: register exploded" in line and "quits (SystemExit: 3" in line
    assert "typo (unknown hook 'ebmkit_regster'" in line and line.endswith("see `ebmkit plugins`")
    res = ebmkit_cli("plugins")
    assert res.exit_code == 0, res.output
    rows = {ln.split("│")[1].strip(): ln for ln in res.stdout.splitlines() if ln.count("│") > 2}
    assert "RuntimeError: boom" in rows["broken"]
    assert "SystemExit: 3" in rows["quits"]
    assert "unknown hook 'ebmkit_regster'" in rows["typo"]
    assert "RuntimeError: register exploded" in rows["halfway"]
    assert "error" not in rows["mine"] and "ok" in rows["mine"]
    assert ebmkit_cli("describe", "sampler", "langevin").exit_code == 0


def test_broken_plugin_does_not_stop_list_and_shows_in_plugins(fake_plugins, ebmkit_cli):
    fake_plugins({"broken": BROKEN})
    ebmkit_cli.fresh()
    res = ebmkit_cli("list", "samplers")
    assert res.exit_code == 0, res.output
    assert "langevin" in res.stdout
    assert "1 plugin(s) failed to load: broken (RuntimeError: boom" in res.stderr
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


def test_hook_ebmkit_callbacks():
    """Each plugin's callbacks, in registration order; None / one / a list; a raising plugin is
    one PluginError line naming it (the run must not start without callbacks the user's options
    asked for), the original as its cause; an ebmkit user error passes through as it is."""
    seen = []

    class One:
        @hookimpl
        def ebmkit_callbacks(self, config, out_dir):
            seen.append((config, out_dir))
            return "cb1"

    class Many:
        @hookimpl
        def ebmkit_callbacks(self, out_dir):  # a subset of the arguments
            return ["cb2", "cb3"] if out_dir is not None else None

    class Broken:
        @hookimpl
        def ebmkit_callbacks(self):
            raise RuntimeError("no callbacks today")

    class Strict:
        @hookimpl
        def ebmkit_callbacks(self, config):
            raise ConfigError("plugins.strict.every must be > 0")

    class Nothing:
        @hookimpl
        def ebmkit_callbacks(self):
            return None

    origins = {}
    one, many = One(), Many()
    pm = P.get_plugin_manager(entry_points=False, plugins=[one, many, Nothing()])
    cbs = P.plugin_callbacks(pm, config="cfg", out_dir=Path("runs/x"), origins=origins)
    assert cbs == ["cb1", "cb2", "cb3"] and seen == [("cfg", Path("runs/x"))]
    assert [origins[id(cb)] for cb in cbs] == [pm.get_name(one)] + [pm.get_name(many)] * 2
    assert P.plugin_callbacks(pm, config="cfg", out_dir=None) == ["cb1"]
    assert P.plugin_callbacks(P.get_plugin_manager(entry_points=False), None, None) == []
    broken = Broken()
    pm = P.get_plugin_manager(entry_points=False, plugins=[One(), broken])
    with pytest.raises(PluginError) as e:
        P.plugin_callbacks(pm, config="cfg", out_dir=None)
    assert str(e.value).startswith(f"plugin '{pm.get_name(broken)}' failed to add its training "
                                   "callbacks (ebmkit_callbacks): RuntimeError: no callbacks today")
    assert isinstance(e.value.__cause__, RuntimeError) and "\n" not in str(e.value)
    pm = P.get_plugin_manager(entry_points=False, plugins=[Strict()])
    with pytest.raises(ConfigError, match="plugins.strict.every must be > 0"):
        P.plugin_callbacks(pm, config="cfg", out_dir=None)


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


def test_plugin_new_is_a_core_command_and_names_are_checked(cli):
    """The scaffold is a maintainer tool of the core CLI (``ebmkit plugin new``), not a
    component plugin; its name check is a one-line user error."""
    from ebmkit import scaffold

    code, out, err = cli("plugin", "new", "--help")
    assert code == 0 and "Write a plugin package" in out
    with pytest.raises(ConfigError):
        scaffold.names_for("Bad Name")
