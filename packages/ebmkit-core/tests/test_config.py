"""Config declaration, validation and the run-document layering."""

from dataclasses import dataclass

import pytest
from ebmkit.errors import ConfigError
from ebmkit.params import build, dumps_toml, param, params, parse_override, to_dict
from ebmkit.runconfig import TrainConfig, build_document, resolve


@dataclass(frozen=True, kw_only=True)
class Cfg:
    steps: int = param(10, "steps", min=0)
    eps: float | None = param(None, "step size", min=0.0, min_exclusive=True)
    mode: str = param("a", "mode", choices=("a", "b"))
    flag: bool = param(False, "a flag")
    pair: tuple[float, ...] = param((0.1, 0.2), "two numbers")


def test_defaults_and_coercion_from_strings():
    c = build(Cfg, {"steps": "12", "eps": "0.5", "mode": "b", "flag": "true", "pair": "0.3,0.4"})
    assert (c.steps, c.eps, c.mode, c.flag, c.pair) == (12, 0.5, "b", True, (0.3, 0.4))
    assert build(Cfg, {"eps": "none"}).eps is None
    assert build(Cfg, {"steps": 3.0}).steps == 3


@pytest.mark.parametrize(
    "values, message",
    [
        ({"steps": "abc"}, "cfg.steps: expected an integer, got 'abc'"),
        ({"steps": -1}, "cfg.steps: must be >= 0"),
        ({"eps": 0}, "cfg.eps: must be > 0.0"),
        ({"mode": "c"}, "cfg.mode: 'c' is not one of: a, b"),
        ({"flag": "maybe"}, "cfg.flag: expected true or false"),
        ({"step": 1}, "unknown key 'cfg.step'. Did you mean 'cfg.steps'?"),
        ({"eps": "nan"}, "cfg.eps: must be finite"),
    ],
)
def test_bad_values_are_one_line_errors(values, message):
    with pytest.raises(ConfigError) as e:
        build(Cfg, values, where="cfg")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_params_introspection():
    names = [p.name for p in params(Cfg)]
    assert names == ["steps", "eps", "mode", "flag", "pair"]
    assert params(Cfg)[2].choices == ("a", "b")
    assert to_dict(build(Cfg))["pair"] == [0.1, 0.2]


def test_parse_override():
    assert parse_override("sampler.steps=100") == ("sampler", "steps", "100")
    for bad in ("steps=1", "sampler.steps"):
        with pytest.raises(ConfigError):
            parse_override(bad)


def test_toml_roundtrip(tmp_path):
    import tomllib

    doc = {"train": {"iterations": 3, "betas": [0.9, 0.99], "optimizer": "adam", "plots": False}}
    assert tomllib.loads(dumps_toml(doc)) == doc


def test_layering_and_component_switch(registry):
    preset = {"energy": {"name": "convnet64", "nf": 8}, "sampler": {"name": "langevin", "steps": 7}}
    doc = build_document(preset_doc=preset, names={"energy": "convnet32"},
                         overrides=["sampler.steps=9", "data.resolution=32"])
    assert doc["energy"] == {"name": "convnet32"}  # nf belonged to convnet64: dropped
    spec = resolve(doc, registry)
    assert spec.configs["sampler"].steps == 9
    assert spec.configs["energy"].nf == 64
    assert isinstance(spec.train, TrainConfig)


def test_unknown_section_and_keys(registry):
    with pytest.raises(ConfigError, match="unknown section 'trian'"):
        build_document(overrides=["trian.lr=1"])
    with pytest.raises(ConfigError, match="unknown key 'train.learning_rate'"):
        resolve(build_document(overrides=["train.learning_rate=1"]), registry)


def test_langevin_parameterisations_are_exclusive(registry):
    with pytest.raises(ConfigError, match="either step_size"):
        resolve(build_document(overrides=["sampler.step_size=0.1", "sampler.grad_coef=1"]), registry)


def test_convergent_recipe_rescales(registry):
    doc = build_document(overrides=[
        "sampler.step_size=0.015", "train.optimizer=sgd", "train.lr=5e-4", "train.convergent=true"])
    spec = resolve(doc, registry)
    eps2 = 0.015**2 / 2
    assert spec.configs["energy"].scale == pytest.approx(1 / eps2)
    assert spec.train.lr == pytest.approx(5e-4 * eps2)
    # the resolved document is explicit and re-resolves to the same run (no double scaling)
    again = resolve(spec.document(), registry)
    assert again.configs["energy"].scale == pytest.approx(1 / eps2)
    assert again.train.lr == pytest.approx(spec.train.lr)
    with pytest.raises(ConfigError, match="SGD without momentum"):
        resolve(build_document(overrides=["sampler.step_size=0.015", "train.convergent=true"]), registry)
