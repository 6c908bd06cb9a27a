"""A run is one TOML document with five sections::

    [energy]  name = "convnet32"   nf = 32
    [sampler] name = "langevin"    steps = 40
    [init]    name = "noise"
    [data]    name = "mnist5k"     resolution = 32
    [train]   iterations = 300     batch_size = 64   lr = 1e-4   data_noise = 0.1

Layers, later wins: built-in defaults < ``--preset`` < ``--config`` < component flags
(``--energy``) < ``--set section.key=value``. Changing a component's name drops the parameters
that belonged to the previous one. :func:`resolve` validates everything against the registry
and the component configs and returns a :class:`RunConfig`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .params import build, dumps_toml, param, parse_override, to_dict

SECTIONS = {"energy": "energy", "sampler": "sampler", "init": "initializer", "data": "dataset",
            "objective": "objective"}
#: ``[plugins.<name>]``: the tables of the plugins' own options (:class:`ebmkit.Options`).
PLUGINS = "plugins"
ALL_SECTIONS = (*SECTIONS, "train", PLUGINS)

DEFAULT_DOC: dict[str, dict[str, Any]] = {
    "energy": {"name": "convnet32"},
    "sampler": {"name": "langevin"},
    "init": {"name": "noise"},
    "data": {"name": "mnist5k"},
    "objective": {"name": "ml"},
    "train": {},
}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    iterations: int = param(1000, "Parameter updates (learning iterations).", min=0)
    time_budget: float = param(0.0, "Stop after this many wall-clock seconds of training (then "
                               "finish like a completed run: checkpoint, samples, plots); 0 = off.",
                               min=0.0)
    cpu_budget: float = param(0.0, "Stop after this many process CPU seconds (cpu_total in "
                              "diagnostics.csv: all threads and processes); 0 = off.", min=0.0)
    batch_size: int = param(64, "Data batch size m; also the number of chains per update (per process).", min=1)
    optimizer: str = param("adam", "adam (non-convergent ML) or sgd (convergent ML).", choices=("adam", "sgd"))
    lr: float = param(1e-4, "Learning rate (gamma; gamma_0 when convergent = true).", min=0.0, min_exclusive=True)
    betas: tuple[float, ...] = param((0.9, 0.999), "Adam betas.")
    momentum: float = param(0.0, "SGD momentum (convergent ML: 0).", min=0.0, max=1.0)
    weight_decay: float = param(0.0, "Weight decay (off in the papers).", min=0.0)
    ema: float = param(0.0, "Decay of an exponential moving average of the energy's weights "
                       "(e.g. 0.999; IGEBM, Du & Mordatch 2019; DRL, Gao et al. 2021): samples, "
                       "evaluations and model.safetensors use the average, the training chains "
                       "the raw weights; warm-up min(ema, (1+t)/(10+t)). 0 = off.",
                       min=0.0, max=1.0)
    lr_schedule: str = param("constant", "constant, exponential (lr *= lr_decay every lr_decay_every iters) or step.",
                             choices=("constant", "exponential", "step"))
    lr_decay: float = param(1.0, "Decay factor of the exponential/step schedule.", min=0.0, max=1.0,
                            min_exclusive=True)
    lr_decay_every: int = param(1, "Iterations between decays.", min=1)
    decay_start: int = param(0, "Iteration at which the lr schedule and the sigma annealing begin (short-run paper: after 200,000 iterations).", min=0)
    data_noise: float = param(0.03, "Std sigma of Gaussian noise added to data batches (short-run paper: 0.03).", min=0.0)
    data_noise_final: float | None = param(None, "If set, sigma is annealed linearly to this by the last iteration.", min=0.0)
    steps_max: int | None = param(None, "If set, K is drawn uniformly from [sampler.steps, steps_max] every iteration (rebuttal: [100, 120]).", min=1)
    sample_steps: int | None = param(None, "K used when sampling from the trained model (default: sampler.steps).", min=0)
    convergent: bool = param(False, "Anatomy App. A recipe: U = F/(eps^2/2) (energy.scale), lr = (eps^2/2)*lr; needs sampler.step_size, SGD without momentum.")
    seed: int = param(0, "Random seed (model init, data order, chains), 0 <= seed < 2**32.", min=0, max=2**32 - 1)
    device: str = param("auto", "auto, cpu, cuda, cuda:N or mps.")
    precision: str = param(
        "fp32",
        "Arithmetic of the training iteration: fp32 (the reference), bf16 (autocast for the chains' "
        "energy gradients and the loss pass; chain states, noise, energies and parameter updates "
        "stay fp32) or auto (bf16 where the device has fast bf16 and the sampler is not an exact "
        "MH sampler, else fp32).",
        choices=("fp32", "bf16", "auto"))
    mixed_precision: str = param("no", "Legacy: Accelerate autocast for the loss forward only (no, bf16, fp16); prefer precision.", choices=("no", "bf16", "fp16"))
    log_every: int = param(1, "Write diagnostics every N iterations.", min=1)
    sample_every: int = param(100, "Write a sample grid every N iterations (0 = only at the end).", min=0)
    checkpoint_every: int = param(500, "Write model.safetensors and the resume state every N iterations (0 = only at the end).", min=0)
    threads: int = param(0, "torch intra-op threads for this run (0 = torch's default, one per core: best on an idle machine; on a shared or busy machine 1 is often several times faster).", min=0)
    keep: int = param(2, "Complete checkpoints kept in checkpoints/ (older ones are removed once a newer one is committed).", min=1)
    grid_size: int = param(64, "Samples in each grid.", min=1)
    plots: bool = param(True, "Write the diagnostics plots at the end.")
    tensorboard: str = param("auto", "Also log diagnostics to TensorBoard via Accelerate's trackers: auto (when tensorboard is installed), on, off.",
                             choices=("auto", "on", "off"))
    trackers: tuple[str, ...] = param((), "Experiment trackers every logged metric also goes to (Accelerate's: tensorboard, mlflow, wandb, aim, comet_ml, clearml, dvclive, ...); local files go into the run directory.")

    def __post_init__(self):
        if self.steps_max is not None and self.steps_max < 1:
            raise ValueError("steps_max must be >= 1")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError("betas must be two numbers in [0, 1)")
        if self.precision != "fp32" and self.mixed_precision != "no":
            raise ValueError("set precision or the legacy mixed_precision, not both")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ValueError(f"device {self.device!r} is not one of auto, cpu, cuda, cuda:N, mps")


def load_toml(path: Path) -> dict[str, dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a directory; give the path of a run TOML file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "rb") as f:
            doc = tomllib.loads(f.read().decode("utf-8-sig"))  # -sig: a BOM (Notepad) is fine
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; save it as UTF-8 TOML") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror or exc})") from None
    check_sections(doc, str(path))
    return doc


def _unknown_section(where: str, key: str) -> ConfigError:
    close = difflib.get_close_matches(key, ALL_SECTIONS, n=1)
    hint = f" Did you mean [{close[0]}]?" if close else ""
    return ConfigError(f"{where}: unknown section [{key}].{hint} Valid: {', '.join(ALL_SECTIONS)} "
                       "(a plugin's options go in [plugins.NAME])")


def check_sections(doc: Mapping[str, Any], where: str) -> None:
    for key, value in doc.items():
        if key not in ALL_SECTIONS:
            raise _unknown_section(where, key)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: [{key}] must be a table")
        if key == PLUGINS:
            for name, table in value.items():
                if not isinstance(table, Mapping):
                    raise ConfigError(f"{where}: [plugins.{name}] must be a table (plugins.{name}.KEY = VALUE)")


def merge(base: Mapping[str, Mapping[str, Any]], over: Mapping[str, Mapping[str, Any]]) -> dict:
    out = copy.deepcopy({k: dict(v) for k, v in base.items()})
    for section, table in over.items():
        cur = out.setdefault(section, {})
        if section == PLUGINS:  # one table per plugin, merged key by key
            for plugin, values in table.items():
                cur[plugin] = {**dict(cur.get(plugin) or {}), **dict(values)}
            continue
        if "name" in table and section != "train" and table["name"] != cur.get("name"):
            cur.clear()  # another component: the old one's parameters do not apply
        cur.update(table)
    return out


def set_names(doc: dict, names: Mapping[str, str | None]) -> dict:
    return merge(doc, {s: {"name": n} for s, n in names.items() if n})


def apply_overrides(doc: dict, overrides: Iterable[str], *, flag: str = "--set") -> dict:
    """Apply ``section.key=value`` strings (``flag`` names them in errors)."""
    doc = copy.deepcopy(doc)
    for text in overrides:
        section, key, value = parse_override(text, flag=flag)
        if section not in ALL_SECTIONS:
            close = difflib.get_close_matches(section, ALL_SECTIONS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{flag} {text!r}: unknown section '{section}'.{hint} Valid: "
                              f"{', '.join(ALL_SECTIONS)} (a plugin's options: plugins.NAME.KEY=VALUE)")
        if section == PLUGINS:
            plugin, _, sub = key.partition(".")
            if not plugin or not sub or "." in sub:
                raise ConfigError(f"{flag} {text!r}: a plugin option is plugins.NAME.KEY=VALUE, "
                                  "e.g. plugins.fid.every=100")
            doc.setdefault(PLUGINS, {}).setdefault(plugin, {})[sub] = value
            continue
        if key == "name" and section != "train":
            doc = merge(doc, {section: {"name": value}})
        else:
            doc.setdefault(section, {})[key] = value  # a string; typed by resolve()
    return doc


CUSTOM = "custom"  # the name recorded for a component given as an object (not in the registry)


@dataclass(frozen=True)
class RunConfig:
    """A validated run: for each section (``energy``, ``sampler``, ``init``, ``data``) the
    component class and its typed config, plus the :class:`TrainConfig`.

    >>> cfg = RunConfig.from_preset("quick").with_overrides("sampler.steps=60", train={"lr": 2e-4})
    >>> cfg.train.lr, cfg.configs["sampler"].steps
    (0.0002, 60)
    >>> cfg.to_toml("run.toml")

    A component given to :func:`ebmkit.fit` as an object (an ``nn.Module`` energy, a tensor of
    data) is recorded under the name ``custom`` with its class in ``info``; such a section is not
    looked up in the registry.
    """

    classes: dict[str, type | None]
    configs: dict[str, Any]
    train: TrainConfig
    registry: Any = dataclasses.field(default=None, compare=False, repr=False)
    info: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict, compare=False)
    #: ``[plugins.<name>]``: every installed plugin's options (its ``Config``, defaults filled in)
    plugins: dict[str, Any] = dataclasses.field(default_factory=dict)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, doc: Mapping[str, Mapping[str, Any]], *, registry=None) -> RunConfig:
        """Validate a document (``{"energy": {"name": ..., ...}, ..., "train": {...}}``; missing
        sections and keys take the defaults)."""
        return resolve(doc, _registry(registry))

    @classmethod
    def from_toml(cls, path: str | Path, *, registry=None) -> RunConfig:
        return resolve(load_toml(Path(path)), _registry(registry))

    @classmethod
    def from_preset(cls, name: str, *, registry=None) -> RunConfig:
        reg = _registry(registry)
        return resolve(reg.get("preset", name).read(), reg)

    @classmethod
    def default(cls, *, registry=None) -> RunConfig:
        return resolve({}, _registry(registry))

    # -- views -------------------------------------------------------------------------------
    def name(self, section: str) -> str:
        c = self.classes[section]
        return c.name if c is not None else CUSTOM

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The fully resolved document (every parameter explicit)."""
        doc: dict[str, dict[str, Any]] = {}
        for section in SECTIONS:
            if self.classes[section] is None:
                doc[section] = {"name": CUSTOM, **self.info.get(section, {})}
            else:
                doc[section] = {"name": self.classes[section].name, **to_dict(self.configs[section])}
        doc["train"] = to_dict(self.train)
        if self.plugins:
            doc[PLUGINS] = {name: to_dict(cfg) for name, cfg in sorted(self.plugins.items())}
        return doc

    def plugin(self, name: str) -> Any:
        """The options of plugin section ``name`` (``[plugins.<name>]``, a ``Config`` instance);
        a :class:`ConfigError` naming the installed ones when no plugin declared it."""
        if name not in self.plugins:
            close = difflib.get_close_matches(name, self.plugins, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"no plugin declares options [plugins.{name}].{hint} Declared: "
                              f"{', '.join(sorted(self.plugins)) or '(none)'}")
        return self.plugins[name]

    document = to_dict  # the name the checkpoint code has always used

    def to_toml(self, path: str | Path | None = None) -> str:
        """The document as TOML; also written to ``path`` when given."""
        text = dumps_toml(self.to_dict())
        if path is not None:
            Path(path).write_text(text)
        return text

    def with_overrides(self, *overrides: str | Mapping[str, Mapping[str, Any]],
                       **sections: Mapping[str, Any]) -> RunConfig:
        """A new config with overrides applied: ``"section.key=value"`` strings (the CLI's
        ``--set``), documents ``{"section": {"key": value}}``, or keyword sections
        (``train={"lr": 2e-4}``). Changing a component's ``name`` drops the old one's
        parameters. Custom (object) sections keep their objects' records."""
        doc = self.to_dict()
        texts = []
        for o in overrides:
            if isinstance(o, str):
                texts.append(o)
            elif isinstance(o, Mapping):
                check_sections(o, "overrides")
                doc = merge(doc, o)
            else:
                raise ConfigError(f"override {o!r}: expected 'section.key=value' or a mapping")
        if sections:
            check_sections(sections, "overrides")
            doc = merge(doc, sections)
        doc = apply_overrides(doc, texts, flag="override")
        return resolve(doc, self.registry)

    # -- building components -----------------------------------------------------------------
    def _cls(self, section: str) -> type:
        c = self.classes[section]
        if c is None:
            raise ConfigError(f"[{section}] is a custom component ({self.info.get(section, {}).get('class', '?')});"
                              " pass the object itself")
        return c

    def _build(self, section: str, *args):
        from .plugins import instantiate

        return instantiate(self._cls(section), self.configs[section], *args, registry=self.registry)

    def data_source(self):
        return self._build("data")

    def energy(self, shape):
        return self._build("energy", shape)

    def sampler(self):
        return self._build("sampler")

    def initializer(self, shape):
        return self._build("init", shape)

    def objective(self):
        return self._build("objective")

    @property
    def sample_steps(self) -> int | None:
        """``train.sample_steps`` (the sampling K when set)."""
        return self.train.sample_steps


