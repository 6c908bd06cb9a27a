"""Conformance suite for a plugin's options (``ebmkit.interfaces.Options``: the
``[plugins.<name>]`` table of the run document): the shared checks of a registrable class, a
``Config`` that builds with its defaults alone, and ``resumable`` keys that are ``Config``
fields."""

from __future__ import annotations

import dataclasses

from ebmkit.params import build

from ._base import ComponentConformance, require


class OptionsConformance(ComponentConformance):
    """Subclass and set ``component`` (and ``plugin``, ``entry_point``)::

        class TestMyOptions(OptionsConformance):
            component = MyOptions
            plugin = my_plugin
    """

    kind = "options"

    def test_config_builds_with_defaults(self):
        """A run document without a ``[plugins.<name>]`` table (every run that does not mention
        the plugin) builds the options from their defaults alone."""
        C = self.component.Config
        try:
            build(C, {}, where=f"plugins.{self.component.name}")
        except Exception as exc:  # noqa: BLE001 - reported as a contract failure
            raise AssertionError(
                f"ebmkit contract: every field of the options' Config ({C.__name__}) has a default:"
                " a run whose document has no [plugins."
                f"{self.component.name}] table builds it from nothing; {exc}") from exc

    def test_resumable_keys_are_config_fields(self):
        """``resumable`` is a set of names of ``Config`` fields (the keys a resumed run may
        change); a misspelt key would silently make its field frozen on resume."""
        keys = self.component.resumable
        require(isinstance(keys, frozenset | set | tuple | list)
                and all(isinstance(k, str) for k in keys),
                f"`resumable` is a frozenset of Config field names; got {keys!r}")
        fields = {f.name for f in dataclasses.fields(self.component.Config)}
        unknown = sorted(set(keys) - fields)
        require(not unknown,
                f"`resumable` names fields of Config ({', '.join(sorted(fields)) or 'none'});"
                f" not fields: {', '.join(unknown)}")
