"""The pytest fixtures the kit registers (ebmkit_plugin_manager, ebmkit_registry, ebmkit_cli)."""

from __future__ import annotations

from ebmkit.builtin import initializers, samplers
from ebmkit.hookspecs import hookimpl
from ebmkit_testing import GaussianEnergy


class _OnePlugin:
    @hookimpl
    def ebmkit_register(self, register):
        register(GaussianEnergy)


def test_plugin_manager_holds_only_named_plugins(ebmkit_plugin_manager):
    pm = ebmkit_plugin_manager(samplers)
    assert [name for name, _ in pm.list_name_plugin()] == [pm.get_name(samplers)]


def test_registry_from_named_plugins(ebmkit_registry):
    reg = ebmkit_registry(_OnePlugin(), initializers)
    assert reg.names("energy") == ["test-gaussian"]
    assert reg.names("sampler") == []
    assert "noise" in reg.names("initializer")


def test_cli_runner_restricted_to_plugins(ebmkit_cli):
    ebmkit_cli.use(samplers)
    res = ebmkit_cli("list", "samplers")
    assert res.exit_code == 0, res.output
    assert "langevin" in res.stdout
    res = ebmkit_cli("list", "energies")
    assert res.exit_code == 0 and "convnet32" not in res.stdout


def test_cli_runner_one_line_error(ebmkit_cli):
    ebmkit_cli.use(samplers)
    res = ebmkit_cli("describe", "sampler", "langevn")
    assert res.exit_code != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Did you mean 'langevin'?" in lines[0], res.stderr


def test_cli_runner_repeated_calls_do_not_duplicate_commands(ebmkit_cli):
    from ebmkit.cli.main import app

    for _ in range(3):
        assert ebmkit_cli("plugins").exit_code == 0
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert len(names) == len(set(names)), names