def _registry(registry):
    if registry is not None:
        return registry
    from .plugins import build_registry

    return build_registry()


def resolve(doc: Mapping[str, Mapping[str, Any]], registry) -> RunConfig:
    check_sections(doc, "run config")
    doc = merge(DEFAULT_DOC, doc)
    classes: dict[str, type | None] = {}
    configs: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}
    for section, kind in SECTIONS.items():
        table = dict(doc.get(section, {}))
        name = table.pop("name", None)
        if not name:
            raise ConfigError(f"[{section}] needs a name")
        if name == CUSTOM:  # an object given to fit(): recorded, not rebuilt by name
            classes[section], configs[section] = None, None
            info[section] = {k: str(v) for k, v in table.items()}
            continue
        cls = registry.get(kind, str(name))
        classes[section] = cls
        if section == "data" and classes["energy"] is not None:
            table = _data_follows_energy(table, cls, classes["energy"])
        configs[section] = build(cls.Config, table, where=section)
    train = build(TrainConfig, doc.get("train", {}), where="train")
    if train.convergent:
        configs = _convergent(configs, classes, train)
        eps = configs["sampler"].step_size
        train = dataclasses.replace(train, lr=train.lr * eps * eps / 2, convergent=False)
    plugins = resolve_plugin_options(doc.get(PLUGINS, {}), registry)
    return RunConfig(classes, configs, train, registry, info, plugins)


