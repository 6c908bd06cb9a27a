"""What every conformance suite shares: the component under test and the checks every
registrable class must pass (name, summary, Config, registration through a plugin)."""

from __future__ import annotations

import dataclasses
import re
from types import ModuleType
from typing import Any, ClassVar

from ebmkit.interfaces import KINDS
from ebmkit.params import build, params
from ebmkit.plugins import build_registry, get_plugin_manager

NAME_RE = re.compile(r"^[a-z][a-z0-9_\-]*$")


def require(ok: Any, contract: str) -> None:
    """Fail with the contract's wording when ``ok`` is false."""
    if not ok:
        raise AssertionError(f"ebmkit contract: {contract}")


class ComponentConformance:
    """Base of every suite. A plugin's test module subclasses a suite in a few lines::

        class TestMySampler(SamplerConformance):
            component = MySampler
            plugin = my_package          # the module listed under [project.entry-points.ebmkit]

    Class attributes a subclass may set:

    * ``component`` (required): the class under test.
    * ``config``: parameters to build it with (a dict, validated like a run file).
    * ``plugin``: the entry-point module (or object) whose ``ebmkit_register`` registers
      ``component``; checked in-process, without entry points.
    * ``entry_point``: the entry-point name under ``[project.entry-points.ebmkit]`` to check that
      the installed distribution advertises the plugin (``None`` skips that check).
    """

    component: ClassVar[type]
    config: ClassVar[dict[str, Any]] = {}
    plugin: ClassVar[ModuleType | object | None] = None
    entry_point: ClassVar[str | None] = None

    kind: ClassVar[str] = ""

    # helpers ------------------------------------------------------------------------------
    def make_config(self) -> Any:
        return build(self.component.Config, dict(self.config), where=self.component.kind)

    # checks -------------------------------------------------------------------------------
    def test_is_a_component_of_this_kind(self):
        cls = self.component
        base = KINDS[self.kind]
        require(isinstance(cls, type) and issubclass(cls, base),
                f"a {self.kind} must subclass ebmkit.{base.__name__}; got {cls!r}")

    def test_name(self):
        name = self.component.name
        require(isinstance(name, str) and NAME_RE.match(name or ""),
                f"`name` is the registry key: a non-empty lowercase string of letters, digits,"
                f" '_' or '-' starting with a letter; got {name!r}")

    def test_summary_is_one_line(self):
        s = self.component.summary
        require(isinstance(s, str) and s.strip() and "\n" not in s.strip(),
                f"`summary` is one non-empty line for `ebmkit list`; got {s!r}")

    def test_config_is_frozen_keyword_only_dataclass(self):
        C = self.component.Config
        require(dataclasses.is_dataclass(C),
                "`Config` must be a @dataclass(frozen=True, kw_only=True) built with"
                f" ebmkit.param(...) fields; {C!r} is not a dataclass")
        p = C.__dataclass_params__  # type: ignore[attr-defined]
        require(p.frozen, f"`Config` ({C.__name__}) must be frozen: @dataclass(frozen=True, ...)")
        require(all(f.kw_only for f in dataclasses.fields(C)),
                f"`Config` ({C.__name__}) fields must be keyword-only: @dataclass(kw_only=True)")

    def test_every_parameter_has_help(self):
        missing = [p.name for p in params(self.component.Config) if not p.help.strip()]
        require(not missing,
                "every Config field is declared with ebmkit.param(default, 'help text') so the CLI"
                f" and `ebmkit describe` can explain it; no help for: {', '.join(missing)}")

    def test_config_builds(self):
        try:
            self.make_config()
        except Exception as exc:  # noqa: BLE001 - reported as a contract failure
            raise AssertionError(
                f"ebmkit contract: the suite's `config` {self.config!r} must build into"
                f" {self.component.Config.__name__} (every parameter needs a default or a"
                f" value in `config`): {exc}") from exc

    def test_registered_by_plugin(self):
        if self.plugin is None:
            import pytest

            pytest.skip("set `plugin = <your entry-point module>` to check registration")
        pm = get_plugin_manager(entry_points=False, plugins=[self.plugin])
        reg = build_registry(pm)
        names = reg.names(self.kind)
        require(self.component.name in names,
                f"the plugin's `ebmkit_register(register)` hook must call register({self.component.__name__});"
                f" it registered {self.kind}s: {names or '(none)'}")
        require(reg.get(self.kind, self.component.name) is self.component,
                f"'{self.component.name}' is registered, but not as {self.component!r}")

    def test_advertised_by_entry_point(self):
        import pytest

        if self.entry_point is None:
            pytest.skip("set `entry_point = '<name>'` to check the installed entry point")
        from importlib.metadata import entry_points

        eps = {ep.name: ep for ep in entry_points(group="ebmkit")}
        require(self.entry_point in eps,
                f"pyproject.toml must list the plugin under [project.entry-points.ebmkit]"
                f" as `{self.entry_point} = \"<module>\"` and the package must be installed"
                f" (pip install -e .); installed ebmkit entry points: {', '.join(sorted(eps))}")
        pm = get_plugin_manager(entry_points=True, block=())
        reg = build_registry(pm)
        require(reg.names(self.kind).count(self.component.name) == 1 and
                reg.get(self.kind, self.component.name) is self.component,
                f"through entry points, {self.kind} '{self.component.name}' must resolve to"
                f" {self.component!r}; load errors: {reg.load_errors or 'none'}")
