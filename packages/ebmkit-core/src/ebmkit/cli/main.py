"""``ebmkit`` commands: run, sample, list, describe, plugins (+ commands added by plugins)."""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import ConfigError, EbmkitError, TrainingInterrupted
from ..params import parse_override

app = typer.Typer(
    name="ebmkit",
    help="Learn energy-based models by MCMC-based maximum likelihood.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


_DEFAULT: tuple | None = None


def _default():
    """The CLI's per-process plugin manager and registry (built on first use). The library never
    uses a global registry; the CLI passes this one to every library call."""
    global _DEFAULT
    if _DEFAULT is None:
        from ..plugins import build_registry, get_plugin_manager

        pm = get_plugin_manager()
        _DEFAULT = (pm, build_registry(pm))
    return _DEFAULT


def _registry():
    if _CACHED is not None:  # --help / list / describe answered from the listing cache
        return _CACHED
    return _default()[1]


_CACHED = None  # a registry of stand-ins read from the listing cache (cli/listing.py)
_CACHED_TRAIN: tuple[str, list] = ("", [])  # [train]'s doc and parameter rows, from the cache
#: Commands answered from the listing cache when it is fresh: nothing imports torch for them.
_LIGHT = {"list", "describe"}


def _completer(kind: str):
    def complete(incomplete: str):
        try:
            return [n for n in _registry().names(kind) if n.startswith(incomplete)]
        except Exception:  # completion must never crash the shell
            return []

    return complete


def _check_name(kind: str):
    """Typer callback: validate a component name against the registry (did-you-mean)."""

    def check(value: str | None):
        if value is not None:
            _registry().get(kind, value)  # raises UnknownComponentError (one line)
        return value

    return check


EnergyOpt = Annotated[str | None, typer.Option("--energy", "-e", help="Energy name (ebmkit list energies).",
                                                autocompletion=_completer("energy"), callback=_check_name("energy"))]
SamplerOpt = Annotated[str | None, typer.Option("--sampler", "-s", help="Sampler name (ebmkit list samplers).",
                                                 autocompletion=_completer("sampler"), callback=_check_name("sampler"))]
InitOpt = Annotated[str | None, typer.Option("--init", "-i", help="Chain initializer (ebmkit list initializers).",
                                              autocompletion=_completer("initializer"), callback=_check_name("initializer"))]
DataOpt = Annotated[str | None, typer.Option("--data", "-d", help="Dataset name (ebmkit list datasets).",
                                              autocompletion=_completer("dataset"))]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override SECTION.KEY=VALUE (repeatable), e.g. sampler.steps=40.")]


def _data_name(value: str | None) -> tuple[str | None, list[str]]:
    """``--data NAME`` or ``--data shards:PATTERN`` (a dataset plugin may define a prefix)."""
    if value is None:
        return None, []
    if ":" in value:
        prefix, rest = value.split(":", 1)
        _registry().get("dataset", prefix)
        return prefix, [f"data.path={rest}"]
    _registry().get("dataset", value)
    return value, []


@app.command()
def run(
    preset: Annotated[str | None, typer.Option("--preset", "-p", help="Start from a preset (ebmkit list presets).",
                                               autocompletion=_completer("preset"))] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="A run TOML file.")] = None,
    energy: EnergyOpt = None,
    sampler: SamplerOpt = None,
    init: InitOpt = None,
    data: DataOpt = None,
    set_: SetOpt = None,
    iterations: Annotated[int | None, typer.Option("--iterations", "-n", help="Shortcut for --set train.iterations=N.")] = None,
    seed: Annotated[int | None, typer.Option(help="Shortcut for --set train.seed=N.")] = None,
    device: Annotated[str | None, typer.Option(help="Shortcut for --set train.device=...")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory (default runs/<name>-<time>).")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue the run saved in this directory.")] = None,
    force: Annotated[bool, typer.Option(help="Start a new run in a directory that already holds one (its checkpoints are removed).")] = False,
    keep: Annotated[int | None, typer.Option("--keep", min=1, help="Complete checkpoints to keep (shortcut for --set train.keep=N).")] = None,
    download: Annotated[bool, typer.Option("--download", help="Allow the dataset to be downloaded (shortcut for --set data.download=true).")] = False,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and exit.")] = False,
):
    """Train an EBM (Algorithm 1): data -> MCMC negatives -> mean U(x+) - mean U(x-)."""
    from .. import api
    from ..runconfig import RunConfig, build_document, load_toml, resolve

    reg = _registry()
    if reg.load_errors:  # a run without a plugin the user may be counting on: say which
        from ..plugins import failed_plugins_line

        err_console.print(f"[yellow]warning: {escape(failed_plugins_line(reg.load_errors))}[/]",
                          highlight=False, soft_wrap=True)
    overrides = list(set_ or [])
    if iterations is not None:
        overrides.append(f"train.iterations={iterations}")
    if seed is not None:
        overrides.append(f"train.seed={seed}")
    if device is not None:
        overrides.append(f"train.device={device}")
    if download:
        overrides.append("data.download=true")
    if keep is not None:
        overrides.append(f"train.keep={keep}")

    if resume is not None:
        if any(v is not None for v in (preset, config, energy, sampler, init, data)):
            raise ConfigError("--resume continues a saved run; only --set train.iterations=... (and logging options) may change")
        train_opts: dict = {}
        plugin_opts: dict = {}
        for o in overrides:
            section, key, value = parse_override(o)
            if section == "plugins" and key.count(".") == 1:  # checked by fit: resumable keys only
                plugin, sub = key.split(".")
                plugin_opts.setdefault(plugin, {})[sub] = value
                continue
            if section != "train" or key not in api.RESUMABLE:
                raise ConfigError(f"--set {section}.{key} cannot change on resume; allowed: "
                                  + ", ".join(f"train.{k}" for k in sorted(api.RESUMABLE))
                                  + " and the plugins' resumable options (ebmkit describe options NAME)")
            train_opts[key] = value
        out_dir = resume
        # the header line only; fit() reports a missing or damaged run.toml
        spec = RunConfig.from_toml(resume / "run.toml", registry=reg) if (resume / "run.toml").is_file() else None
        fit_args = dict(out_dir=resume, resume=True, plugins=plugin_opts or None, **train_opts)
    else:
        data_name, data_over = _data_name(data)
        preset_doc = reg.get("preset", preset).read() if preset else None
        config_doc = load_toml(config) if config else None
        doc = build_document(preset_doc=preset_doc, config_doc=config_doc,
                             names={"energy": energy, "sampler": sampler, "init": init, "data": data_name},
                             overrides=data_over + overrides)
        spec = resolve(doc, reg)
        shape = spec.data_source().shape
        spec.energy(shape), spec.initializer(shape)  # fail now, not after loading data
        if dry_run:
            console.print(spec.to_toml(), highlight=False, markup=False)
            return
        tag = preset or spec.name("energy")
        out_dir = out or Path("runs") / f"{tag}-{time.strftime('%Y%m%d-%H%M%S')}"
        fit_args = dict(config=spec, out_dir=out_dir, force=force)

    quiet = int(os.environ.get("RANK", "0")) != 0  # under torchrun/accelerate only rank 0 talks
    say = (lambda *a, **k: None) if quiet else console.print
    if spec is not None:
        k = getattr(spec.configs["sampler"], "steps", "?")
        prec = _header_precision(spec)
        say(f"[bold]ebmkit run[/] energy={spec.name('energy')} sampler={spec.name('sampler')} "
            f"init={spec.name('init')} data={spec.name('data')}  iterations={spec.train.iterations} "
            f"batch={spec.train.batch_size} K={k} threads={spec.train.threads or _default_threads()} "
            f"precision={prec}"
            f"  -> {escape(str(out_dir))}", highlight=False)
    ebm = api.fit(registry=reg, progress=progress, console=console, **fit_args)
    if ebm.step and ebm.last:
        lt = ebm.last
        say(f"done: step {ebm.step}, d_t {lt['d_t']:+.4g}, v_t {lt['v_t']:.4g}", highlight=False)
    say(f"checkpoint: {out_dir / 'model.safetensors'}\nsamples:    {out_dir / 'samples'}\n"
        f"diagnostics: {out_dir / 'diagnostics.csv'}, {out_dir / 'plots'}", highlight=False, markup=False)