def resolve_plugin_options(tables: Mapping[str, Mapping[str, Any]], registry) -> dict[str, Any]:
    """Every registered :class:`~ebmkit.Options` section built from its ``[plugins.<name>]``
    table (defaults where absent); an unknown section name is an error with a did-you-mean."""
    names = registry.names("options") if registry is not None else []
    for name in tables:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown plugin section [plugins.{name}].{hint} Plugins with options: "
                              f"{', '.join(names) or '(none installed)'}")
    out = {}
    for name in names:
        cls = registry.get("options", name)
        out[name] = build(cls.Config, dict(tables.get(name) or {}), where=f"plugins.{name}")
    return out


def _data_follows_energy(table: dict, data_cls: type, energy_cls: type) -> dict:
    """An energy made for one image size (``convnet64`` -> 64 px) sets the data's resolution when
    the document does not: ``ebmkit run --energy convnet64`` resizes the embedded digits to 64 px.
    An explicit ``data.resolution`` always wins (and a mismatch is reported by the energy)."""
    res = getattr(energy_cls, "resolution", None)
    fields = {f.name for f in dataclasses.fields(data_cls.Config)}
    if isinstance(res, int) and "resolution" in fields and "resolution" not in table:
        return {**table, "resolution": res}
    return table


def _convergent(configs: dict, classes: dict, train: TrainConfig) -> dict:
    """Apply the anatomy paper's App. A rescaling; record it explicitly in the configs."""
    s = configs["sampler"]
    eps = getattr(s, "step_size", None)
    if eps is None:
        raise ConfigError("train.convergent needs sampler.step_size (eps), e.g. --set sampler.step_size=0.015")
    if train.optimizer != "sgd" or train.momentum != 0:
        raise ConfigError("train.convergent uses SGD without momentum: set train.optimizer=sgd and train.momentum=0")
    e = configs["energy"]
    if not hasattr(e, "scale"):
        raise ConfigError(f"train.convergent needs an energy with a 'scale' parameter; '{getattr(classes['energy'], 'name', CUSTOM)}' has none")
    configs = dict(configs)
    configs["energy"] = dataclasses.replace(e, scale=e.scale * 2 / (eps * eps))
    return configs


def build_document(*, preset_doc=None, config_doc=None, names=None, overrides=()) -> dict:
    doc = copy.deepcopy(DEFAULT_DOC)
    if preset_doc:
        doc = merge(doc, preset_doc)
    if config_doc:
        doc = merge(doc, config_doc)
    if names:
        doc = set_names(doc, names)
    return apply_overrides(doc, overrides)
