"""The library's front door: :func:`fit` trains an EBM, :func:`load` brings one back.

``ebmkit run`` and ``ebmkit sample`` / ``eval`` / ``toy`` are thin clients of these two
functions; everything they do is reachable from Python with objects instead of strings::

    import ebmkit
    ebm = ebmkit.fit(energy="convnet32", data="mnist5k", iterations=600, out_dir="runs/quick")
    x = ebm.sample(64, steps=40, seed=0)
    ebm.save("quick.safetensors"); ebm = ebmkit.load("quick.safetensors")
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from . import checkpoint as ckpt
from .callbacks import Callback, as_callbacks, default_callbacks
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
from .plugins import contained
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
                       "precision", "trackers", "time_budget", "cpu_budget"})
_KINDS = {"energy": "energy", "sampler": "sampler", "init": "initializer", "data": "dataset",
          "objective": "objective"}


# ---------------------------------------------------------------------------------------------
# data given as tensors / Datasets
# ---------------------------------------------------------------------------------------------
class InMemoryData(DataSource):
    """A user's tensor or numpy array ``[N, ...]`` (or a map-style ``Dataset`` of tensors /
    ``(tensor, label)``) as a data source. Images should be in ``[-1, 1]``; nothing is rescaled.
    float64/float16/bfloat16 values are converted to float32; integer or bool data is refused
    (:func:`ebmkit.checks.as_data`)."""

    name = CUSTOM
    summary = "Data given as a tensor, numpy array or Dataset."

    def __init__(self, data: Any):
        from .checks import as_data

        super().__init__(None)
        data = as_data(data)
        if isinstance(data, Tensor):
            if data.ndim < 2:
                raise ConfigError(f"data tensor must be [N, ...] with N examples, got shape {tuple(data.shape)}")
            if data.shape[0] == 0:
                raise ConfigError(f"data tensor holds no examples (shape {tuple(data.shape)})")
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
    ``diagnostics.csv``, ``plots/``, ``checkpoints/``). ``trackers=["mlflow", "wandb", ...]``
    (``train.trackers``) sends every logged metric to those experiment trackers as well.
    ``resume=True`` continues the run saved in ``out_dir`` from its newest complete checkpoint
    in ``checkpoints/``. ``callbacks`` (:class:`Callback` objects, or plain functions
    ``f(run, out)`` called after every iteration) run after the built-ins and before the
    plugins' (see :mod:`ebmkit.callbacks`); a callback that raises stops training with a
    checkpoint at that iteration and a :class:`~ebmkit.CallbackError`.
    """
    from .plugins import build_registry

    reg = registry if registry is not None else build_registry()
    objects: dict[str, Any] = {}
    out = Path(out_dir) if out_dir is not None else None
    created = False  # whether this call created out_dir (removed again if the run cannot start)
    notes: list[str] = []
    say_note = notes.append

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
        doc = _prior_follows_data(doc, objects.get("data"), reg, say_note)
        cfg = resolve(doc, reg)
        if out is not None:
            created = _check_out_dir(out, force=force)
    say = (lambda msg: console.print(msg, highlight=False, markup=False)) if console is not None else None
    origins: dict[int, str] = {}
    try:
        cbs = default_callbacks(cfg, out, progress=progress, console=console)
        cbs.extend(as_callbacks(callbacks))
        pm = getattr(reg, "pm", None)
        if pm is not None:
            from .plugins import plugin_callbacks

            cbs.extend(plugin_callbacks(pm, cfg, out, origins=origins))
    except BaseException:
        _remove_if_empty(out, created)
        raise
    return _train(cfg, objects, out, cbs, resume=resume, stop_after=stop_after, say=say,
                  origins=origins, created=created, notes=notes)


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


def _prior_follows_data(doc: dict, data: Any, reg: Any, say) -> dict:
    """Tensor data outside the initializer's uniform prior box (the ``noise`` initializer's
    ``init.low``/``init.high``, default ``[-1, 1]``): chains started there could not reach the
    data's range, and training would "work" while the samples stay inside the box. When the
    document does not set the bounds, they follow the data (rounded outward to 0.1, recorded in
    run.toml) and a note says so; when it sets them, a note says the data leave them."""
    if not isinstance(data, InMemoryData):
        return doc
    from .datastream import tensor_of

    x = tensor_of(data.open())
    if x is None or x.numel() == 0 or not torch.is_floating_point(x):
        return doc
    table = dict(doc.get("init", {}))
    name = table.pop("name", None)
    try:
        cls = reg.get("initializer", name)
        prior = reg.create("initializer", name, dict(table), tuple(data.shape)).prior
    except Exception:
        return doc  # a custom or misconfigured initializer: resolve() reports the latter
    bounds = prior.bounds if prior is not None else None
    if bounds is None:
        return doc
    lo, hi = float(x.min()), float(x.max())
    low, high = bounds
    if lo >= low and hi <= high:
        return doc
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    if "low" in table or "high" in table or not {"low", "high"} <= fields:
        say(f"note: the data range [{lo:.3g}, {hi:.3g}] leaves the chains' prior box [{low:g}, "
            f"{high:g}] (init.low/init.high); chains start inside it")
        return doc
    import math

    new_low = min(low, math.floor(lo * 10) / 10)
    new_high = max(high, math.ceil(hi * 10) / 10)
    say(f"note: the data range [{lo:.3g}, {hi:.3g}] leaves the default prior box [{low:g}, {high:g}]; "
        f"chains start uniform on [{new_low:g}, {new_high:g}] instead (init.low/init.high, "
        "recorded in run.toml; set them to choose)")
    return merge(doc, {"init": {"low": new_low, "high": new_high}})