@app.command()
def sample(
    checkpoint: Annotated[Path, typer.Argument(help="A model .safetensors written by ebmkit run (or a run directory).")],
    n: Annotated[int, typer.Option("-n", min=1, help="Number of samples.")] = 64,
    steps: Annotated[int | None, typer.Option("--steps", "-k", min=0, help="MCMC steps K (default: the run's sampling K).")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG grid (or .safetensors for raw tensors).")] = Path("samples.png"),
    sampler: SamplerOpt = None,
    init: InitOpt = None,
    set_: SetOpt = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    noise: Annotated[bool, typer.Option(help="Langevin noise on/off (off: the deterministic generator x = M(z)).")] = True,
    device: Annotated[str, typer.Option(help="cpu, cuda, auto.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Chains run at once.")] = 256,
    class_: Annotated[int | None, typer.Option("--class", help="A conditional model only: sample this class (p(x | y)).")] = None,
    by_class: Annotated[bool, typer.Option("--by-class", help="A conditional model only: -n samples of every class, a row per class.")] = False,
):
    """Draw samples from a checkpoint (needs nothing but the .safetensors file)."""
    import torch

    from .. import api
    from ..images import save_grid

    if output.is_dir():
        raise ConfigError(f"-o {output} is a directory; give a .png grid or a .safetensors file path")
    if output.parent.exists() and not output.parent.is_dir():
        raise ConfigError(f"-o {output}: {output.parent} is a file, not a directory; choose another -o")

    model = api.load(checkpoint, sampler=sampler, init=init, overrides=list(set_ or []),
                     steps=steps, device=device, registry=_registry())
    t0 = time.perf_counter()
    if by_class and class_ is not None:
        raise ConfigError("--class and --by-class exclude each other: choose one")
    if by_class:  # plugin failures and unconditional models: one line
        x = model.class_grid(n, seed=seed, noise=noise, batch_size=batch_size)
    else:
        x = model.sample(n, seed=seed, noise=noise, batch_size=batch_size, y=class_)
    n = len(x)
    dt = time.perf_counter() - t0
    k = model.steps
    if not torch.isfinite(x).all():
        raise EbmkitError(f"sampling produced non-finite values with K={k}; try fewer --steps or a smaller step size")
    if output.suffix == ".safetensors":
        from safetensors.torch import save_file

        from ..checkpoint import atomic_write

        try:
            atomic_write(output, lambda p: save_file({"samples": x.cpu().contiguous()}, p,
                                                     metadata={"steps": str(k), "source": str(checkpoint)}))
        except OSError as exc:
            raise ConfigError(f"cannot write {output} ({exc.strerror or exc}); choose another -o") from None
    elif len(model.shape) == 3:
        save_grid(x, output, nrow=len(x) // model.n_classes) if by_class else save_grid(x, output)
    else:
        raise ConfigError(f"samples of shape {tuple(model.shape)} are not images; use -o samples.safetensors")
    console.print(f"{n} samples, K={k}, {dt:.1f}s -> {output}", highlight=False, markup=False)


@app.command("eval")
def eval_(
    checkpoint: Annotated[Path, typer.Argument(help="A model .safetensors written by ebmkit run (or a run directory).")],
    evaluator: Annotated[list[str], typer.Option("--evaluator", "-e", help="Evaluator name (repeatable; ebmkit list evaluators).",
                                                 autocompletion=_completer("evaluator"))],
    set_: Annotated[list[str] | None, typer.Option("--set", help="EVALUATOR.KEY=VALUE, e.g. longrun.steps=5000 (repeatable).")] = None,
    data: DataOpt = None,
    steps: Annotated[int | None, typer.Option("--steps", "-k", min=0, help="Sampling K (default: the run's).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output directory (default: eval/ next to the checkpoint).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, auto.")] = "auto",
    n: Annotated[int | None, typer.Option("--n", min=1, help="Sets EVALUATOR.n for each evaluator that has it (--set wins).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Sets EVALUATOR.seed for each evaluator that has it (--set wins).")] = None,
):
    """Evaluate a checkpoint: numbers (printed, and JSON) and pictures (PNG)."""
    from .. import api
    from ..params import params

    reg = _registry()
    per_eval: dict[str, dict[str, str]] = {name: {} for name in evaluator}
    for name in evaluator:
        keys = {p.name for p in params(reg.get("evaluator", name).Config)}
        per_eval[name].update({k: str(v) for k, v in (("n", n), ("seed", seed)) if v is not None and k in keys})
    for o in set_ or []:
        section, key, value = parse_override(o)
        if section not in per_eval:
            raise ConfigError(f"--set {o}: the section must be one of the chosen evaluators: {', '.join(evaluator)}")
        per_eval[section][key] = value
    model = api.load(checkpoint, steps=steps, device=device, registry=reg)
    data_name, data_over = _data_name(data)
    source = _eval_data(model, data_name, data_over, reg)
    out_dir = out or (checkpoint if checkpoint.is_dir() else checkpoint.parent) / "eval"
    failed: list[tuple[str, str]] = []
    for name in evaluator:
        t0 = time.perf_counter()
        try:
            result = api.evaluate(model, name, data=source, out_dir=out_dir, config=per_eval[name],
                                  registry=reg)
        except EbmkitError as exc:  # the other evaluators still run; a summary at the end
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            failed.append((name, str(exc)))
            continue
        table = Table(title=f"{name} ({time.perf_counter() - t0:.1f}s)")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in result.metrics.items():
            table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
        console.print(table)
        for key, path in result.figures.items():
            console.print(f"{key}: {path}", highlight=False, markup=False)
    if failed:
        ok = [n for n in evaluator if n not in {f for f, _ in failed}]
        raise EbmkitError(f"{len(failed)} of {len(evaluator)} evaluators failed "
                          f"({', '.join(n for n, _ in failed)}); "
                          f"{'finished: ' + ', '.join(ok) + f' (outputs in {out_dir})' if ok else 'none finished'}")


def _eval_data(model, data_name, data_over, reg):
    """The data an evaluator compares against: ``--data`` or the run's own dataset."""
    from ..runconfig import apply_overrides, merge, resolve

    doc = model.config.to_dict()
    if data_name:
        doc = apply_overrides(merge(doc, {"data": {"name": data_name}}), data_over)
    spec = resolve(doc, reg)
    if spec.classes["data"] is None:
        return None
    return spec.data_source()


@app.command("list")
def list_(
    kind: Annotated[str | None, typer.Argument(help="energies, samplers, initializers, evaluators, datasets, objectives, options (plugins' [plugins.NAME] tables) or presets.")] = None,
):
    """List registered components: name, plugin, version, description."""
    from ..plugins import normalize_kind

    reg = _registry()
    kinds = [normalize_kind(kind)] if kind else ["energy", "sampler", "initializer", "dataset",
                                                 "evaluator", "objective", "options", "preset"]
    table = Table(show_lines=False)
    if not kind:
        table.add_column("kind", style="magenta")
    table.add_column("name", style="bold cyan")
    table.add_column("plugin")
    table.add_column("version")
    table.add_column("description")
    for k in kinds:
        for e in reg.entries(k):
            row = [e.name, e.dist or e.plugin, e.version, escape(e.summary)]
            table.add_row(*([k] if not kind else []), *row)
    console.print(table)
    if reg.load_errors:
        from ..plugins import failed_plugins_line

        err_console.print(f"[yellow]{escape(failed_plugins_line(reg.load_errors))}[/]",
                          highlight=False, soft_wrap=True)


@app.command()
def describe(
    kind: Annotated[str, typer.Argument(help="energy, sampler, initializer, evaluator, dataset, objective, options (a plugin's [plugins.NAME] table), preset or train.")],
    name: Annotated[str | None, typer.Argument(help="Registered name.")] = None,
):
    """Show a component's parameters (name, type, default, meaning) or a preset's TOML."""
    from ..plugins import normalize_kind
    from . import listing

    reg = _registry()
    if kind == "train":
        title = "[train] options"
        if _CACHED is not None:
            doc, rows = _CACHED_TRAIN
        else:
            from ..runconfig import TrainConfig

            doc, rows = TrainConfig.__doc__ or "", listing.param_rows(TrainConfig)
    else:
        k = normalize_kind(kind)
        if name is None:
            raise ConfigError(f"ebmkit describe {kind} NAME: give a name; known: {', '.join(reg.names(k))}")
        entry = reg.entry(k, name)
        if k == "preset":
            console.print(f"[bold]{name}[/]: {entry.summary}\n")
            console.print(entry.obj.path.read_text(), highlight=False, markup=False)
            return
        title = f"{k} [bold cyan]{name}[/] ({entry.dist or entry.plugin} {entry.version})"
        rows = listing.rows_of(entry.obj)
        doc = entry.summary
    console.print(title)
    if doc:
        console.print(doc, highlight=False, markup=False)
    table = Table()
    for col in ("parameter", "type", "default", "description"):
        table.add_column(col)
    for p in rows:
        extra = []
        if p["choices"]:
            extra.append("one of: " + ", ".join(p["choices"]))
        if p["min"] is not None:
            extra.append((">" if p["min_exclusive"] else ">=") + f" {p['min']}")
        if p["max"] is not None:
            extra.append(f"<= {p['max']}")
        desc = escape(p["help"] + (f" [{'; '.join(extra)}]" if extra else ""))
        default = "(required)" if p["required"] else p["default"]
        table.add_row(p["name"], p["type_name"], default, desc)
    console.print(table)


@app.command()
def plugins():
    """Installed plugins: distribution, version, hooks implemented, load errors."""
    from ..plugins import plugin_infos

    pm, reg = _default()
    table = Table()
    for col in ("plugin", "distribution", "version", "hooks", "status"):
        table.add_column(col)
    for info in plugin_infos(pm):
        status = "[red]error: " + escape(info.error) + "[/]" if info.error else ("[yellow]blocked[/]" if info.blocked else "[green]ok[/]")
        table.add_row(info.name, info.dist, info.version, ", ".join(info.hooks), status)
    console.print(table)


_CORE_COMMANDS: tuple[list, list] | None = None


def _add_plugin_commands() -> None:
    """(Re)build the plugin commands on top of the core ones: repeated ``main()`` calls (tests)
    never duplicate a command, and a different plugin set replaces the previous one."""
    global _CORE_COMMANDS
    from ..plugins import call_impl

    if _CORE_COMMANDS is None:
        _CORE_COMMANDS = (list(app.registered_commands), list(app.registered_groups))
    app.registered_commands[:] = _CORE_COMMANDS[0]
    app.registered_groups[:] = _CORE_COMMANDS[1]
    _add_core_commands()
    n_core = len(app.registered_commands), len(app.registered_groups)
    pm, reg = _default()
    for impl in pm.hook.ebmkit_cli.get_hookimpls():
        n_commands, n_groups = len(app.registered_commands), len(app.registered_groups)
        try:
            call_impl(impl, app=app)
            typer.main.get_command(app)  # build now: a command typer cannot build is this plugin's
        except Exception as exc:  # a plugin's CLI hook must not break the CLI
            del app.registered_commands[n_commands:], app.registered_groups[n_groups:]
            err_console.print(f"[yellow]plugin '{impl.plugin_name}' failed to add commands: {exc}[/]")
    from . import listing

    if listing.cache_path() is not None:  # refresh the cache --help / list / describe read
        added = [*app.registered_commands[n_core[0]:], *app.registered_groups[n_core[1]:]]
        listing.write(listing.snapshot(reg, [_command_summary(c) for c in added]),
                      listing.fingerprint())


def _command_summary(info) -> dict[str, str]:
    """Name and one-line help of a command (or group) a plugin added, for the listing cache."""
    import inspect

    from typer.models import TyperInfo

    if isinstance(info, TyperInfo):  # a group (app.add_typer)
        sub = info.typer_instance
        text = info.help or (sub.info.help if sub is not None else None) or ""
        return {"name": str(info.name or ""), "help": str(text).strip().split("\n")[0], "group": True}
    cb = info.callback
    name = info.name or (cb.__name__.lower().replace("_", "-") if cb is not None else "")
    text = info.help or inspect.getdoc(cb) or ""
    return {"name": str(name), "help": str(text).strip().split("\n")[0], "group": False}


def _add_cached_commands(doc) -> None:
    """Stand-ins for the commands plugins add, so ``ebmkit --help`` lists them (light path)."""
    global _CORE_COMMANDS
    if _CORE_COMMANDS is None:
        _CORE_COMMANDS = (list(app.registered_commands), list(app.registered_groups))
    app.registered_commands[:] = _CORE_COMMANDS[0]
    app.registered_groups[:] = _CORE_COMMANDS[1]
    _add_core_commands()
    for c in doc.get("commands", []):
        if c.get("group"):
            stand_in = typer.Typer(help=c["help"])
            stand_in.command("_", hidden=True)(lambda: None)
            app.add_typer(stand_in, name=c["name"])
        else:
            app.command(c["name"], help=c["help"], add_help_option=False)(lambda: None)


def _header_precision(spec) -> str:
    """train.precision as the run will use it (``auto`` resolved on the run's device)."""
    from ebmkit.training import pick_device, resolve_precision

    p = spec.train.precision
    if p != "auto":
        return p
    try:
        return f"auto->{resolve_precision(p, pick_device(spec.train.device), spec.sampler())}"
    except Exception:  # noqa: BLE001 - the header never fails a run; fit reports config errors
        return p


def _default_threads() -> int:
    import torch

    return torch.get_num_threads()


def _light(args: list[str]) -> bool:
    """``ebmkit``, ``ebmkit --help`` and ``ebmkit list|describe ...``: no plugin needs loading."""
    if not args or args[0] in ("--help", "-h"):
        return True
    return args[0] in _LIGHT


def _add_core_commands() -> None:
    """The core's own command groups (data, toy, plugin); each module adds its commands."""
    from . import data, plugin, reproduce, toy

    app.add_typer(data.data_app, name="data")
    toy.add_commands(app)
    reproduce.add_commands(app)
    plugin.add_commands(app)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors become one line on stderr and a non-zero exit code."""
    global _CACHED, _CACHED_TRAIN
    args = list(sys.argv[1:] if argv is None else argv)
    doc = None
    if _light(args):
        from . import listing

        doc = listing.read()
    try:
        if doc is not None:
            from . import listing

            _CACHED = listing.registry_from(doc)
            _CACHED_TRAIN = (doc["train"]["doc"], doc["train"]["params"])
            _add_cached_commands(doc)
        else:
            _CACHED = None
            _add_plugin_commands()
        rv = app(args=args, standalone_mode=False, prog_name="ebmkit")
        if rv == 130:  # click/typer turn Ctrl-C into a return value when not standalone
            raise KeyboardInterrupt
    except TrainingInterrupted as exc:  # a clean stop on Ctrl-C / SIGTERM, checkpoint written
        err_console.print(escape(str(exc)), highlight=False, soft_wrap=True)
        return _exit(exc.exit_code, argv)
    except EbmkitError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return _exit(exc.exit_code, argv)
    except KeyboardInterrupt:
        err_console.print("interrupted; checkpoints already committed are intact (resume with --resume)")
        return _exit(130, argv)
    except typer.Exit as exc:
        return _exit(exc.exit_code, argv)
    except typer.Abort:
        return _exit(1, argv)
    except Exception as exc:
        for cx in _click_exception_modules():
            if isinstance(exc, cx.UsageError):  # one line, not click's Usage/Try/Error block
                ctx = exc.ctx
                where = ctx.command_path if ctx is not None else "ebmkit"
                err_console.print(f"[bold red]error:[/] {escape(exc.format_message())}; see "
                                  f"`{escape(where)} --help`", highlight=False, soft_wrap=True)
                return _exit(exc.exit_code, argv)
            if isinstance(exc, cx.ClickException):
                exc.show()
                return _exit(exc.exit_code, argv)
            if isinstance(exc, getattr(cx, "Exit", ())):
                return _exit(exc.exit_code, argv)
        culprit = _plugin_culprit(exc)
        if culprit is not None:  # a plugin's own command failed: name it, in one line
            from ..plugins import describe_exception

            err_console.print(f"[bold red]error:[/] {escape(culprit)} failed: "
                              f"{escape(describe_exception(exc))}; report it to the plugin's authors",
                              highlight=False, soft_wrap=True)
            return _exit(1, argv)
        raise
    return _exit(0, argv)


def _plugin_culprit(exc: BaseException) -> str | None:
    """The plugin whose code raised ``exc`` (e.g. in a command it added), if any."""
    if _DEFAULT is None:
        return None
    from ..plugins import plugin_in_traceback

    return plugin_in_traceback(exc, _DEFAULT[0])


def _click_exception_modules() -> list:
    """click's exception modules: typer >= 0.2x vendors its own click (``typer._click``), whose
    exceptions are not those of a separately installed click."""
    mods = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            pass
    return mods


def _exit(code: int, argv) -> int:
    if argv is None:
        sys.exit(code)
    return code
