"""The library's front door: :func:`fit` trains an EBM, :func:`load` brings one back.

``ebmkit run`` and ``ebmkit sample`` / ``eval`` / ``toy`` are thin clients of these two
functions; everything they do is reachable from Python with objects instead of strings::

    import ebmkit
    ebm = ebmkit.fit(energy="convnet32", data="mnist5k", iterations=600, out_dir="runs/quick")
    x = ebm.sample(64, steps=40, seed=0)
    ebm.save("quick.safetensors"); ebm = ebmkit.load("quick.safetensors")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from . import checkpoint as ckpt
from .callbacks import Callback, default_callbacks
from .errors import CheckpointError, ConfigError, TrainingInterrupted
from .interfaces import (
    DataSource,
    Energy,
    EvalResult,
    Evaluator,
    Initializer,
    Objective,
    Prior,
    PriorInitializer,
    Sampler,
)
from .model import EBM, sampling_steps
from .params import to_dict
from .runconfig import (
    CUSTOM,
    DEFAULT_DOC,
    PLUGINS,
    SECTIONS,
    RunConfig,
    TrainConfig,
    apply_overrides,
    check_sections,
    load_toml,
    merge,
    resolve,
)
from .training import Run, make_optimizer, pick_device, run_loop

#: ``train.*`` keys a resumed run may change (the rest would change what it learns).
RESUMABLE = frozenset({"iterations", "sample_every", "checkpoint_every", "log_every", "plots",
                       "grid_size", "device", "sample_steps", "tensorboard", "keep", "threads",
                       "precision"})
_KINDS = {"energy": "energy", "sampler": "sampler", "init": "initializer", "data": "dataset",
          "objective": "objective"}


# ---------------------------------------------------------------------------------------------
# data given as tensors / Datasets
# ---------------------------------------------------------------------------------------------
class InMemoryData(DataSource):
    """A user's tensor ``[N, ...]`` (or a map-style ``Dataset`` of tensors / ``(tensor, label)``)
    as a data source. Images should be in ``[-1, 1]``; nothing is rescaled."""

    name = CUSTOM
    summary = "Data given as a tensor or Dataset."

    def __init__(self, data: Tensor | Dataset):
        super().__init__(None)
        if isinstance(data, Tensor):
            if data.ndim < 2:
                raise ConfigError(f"data tensor must be [N, ...] with N examples, got shape {tuple(data.shape)}")
            if not torch.is_floating_point(data):
                raise ConfigError(f"data tensor must be floating point (images in [-1, 1]), got {data.dtype}")
            self._ds: Dataset = TensorDataset(data.detach().cpu())
            self._shape = tuple(data.shape[1:])
        else:
            try:
                first = data[0]
            except Exception as exc:
                raise ConfigError(f"data: a Dataset must be indexable (map-style); {exc}") from None
            x = first[0] if isinstance(first, (tuple, list)) else first
            if not isinstance(x, Tensor):
                raise ConfigError(f"data: items must be tensors or (tensor, label), got {type(x).__name__}")
            self._ds, self._shape = data, tuple(x.shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    def open(self, *, split: str = "train") -> Dataset:
        return self._ds


# ---------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------
def fit(
    energy: str | Mapping[str, Any] | nn.Module | None = None,
    data: str | Mapping[str, Any] | DataSource | Tensor | Dataset | None = None,
    sampler: str | Mapping[str, Any] | Sampler | None = None,
    init: str | Mapping[str, Any] | Initializer | None = None,
    *,
    objective: str | Mapping[str, Any] | Objective | None = None,
    plugins: Mapping[str, Mapping[str, Any]] | None = None,
    config: RunConfig | Mapping[str, Any] | str | Path | None = None,
    preset: str | None = None,
    train: TrainConfig | Mapping[str, Any] | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    callbacks: Iterable[Callback] = (),
    progress: bool = False,
    console: Any = None,
    registry: Any = None,
    stop_after: int | None = None,
    **train_options: Any,
) -> EBM:
    """Train an EBM by MCMC-based maximum likelihood and return it.

    Components are registry names (``"convnet32"``), dicts with a name and parameters
    (``{"name": "langevin", "steps": 60}``), or objects: any ``nn.Module`` energy
    (``[B, ...] -> [B]``), a :class:`Sampler`, an :class:`Initializer`, an :class:`Objective`
    (the loss; default ``ml``), a :class:`DataSource`, a tensor ``[N, ...]`` (or a numpy array)
    or a ``Dataset`` of data. Unset components come from ``config`` (a :class:`RunConfig`, a
    document dict or a TOML path), ``preset``, or the defaults. ``[train]`` options are keywords
    (``iterations=600, lr=1e-4``) or ``train=``; plugins' own options are
    ``plugins={"fid": {"every": 100}}`` (the run document's ``[plugins.<name>]`` tables).

    Without ``out_dir`` everything stays in memory; with it, the run directory gets exactly what
    ``ebmkit run`` writes (``run.toml``, ``model.safetensors``, ``samples/``,
    ``diagnostics.csv``, ``plots/``, ``checkpoints/``). ``resume=True`` continues the run saved
    in ``out_dir``. ``callbacks`` (:class:`Callback` objects, or plain functions
    ``f(run, out)`` called after every iteration) run after the built-ins (see
    :mod:`ebmkit.callbacks`).
    """
    from .plugins import build_registry

    reg = registry if registry is not None else build_registry()
    objects: dict[str, Any] = {}
    out = Path(out_dir) if out_dir is not None else None

    if resume:
        if out is None:
            raise ConfigError("resume=True needs out_dir (the run directory to continue)")
        given = {"energy": energy, "data": data, "sampler": sampler, "init": init,
                 "objective": objective}
        if any(v is not None for v in (config, preset, train)) or any(
                isinstance(v, (str, Mapping)) for v in given.values()):
            raise ConfigError("resume continues a saved run; only train options "
                              f"({', '.join(sorted(RESUMABLE))}) may change, and the objects of "
                              "sections it recorded as custom must be passed again")
        bad = sorted(set(train_options) - RESUMABLE)
        if bad:
            raise ConfigError(f"train.{bad[0]} cannot change on resume; allowed: {', '.join(sorted(RESUMABLE))}")
        path = out / "run.toml"
        if not path.is_file():
            raise CheckpointError(f"cannot resume: {path} not found (is {out} an ebmkit run directory?)")
        plugin_changes = _resumable_plugin_options(plugins, reg)
        cfg = resolve(merge(load_toml(path), {"train": train_options, PLUGINS: plugin_changes}), reg)
        for section in SECTIONS:
            value = given[section]
            if cfg.classes[section] is None:
                if value is None:
                    raise ConfigError(f"{out} was trained with a custom {section} "
                                      f"({cfg.info.get(section, {}).get('class', '?')}); resume it "
                                      f"from Python, passing the same {section}= object")
                if section == "data" and isinstance(value, (Tensor, Dataset)) and not isinstance(value, DataSource):
                    value = InMemoryData(value)
                objects[section] = value
            elif value is not None:
                raise ConfigError(f"{out} recorded {section} '{cfg.name(section)}'; resume takes "
                                  f"it from run.toml, not from the {section}= argument")
    else:
        doc = _base_document(config, preset, reg)
        for section, value in (("energy", energy), ("sampler", sampler), ("init", init), ("data", data),
                               ("objective", objective)):
            if value is None:
                continue
            doc, obj = _component(doc, section, value, reg)
            if obj is not None:
                objects[section] = obj
        if train is not None:
            if dataclasses.is_dataclass(train):
                if config is not None or preset is not None:
                    raise ConfigError("train=TrainConfig(...) sets every [train] value and would "
                                      "silently replace the preset's/config's; pass a dict of the "
                                      "values to change (train={'iterations': 5}) or keywords")
                table = to_dict(train)
            else:
                table = dict(train)
            doc = merge(doc, {"train": table})
        if train_options:
            doc = merge(doc, {"train": train_options})
        if plugins:
            if not isinstance(plugins, Mapping) or not all(isinstance(v, Mapping) for v in plugins.values()):
                raise ConfigError("plugins= is a dict of each plugin's options, e.g. "
                                  "plugins={'fid': {'every': 100}}")
            doc = merge(doc, {PLUGINS: plugins})
        cfg = resolve(doc, reg)
        if out is not None:
            _check_out_dir(out, force=force)
    cbs = default_callbacks(cfg, out, progress=progress, console=console)
    cbs.extend(callbacks)
    pm = getattr(reg, "pm", None)
    if pm is not None:
        from .plugins import plugin_callbacks

        cbs.extend(plugin_callbacks(pm, cfg, out))
    say = (lambda msg: console.print(msg, highlight=False, markup=False)) if console is not None else None
    return _train(cfg, objects, out, cbs, resume=resume, stop_after=stop_after, say=say)


def _resumable_plugin_options(plugins, reg) -> dict:
    """``plugins=`` on resume: only the keys each plugin's :class:`Options` declares resumable."""
    if not plugins:
        return {}
    out = {}
    for name, values in dict(plugins).items():
        try:
            cls = reg.get("options", name)
        except LookupError:
            raise ConfigError(f"plugins: no installed plugin declares options [plugins.{name}]; "
                              f"declared: {', '.join(reg.names('options')) or '(none)'}") from None
        bad = sorted(set(values) - set(cls.resumable))
        if bad:
            allowed = ", ".join(f"plugins.{name}.{k}" for k in sorted(cls.resumable)) or "(none)"
            raise ConfigError(f"plugins.{name}.{bad[0]} cannot change on resume; allowed: {allowed}")
        out[name] = dict(values)
    return out


#: What makes a directory "hold a run": a fresh run there needs force=True / --force.
RUN_MARKERS = ("run.toml", "model.safetensors", "checkpoints", "train_state")


def _check_out_dir(out: Path, *, force: bool) -> None:
    """A fresh run's directory: refuse one that holds a run (unless forced); create it now, so
    a path that cannot be a directory fails before anything else happens."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output directory {out} is a file; choose another --out / out_dir")
    held = [m for m in RUN_MARKERS if (out / m).exists()]
    if held and not force:
        raise ConfigError(f"{out} already holds a run ({held[0]}); resume it (resume=True / "
                          f"--resume {out}), choose another output directory, or force=True / --force")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output directory {out} ({exc.strerror or exc}); "
                          "choose another --out / out_dir") from None


def _base_document(config, preset, reg) -> dict:
    doc = {k: dict(v) for k, v in DEFAULT_DOC.items()}
    if preset is not None:
        doc = merge(doc, reg.get("preset", preset).read())
    if config is None:
        return doc
    if isinstance(config, RunConfig):
        return merge(doc, config.to_dict())
    if isinstance(config, (str, Path)):
        return merge(doc, load_toml(Path(config)))
    if isinstance(config, Mapping):
        check_sections(config, "config")
        return merge(doc, config)
    raise ConfigError(f"config must be a RunConfig, a document dict or a TOML path, not {type(config).__name__}")


def _component(doc: dict, section: str, value: Any, reg) -> tuple[dict, Any]:
    """Fold one ``fit`` argument into the document; returns ``(doc, object or None)``."""
    kind = _KINDS[section]
    if isinstance(value, str):
        if section == "data" and ":" in value:  # "shards:PATTERN" as on the command line
            prefix, rest = value.split(":", 1)
            return apply_overrides(merge(doc, {section: {"name": prefix}}), [f"data.path={rest}"]), None
        reg.get(kind, value)  # unknown names fail here, with the choices
        return merge(doc, {section: {"name": value}}), None
    if isinstance(value, Mapping):
        if "name" not in value:
            raise ConfigError(f"{section}: a dict needs a 'name' (e.g. {{'name': ..., ...}})")
        table = dict(value)
        table["name"] = str(table["name"])
        reg.get(kind, table["name"])
        return merge(doc, {section: table}), None
    if section == "data" and isinstance(value, (Tensor, Dataset)) and not isinstance(value, DataSource):
        value = InMemoryData(value)
    expected = {"energy": nn.Module, "sampler": Sampler, "init": Initializer, "data": DataSource,
                "objective": Objective}[section]
    if not isinstance(value, expected):
        raise ConfigError(f"{section}: expected a name, a dict or a {expected.__name__}, got {type(value).__name__}")
    # A registered component instance is recorded by name and config: a checkpoint then
    # rebuilds it without the object. Anything else is recorded as custom.
    name = getattr(value, "name", "")
    registered = None
    if name and name != CUSTOM and getattr(value, "config", None) is not None:
        try:
            registered = reg.get(kind, name)
        except LookupError:
            registered = None
    if registered is type(value):
        table = {"name": name, **to_dict(value.config)}
        doc = {**doc, section: table}
    else:
        cls = type(value)
        doc = {**doc, section: {"name": CUSTOM, "class": f"{cls.__module__}.{cls.__qualname__}"}}
    return doc, value


def _train(cfg: RunConfig, objects: dict[str, Any], out: Path | None, callbacks: Sequence[Callback],
           *, resume: bool, stop_after: int | None, say: Any = None) -> EBM:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    tc = cfg.train
    device = pick_device(tc.device)
    acc = Accelerator(cpu=device == "cpu", mixed_precision=tc.mixed_precision)
    rank = acc.process_index
    dev = acc.device

    source = objects.get("data") or cfg.data_source()
    dataset = source.open(split="train")
    shape = tuple(source.shape)
    set_seed(tc.seed)  # identical initial weights on every rank
    energy = objects.get("energy")
    if energy is None:
        energy = cfg.energy(shape)
    energy = energy.to(dev)
    sampler = objects.get("sampler") or cfg.sampler()
    init = objects.get("init") or cfg.initializer(shape)
    if tuple(init.shape) != shape:
        raise ConfigError(f"the initializer makes chains of shape {tuple(init.shape)} but the data has shape {shape}")
    params = [p for p in energy.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the energy has no trainable parameters")
    optimizer = make_optimizer(tc, params)
    energy_ddp, optimizer = acc.prepare(energy, optimizer)
    model = acc.unwrap_model(energy_ddp)  # chains run here, never through DDP
    run = Run(
        config=cfg, energy=model, sampler=sampler, initializer=init, optimizer=optimizer,
        accelerator=acc, dataset=dataset, shape=shape, out_dir=out,
        generator=torch.Generator(device=dev).manual_seed(tc.seed * 7919 + 2 + rank),
        data_generator=torch.Generator().manual_seed(tc.seed * 7919 + 1 + rank),
        resume=resume,
    )
    if acc.is_main_process:
        run.say = say or print
    threads = torch.get_num_threads()
    if tc.threads:
        torch.set_num_threads(tc.threads)
    try:
        run_loop(run, callbacks, energy_ddp=energy_ddp, stop_after=stop_after)
    finally:
        torch.set_num_threads(threads)
    model.eval()  # as ebmkit.load returns it: energies of a fitted and a loaded model agree
    ebm = run.model()
    ebm.out_dir, ebm.last, ebm.completed = out, dict(run.row), run.completed
    if run.interrupted:
        raise _interrupted(run, ebm)
    return ebm


def _interrupted(run: Run, ebm: EBM) -> TrainingInterrupted:
    name = {2: "SIGINT", 15: "SIGTERM"}.get(run.interrupted, f"signal {run.interrupted}")
    if run.saved is not None and run.out_dir is not None:
        where = (f"checkpoint: {run.saved}; continue with: ebmkit run --resume {run.out_dir} "
                 "(or ebmkit.fit(out_dir=..., resume=True))")
    else:
        where = "nothing was saved (no out_dir); the model so far is the exception's .model"
    return TrainingInterrupted(f"interrupted by {name} after iteration {run.step}; {where}",
                               signum=run.interrupted, model=ebm, checkpoint=run.saved)


# ---------------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------------
def load(
    path: str | Path,
    *,
    energy: nn.Module | None = None,
    sampler: str | Mapping[str, Any] | Sampler | None = None,
    init: str | Mapping[str, Any] | Initializer | None = None,
    steps: int | None = None,
    overrides: Sequence[str] = (),
    device: str | torch.device = "cpu",
    registry: Any = None,
) -> EBM:
    """An :class:`EBM` from a model file (``.safetensors`` written by ``ebmkit run`` or
    :meth:`EBM.save`) or a run directory.

    From a run directory, a persistent initializer gets its saved chains back (samples then
    continue them, as the anatomy paper shows convergent models); from a file alone chains
    start from the initializer's noise prior. ``energy`` is a module to fill (needed for a
    custom energy); ``sampler`` / ``init`` replace the run's (names, dicts or objects);
    ``overrides`` are ``sampler.*`` / ``init.*`` settings (``"sampler.steps=60"``); ``steps`` the
    sampling K (default: ``train.sample_steps``, else the sampler's ``steps``).
    """
    from .plugins import build_registry

    reg = registry if registry is not None else build_registry()
    path = Path(path)
    run_dir = state = None
    if path.is_dir():  # a run directory: its newest complete checkpoint (model + chains)
        run_dir = path
        found = ckpt.find_checkpoint(run_dir)
        if found is not None:
            path, state = found[0] / ckpt.MODEL, found[0] / "rank0.safetensors"
        else:
            path, state = run_dir / ckpt.MODEL, run_dir / "train_state" / "rank0.safetensors"
        if not path.is_file():
            raise CheckpointError(f"{run_dir} holds no model.safetensors (is it an ebmkit run directory?)")
    dev = pick_device(str(device))
    energy_mod, meta = ckpt.load_energy(path, reg, device=dev, energy=energy)
    shape = meta["shape"]
    doc = {k: dict(v) for k, v in meta["config"].items() if k in (*SECTIONS, "train")}
    for o in overrides:
        if o.split(".", 1)[0] not in ("sampler", "init"):
            raise ConfigError(f"--set {o}: only sampler.* and init.* can be changed when sampling")
    try:  # the checkpoint's own document first: its faults are the file's, not the user's
        cfg = resolve(doc, reg)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: its run document does not fit this ebmkit ({exc})") from None
    objects: dict[str, Any] = {}
    for section, value in (("sampler", sampler), ("init", init)):
        if value is None:
            continue
        doc, obj = _component(doc, section, value, reg)
        if obj is not None:
            objects[section] = obj
    if objects or overrides or sampler is not None or init is not None:
        cfg = resolve(apply_overrides(doc, overrides), reg)  # the user's changes: ConfigError
    smp = objects.get("sampler")
    if smp is None:
        if cfg.classes["sampler"] is None:
            raise ConfigError(f"{path} was trained with a custom sampler; pass sampler=")
        smp = cfg.sampler()
    ini = objects.get("init")
    if ini is None:
        if cfg.classes["init"] is None:
            ini = PriorInitializer(Prior(shape))
        else:
            ini = cfg.initializer(shape)
            if init is not None and ini.needs_data:
                raise ConfigError(f"init '{ini.name}' cannot start chains without data; use init 'noise'")
    if state is not None and state.is_file() and init is None:
        tensors = ckpt.load_state(state)
        try:
            ini.load_state_dict({k[5:]: v.to(dev) for k, v in tensors.items() if k.startswith("init.")})
        except ValueError as exc:
            raise CheckpointError(f"{run_dir}: cannot restore the initializer's chains ({exc})") from None
    k = steps if steps is not None else sampling_steps(smp, cfg.train.sample_steps)
    ebm = EBM(energy_mod, smp, ini, steps=k, shape=shape, config=cfg, step=meta["step"], meta=meta,
              registry=reg)
    ebm.out_dir = run_dir
    return ebm


def evaluate(model: EBM, evaluator: str | Evaluator, *, data: Any = None,
             out_dir: str | Path = "eval", config: Mapping[str, Any] | None = None,
             registry: Any = None) -> EvalResult:
    """Run one evaluator on ``model``: a registered name (with ``config`` as a dict of its
    parameters) or an :class:`Evaluator` object. ``data`` is a dataset name, a
    :class:`DataSource`, a tensor, or ``None`` for the run's own dataset (when it has a
    registered one). Numbers come back in ``EvalResult.metrics``; JSON and PNGs go to
    ``out_dir``."""
    from .plugins import build_registry

    reg = registry if registry is not None else (model.registry or build_registry())
    if isinstance(evaluator, str):
        ev = reg.create("evaluator", evaluator, dict(config or {}))
    elif isinstance(evaluator, Evaluator):
        ev = evaluator
    else:
        raise ConfigError(f"evaluator must be a name or an Evaluator, not {type(evaluator).__name__}")
    if isinstance(data, str):
        source = reg.create("dataset", data, {})
    elif isinstance(data, (Tensor, Dataset)) and not isinstance(data, DataSource):
        source = InMemoryData(data)
    elif data is None and model.config is not None and model.config.classes["data"] is not None:
        source = model.config.data_source()
    else:
        source = data
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output directory {out} ({exc.strerror or exc}); "
                          "choose another --out / out_dir") from None
    return ev.evaluate(model, source, out)


def model_from(energy: nn.Module, sampler: Sampler | str | Mapping[str, Any] = "langevin",
               init: Initializer | str | Mapping[str, Any] | None = None, *,
               shape: tuple[int, ...] | None = None, steps: int | None = None,
               registry: Any = None) -> EBM:
    """An :class:`EBM` around an energy you already have (e.g. trained elsewhere)."""
    from .plugins import build_registry

    reg = registry if registry is not None else build_registry()
    shape = tuple(shape) if shape is not None else tuple(getattr(energy, "shape", ()) or ())
    if not shape:
        raise ConfigError("model_from needs shape= (one example's shape) for this energy")
    smp = sampler if isinstance(sampler, Sampler) else _build(reg, "sampler", sampler)
    if init is None:
        ini: Initializer = PriorInitializer(Prior(shape))
    elif isinstance(init, Initializer):
        ini = init
    else:
        ini = _build(reg, "initializer", init, shape)
    return EBM(energy, smp, ini, shape=shape, steps=steps, registry=reg)


def _build(reg, kind: str, value, *args):
    if isinstance(value, str):
        return reg.create(kind, value, {}, *args)
    table = dict(value)
    name = table.pop("name", None)
    if not name:
        raise ConfigError(f"{kind}: a dict needs a 'name'")
    return reg.create(kind, name, table, *args)


__all__ = ["Energy", "InMemoryData", "evaluate", "fit", "load", "model_from"]