def _check_out_dir(out: Path, *, force: bool) -> bool:
    """A fresh run's directory: refuse one that holds a run (unless forced); create it now, so
    a path that cannot be a directory fails before anything else happens. Returns whether it
    was created here."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output directory {out} is a file; choose another --out / out_dir")
    held = [m for m in RUN_MARKERS if (out / m).exists()]
    if held and not force:
        raise ConfigError(f"{out} already holds a run ({held[0]}); resume it (resume=True / "
                          f"--resume {out}), choose another output directory, or force=True / --force")
    existed = out.is_dir()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output directory {out} ({exc.strerror or exc}); "
                          "choose another --out / out_dir") from None
    return not existed


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
    if section == "data":
        from .checks import as_data

        value = as_data(value)  # a numpy array becomes a tensor; float64 -> float32
        if isinstance(value, (Tensor, Dataset)) and not isinstance(value, DataSource):
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


def _remove_if_empty(out: Path | None, created: bool) -> None:
    """A run that cannot start leaves no empty run directory behind (only one this call made)."""
    if created and out is not None and out.is_dir() and not any(out.iterdir()):
        out.rmdir()


def _train(cfg: RunConfig, objects: dict[str, Any], out: Path | None, callbacks: Sequence[Callback],
           *, resume: bool, stop_after: int | None, say: Any = None,
           origins: dict[int, str] | None = None, created: bool = False,
           notes: Sequence[str] = ()) -> EBM:
    try:
        run, energy_ddp = _build_run(cfg, objects, out, resume=resume)
    except BaseException:
        _remove_if_empty(out, created)
        raise
    if run.is_main:
        run.say = say or print
    for note in notes:
        run.say(note)
    run.origins = dict(origins or {})
    tc = cfg.train
    threads = torch.get_num_threads()
    if tc.threads:
        torch.set_num_threads(tc.threads)
    try:
        with contained(_components(run), cfg.registry, doing=" failed during training"):
            run_loop(run, callbacks, energy_ddp=energy_ddp, stop_after=stop_after)
    finally:
        torch.set_num_threads(threads)
    for module in (run.energy, run.ema):
        if module is not None:
            module.eval()  # as ebmkit.load returns it: energies of a fitted and a loaded model agree
    ebm = run.model()
    ebm.out_dir, ebm.last, ebm.completed = out, dict(run.row), run.completed
    if run.interrupted:
        raise _interrupted(run, ebm)
    return ebm


def _components(run: Run) -> dict[str, Any]:
    return {"energy": run.energy, "sampler": run.sampler, "initializer": run.initializer,
            "objective": run.objective, "dataset": run.dataset}


def _probe_batch(dataset: Any, shape: tuple[int, ...]) -> Tensor:
    """Two examples to check the energy on before the first step: drawn from data held in
    memory (its dtype and shape, as training will see them); for a shard stream, uniform noise
    of the data's shape, so that only the training stream reads the shards (each rank reads
    each example of an epoch once)."""
    from .datastream import draw, is_stream

    if is_stream(dataset):
        return torch.rand(2, *shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return draw(dataset, 2, torch.Generator().manual_seed(0))


def _build_run(cfg: RunConfig, objects: dict[str, Any], out: Path | None, *, resume: bool):
    """The components, optimizer and accelerator of a run, checked before anything is written."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from .checks import check_energy

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
    objective = objects.get("objective") or cfg.objective()
    if tuple(init.shape) != shape:
        raise ConfigError(f"the initializer makes chains of shape {tuple(init.shape)} but the data has shape {shape}")
    cap = init.capacity
    if cap is not None and cap < tc.batch_size:
        raise ConfigError(f"initializer '{init.name}' holds {cap} chains but every iteration needs "
                          f"train.batch_size = {tc.batch_size}; raise its capacity or lower the batch size")
    if objective.needs_labels and not _has_labels(dataset):
        raise ConfigError(f"objective '{getattr(objective, 'name', type(objective).__name__)}' needs "
                          "labels but the data has none; use labelled data ((x, y) items) or another objective")
    params = [p for p in energy.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the energy has no trainable parameters")
    with contained({"energy": energy, "dataset": source}, cfg.registry,
                   doing=" failed on a first batch of the data"):
        check_energy(energy, _probe_batch(dataset, shape).to(dev))
    optimizer = make_optimizer(tc, params)
    energy_ddp, optimizer = acc.prepare(energy, optimizer)
    model = acc.unwrap_model(energy_ddp)  # chains run here, never through DDP
    run = Run(
        config=cfg, energy=model, sampler=sampler, initializer=init, optimizer=optimizer,
        accelerator=acc, dataset=dataset, shape=shape, out_dir=out,
        generator=torch.Generator(device=dev).manual_seed(tc.seed * 7919 + 2 + rank),
        data_generator=torch.Generator().manual_seed(tc.seed * 7919 + 1 + rank),
        resume=resume, objective=objective, labels=bool(objective.needs_labels),
        checkpoints=(ckpt.CheckpointManager(out, keep=tc.keep, fault=ckpt.KillAt.from_environment())
                     if out is not None else None),
        ema=copy.deepcopy(model).requires_grad_(False) if tc.ema > 0 else None,
    )
    return run, energy_ddp


def _has_labels(dataset) -> bool:
    """Whether the data's items carry labels (``TensorDataset(x, y)`` or ``(x, y)`` items)."""
    from .datastream import labels_of, tensor_of

    if tensor_of(dataset) is not None:
        return labels_of(dataset) is not None
    try:
        first = dataset[0]
    except Exception:
        return True  # an iterable (shards): the stream checks its batches
    return isinstance(first, (tuple, list)) and len(first) > 1 and isinstance(first[1], Tensor)


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
    energy: nn.Module | type[nn.Module] | None = None,
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
    custom energy), or its class: an :class:`Energy` subclass is built as ``cls(config, shape)``
    from the checkpoint's ``[energy]`` settings, any other ``nn.Module`` class as ``cls()``
    (one that needs arguments: pass an instance); ``sampler`` / ``init`` replace the run's (names, dicts or objects);
    ``overrides`` are ``sampler.*`` / ``init.*`` settings (``"sampler.steps=60"``); ``steps`` the
    sampling K (default: ``train.sample_steps``, else the sampler's ``steps``).
    """
    from .plugins import build_registry

    reg = registry if registry is not None else build_registry()
    path = Path(path)
    run_dir = manager = None
    if path.is_dir():  # a run directory: its newest complete checkpoint (model + chains)
        run_dir, manager = path, ckpt.CheckpointManager(path)
        model_file = manager.model_file()
        if model_file is None:
            raise CheckpointError(f"{run_dir} holds no model.safetensors (is it an ebmkit run directory?)")
        path = model_file
    try:
        dev = pick_device(str(device))
    except ConfigError as exc:  # a typo's hint speaks the command line's language; add Python's
        raise ConfigError(str(exc).replace("fix --device (or train.device)",
                                           "fix device= (--device)")) from None
    built = None
    if isinstance(energy, type):
        energy = built = _energy_from_class(energy, path)
    elif energy is not None and not isinstance(energy, nn.Module):
        raise ConfigError(f"energy= must be an nn.Module (an instance of the class that was "
                          f"trained) or that class, got {type(energy).__name__}")
    try:
        energy_mod, meta = ckpt.load_energy(path, reg, device=dev, energy=energy)
    except CheckpointError as exc:
        if built is None or "do not fit" not in str(exc):
            raise
        cls = type(built).__name__
        how = "from the checkpoint's [energy] settings" if isinstance(built, Energy) else "as {cls}()"
        raise CheckpointError(f"{exc}; energy={cls} was built {how.format(cls=cls)}: pass an "
                              f"instance built as in training, energy={cls}(...)") from None
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
    chains = manager.initializer_state() if manager is not None and init is None else {}
    if chains:
        try:
            ini.load_state_dict({k: v.to(dev) for k, v in chains.items()})
        except ValueError as exc:
            raise CheckpointError(f"{run_dir}: cannot restore the initializer's chains ({exc})") from None
    k = steps if steps is not None else sampling_steps(smp, cfg.train.sample_steps)
    ebm = EBM(energy_mod, smp, ini, steps=k, shape=shape, config=cfg, step=meta["step"], meta=meta,
              registry=reg)
    ebm.out_dir = run_dir
    if energy is not None:  # the user's module: can it be sampled from? (a registered one can)
        ebm.check()
    return ebm


def _energy_from_class(cls: type, path: Path) -> nn.Module:
    """``load(path, energy=<a class>)``: an :class:`Energy` subclass built from the checkpoint's
    ``[energy]`` settings and shape, any other module class with no arguments."""
    from .errors import EbmkitError
    from .params import build

    name = cls.__name__
    if not issubclass(cls, nn.Module):
        raise ConfigError(f"energy={name} is not an nn.Module class; pass the trained energy's "
                          "class or an instance of it")
    if issubclass(cls, Energy):
        meta = ckpt.read_checkpoint(path)
        table = {k: v for k, v in meta["config"].get("energy", {}).items() if k not in ("name", "class")}
        try:
            return cls(build(cls.Config, table, where="energy"), tuple(meta["shape"]))
        except EbmkitError as exc:
            reason = str(exc)
        except Exception as exc:  # the user's constructor
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        raise ConfigError(f"cannot build energy={name} from {path}'s [energy] settings "
                          f"({reason}); pass an instance: ebmkit.load(path, energy={name}(...))")
    try:
        return cls()
    except Exception as exc:  # the user's constructor: most often missing arguments
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"energy={name} is a class that cannot be built without arguments "
                          f"({text}); pass an instance: ebmkit.load(path, energy={name}(...))") from None


def evaluate(model: EBM, evaluator: str | Evaluator, *, data: Any = None,
             out_dir: str | Path | None = "eval", config: Mapping[str, Any] | None = None,
             registry: Any = None) -> EvalResult:
    """Run one evaluator on ``model``: a registered name (with ``config`` as a dict of its
    parameters) or an :class:`Evaluator` object. ``data`` is a dataset name, a
    :class:`DataSource`, a tensor or numpy array, or ``None`` for the run's own dataset (when
    it has a registered one). Numbers come back in ``EvalResult.metrics``; JSON and PNGs go to
    ``out_dir`` (listed in ``EvalResult.figures``). ``out_dir=None`` computes in memory and
    writes no file anywhere (``figures`` is then empty)."""
    from .plugins import build_registry

    reg = registry if registry is not None else (model.registry or build_registry())
    if isinstance(evaluator, str):
        ev = reg.create("evaluator", evaluator, dict(config or {}))
    elif isinstance(evaluator, Evaluator):
        ev = evaluator
    else:
        raise ConfigError(f"evaluator must be a name or an Evaluator, not {type(evaluator).__name__}")
    from .checks import as_data

    data = as_data(data)  # a numpy array becomes a tensor
    if isinstance(data, str):
        source = reg.create("dataset", data, {})
    elif isinstance(data, (Tensor, Dataset)) and not isinstance(data, DataSource):
        source = InMemoryData(data)
    elif data is None and model.config is not None and model.config.classes["data"] is not None:
        source = model.config.data_source()
    else:
        source = data
    out = Path(out_dir) if out_dir is not None else None  # None: in memory, no file written
    try:
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output directory {out} ({exc.strerror or exc}); "
                          "choose another out_dir= / --out, or out_dir=None to keep the results "
                          "in memory") from None
    return run_evaluator(ev, model, source, out, reg)


def run_evaluator(ev: Evaluator, model: EBM, source: Any, out: Path | None, reg: Any) -> EvalResult:
    """``ev.evaluate(model, source, out)`` with plugin failures contained: an exception from a
    plugin's evaluator (or the plugin sampler/energy/initializer/dataset it drives) is one
    :class:`PluginError` line naming the plugin and the component, the original as ``__cause__``."""
    name = getattr(ev, "name", "") or type(ev).__name__
    parts = {"evaluator": ev, "sampler": model.sampler, "energy": model.energy,
             "initializer": model.initializer, "dataset": source}
    with contained(parts, reg, context=f"evaluator '{name}'"):
        return ev.evaluate(model, source, out)


def model_from(energy: nn.Module, sampler: Sampler | str | Mapping[str, Any] = "langevin",
               init: Initializer | str | Mapping[str, Any] | None = None, *,
               shape: tuple[int, ...] | None = None, steps: int | None = None,
               registry: Any = None) -> EBM:
    """An :class:`EBM` around an energy you already have (e.g. trained elsewhere). The energy is
    checked once on two noise examples (:func:`ebmkit.checks.check_energy`)."""
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
    ebm = EBM(energy, smp, ini, shape=shape, steps=steps, registry=reg)
    ebm.check()  # a wrong input size or a [B, 1] / scalar output fails here, in one line
    return ebm


def _build(reg, kind: str, value, *args):
    if isinstance(value, str):
        return reg.create(kind, value, {}, *args)
    table = dict(value)
    name = table.pop("name", None)
    if not name:
        raise ConfigError(f"{kind}: a dict needs a 'name'")
    return reg.create(kind, name, table, *args)


__all__ = ["Energy", "InMemoryData", "evaluate", "fit", "load", "model_from"]
