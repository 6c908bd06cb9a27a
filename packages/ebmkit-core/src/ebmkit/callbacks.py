"""Training callbacks: everything the loop does besides learning.

A callback is a small object; every method is optional (the base class's do nothing):

* ``on_resume(run)`` — resumed runs only, after the checkpoint manager restored the run's state
  (weights, optimizer, chains, RNG, ``run.step`` and every callback's own state), before any
  ``on_fit_start``;
* ``on_fit_start(run)`` — before the first iteration (after the components are built);
* ``on_step_end(run, out)`` — after every iteration: ``run.row`` holds the diagnostics
  (``iter, d_t, v_t, r_t, e_pos, e_neg, accept, lr, steps, data_noise, sec`` and the
  objective's own metrics), ``out`` the :class:`~ebmkit.training.StepOutput`; set
  ``run.stop = True`` to end training;
* ``on_log(run, metrics, step)`` — every metric that leaves the loop goes through
  ``run.log(metrics, step)``, and every callback's ``on_log`` receives it: the CSV files, the
  progress bar, TensorBoard and the trackers (MLflow, W&B, …) are such sinks. Keys are plain
  (``d_t``) for the per-iteration diagnostics and ``group/name`` (``fidelity/fid``) for others;
* ``on_fit_end(run)`` — always, also when training failed or was interrupted;
  ``run.completed`` tells whether all iterations ran;
* ``state_dict()`` / ``load_state_dict(state)`` — a callback's own state (numbers, strings,
  lists, dicts, tensors), saved in every checkpoint and given back on resume, matched by
  ``state_key`` (default: the class name).

Callbacks run on every process (so collectives stay matched); those that write files do so on
the main process only (``run.is_main``). A callback that raises stops training after the
iteration it failed in, with a checkpoint at that iteration (as SIGTERM does), and the error is
one line naming the callback and its plugin (:class:`~ebmkit.PluginError`, the original as
``__cause__``). :func:`ebmkit.fit` composes the built-ins below from ``[train]`` options and adds
yours (``callbacks=[...]``) and plugins' (the ``ebmkit_callbacks`` hook) after them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import checkpoint as ckpt
from .errors import DivergenceError

if TYPE_CHECKING:  # pragma: no cover
    from .training import Run, StepOutput


class Callback:
    """Base class; override what you need."""

    #: The key this callback's ``state_dict`` is saved under (default: the class name).
    state_key: str = ""
    #: A callback that saves the run's state (:class:`Checkpoint`) runs after all others.
    saves_state: bool = False

    def on_resume(self, run: Run) -> None:
        """Resumed runs: the run's state is restored (before every callback's ``on_fit_start``)."""

    def on_fit_start(self, run: Run) -> None:
        """Before the first iteration."""

    def on_step_end(self, run: Run, out: StepOutput) -> None:
        """After each iteration (``run.step`` iterations done)."""

    def on_log(self, run: Run, metrics: dict[str, Any], step: int) -> None:
        """A metric sink: called for every ``run.log(metrics, step)``."""

    def on_fit_end(self, run: Run) -> None:
        """At the end, completed or not (``run.completed``)."""

    def state_dict(self) -> dict[str, Any]:
        """This callback's own state, saved in each checkpoint (``{}``: nothing to save)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (on resume)."""


class LambdaCallback(Callback):
    """A callback from plain functions, e.g. ``LambdaCallback(on_step_end=lambda run, out: ...)``.
    (A plain function in ``fit(callbacks=[f])`` is ``LambdaCallback(on_step_end=f)``.)"""

    def __init__(self, *, on_fit_start: Callable | None = None, on_step_end: Callable | None = None,
                 on_fit_end: Callable | None = None, on_log: Callable | None = None):
        self._start, self._step, self._end, self._log = on_fit_start, on_step_end, on_fit_end, on_log
        fn = on_step_end or on_fit_start or on_fit_end or on_log
        self.state_key = f"LambdaCallback[{getattr(fn, '__qualname__', '')}]"

    def __repr__(self) -> str:
        return self.state_key

    def on_fit_start(self, run):
        if self._start:
            self._start(run)

    def on_step_end(self, run, out):
        if self._step:
            self._step(run, out)

    def on_log(self, run, metrics, step):
        if self._log:
            self._log(run, metrics, step)

    def on_fit_end(self, run):
        if self._end:
            self._end(run)


def as_callbacks(items: Iterable[Any]) -> list[Callback]:
    """``fit(callbacks=...)``: :class:`Callback` objects as they are, plain callables as
    ``LambdaCallback(on_step_end=f)`` (called ``f(run, out)`` after every iteration); anything
    else is refused in one line."""
    from .errors import ConfigError

    if isinstance(items, Callback) or callable(items) and not isinstance(items, Iterable):
        items = [items]
    out = []
    for cb in items:
        if isinstance(cb, Callback):
            out.append(cb)
        elif isinstance(cb, type) and issubclass(cb, Callback):
            raise ConfigError(f"callbacks: {cb.__name__} is a class; pass an instance, "
                              f"{cb.__name__}(...)")
        elif callable(cb):
            out.append(LambdaCallback(on_step_end=cb))
        else:
            raise ConfigError(f"callbacks: {cb!r} is neither an ebmkit.Callback nor a function "
                              "f(run, out); pass Callback objects or functions")
    return out


# ---------------------------------------------------------------------------------------------
class DivergenceGuard(Callback):
    """Stops training with a :class:`~ebmkit.DivergenceError` (exit code 3 on the CLI) when an
    iteration's energies or gradients are non-finite; the last checkpoint stays intact. Runs
    before the logging callbacks, so the bad row is never written."""

    def on_step_end(self, run, out):
        r = run.row
        vals = (r["d_t"], r["v_t"], r["e_pos"], r["e_neg"])
        if not all(math.isfinite(v) for v in vals):
            where = f"; the last good checkpoint in {run.out_dir} is intact" if run.out_dir else ""
            raise DivergenceError(
                f"training diverged at iteration {r['iter']}: non-finite energies or gradients "
                f"(d_t={r['d_t']:.3g}, v_t={r['v_t']:.3g}). Try a lower train.lr, a larger "
                "train.data_noise (e.g. 0.1), a smaller sampler step, or a smooth energy "
                f"activation{where}"
            )


class ProgressBar(Callback):
    """A rich progress bar with the last logged d_t, v_t, K and acceptance (main process only)."""

    def __init__(self, console: Any = None):
        self.console = console
        self._bar = None
        self._task = None

    def on_fit_start(self, run):
        if not run.is_main:
            return
        self._bar = _progress(self.console)
        first = f"first iteration: {run.sampler.default_steps} chain steps..."
        self._task = self._bar.add_task("training", total=run.train.iterations, completed=run.step,
                                        info=first)
        self._bar.start()

    def on_step_end(self, run, out):
        if self._bar is not None:
            self._bar.update(self._task, completed=run.step)

    def on_log(self, run, metrics, step):
        if self._bar is None or "d_t" not in metrics:
            return
        acc = f" acc {metrics['accept']:.2f}" if metrics.get("accept") is not None else ""
        self._bar.update(self._task, info=f"d_t {metrics['d_t']:+.3g}  v_t {metrics['v_t']:.3g}  "
                                          f"K {metrics.get('steps', '?')}{acc}")

    def on_fit_end(self, run):
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class TimeEstimate(Callback):
    """After the first iteration, when the whole run will take longer than ``warn_after``
    seconds, one line with the estimate and the faster alternatives (main process only)."""

    def __init__(self, *, warn_after: float = 3600.0):
        self.warn_after = warn_after

    def on_step_end(self, run, out):
        if not run.is_main or run.step != run.start_step + 1:
            return
        sec = float(run.row.get("sec") or 0.0)
        left = run.train.iterations - run.step
        total = sec * left
        budgets = [b for b in (run.train.time_budget, run.train.cpu_budget) if b]
        if budgets and min(budgets) <= self.warn_after:  # a budget ends it sooner
            return
        if total > self.warn_after:
            run.say(f"note: about {_duration(sec)} per iteration here, so the {left} iterations "
                    f"left take about {_duration(total)}; for a quick look use --preset quick or "
                    "fewer --iterations, or a GPU (--device cuda)")


def _duration(sec: float) -> str:
    if sec < 90:
        return f"{sec:.1f} s"
    if sec < 5400:
        return f"{sec / 60:.0f} min"
    if sec < 2 * 86400:
        return f"{sec / 3600:.1f} h"
    return f"{sec / 86400:.1f} days"


class CSVLogger(Callback):
    """CSV files from ``run.log``: the per-iteration diagnostics (plain keys) go to ``path``
    (``diagnostics.csv``); a metric group ``group/name`` goes to ``group.csv`` beside it (e.g.
    ``fidelity.csv``), one row per logged step with an ``iter`` column. Resume keeps the rows up
    to the restored step. (How often rows come is ``train.log_every``.)"""

    def __init__(self, path: Path, *, every: int = 1):
        self.path, self.every = Path(path), every
        self._logs: dict[str, Any] = {}
        self._keep: int | None = None

    def on_fit_start(self, run):
        self._keep = run.step if run.resume else None
        if run.is_main:
            self._open(None)

    def _open(self, group: str | None):
        from .diagnostics import COLUMNS, CSVLog

        key = group or ""
        if key not in self._logs:
            path = self.path if group is None else self.path.parent / f"{group}.csv"
            columns = COLUMNS if group is None else ("iter",)  # a group: its metrics' keys
            self._logs[key] = CSVLog(path, columns=columns, keep_until=self._keep)
        return self._logs[key]

    def on_log(self, run, metrics, step):
        if not run.is_main or not self._logs:
            return
        groups: dict[str | None, dict[str, Any]] = {}
        for k, v in metrics.items():
            g, _, name = k.rpartition("/")
            groups.setdefault(g or None, {})[name if g else k] = v
        for g, row in groups.items():
            if g is None and "iter" not in row or g is not None:
                row = {"iter": step, **row}
            log = self._open(g)
            log.write(row)
            log.flush()

    def on_fit_end(self, run):
        for log in self._logs.values():
            log.close()
        self._logs = {}


#: ``train.trackers`` names: Accelerate's trackers (``accelerate.tracking``).
TRACKERS = ("tensorboard", "mlflow", "wandb", "aim", "comet_ml", "clearml", "dvclive", "swanlab",
            "trackio")


class Trackers(Callback):
    """Every metric of ``run.log`` to the experiment trackers Accelerate supports
    (``train.trackers``: ``tensorboard``, ``mlflow``, ``wandb``, ``aim``, ``comet_ml``,
    ``clearml``, ``dvclive``, …), with the run document as the run's hyper-parameters (main
    process only). Trackers that keep files locally write them in the run directory
    (``tensorboard/``, ``mlruns/`` for MLflow unless ``MLFLOW_TRACKING_URI`` is set, ``wandb/``,
    ``.aim``); each tracker's own environment variables (``WANDB_MODE=offline``,
    ``MLFLOW_TRACKING_URI``, …) apply as usual."""

    def __init__(self, names: Iterable[str], out_dir: Path | None, *, project: str = "ebmkit"):
        self.names = tuple(names)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.project = project
        self.trackers: list[Any] = []

    def on_fit_start(self, run):
        if not run.is_main or not self.names:
            return
        name = (self.out_dir.name if self.out_dir is not None else self.project) or self.project
        flat = _flat_config(run.config.to_dict())
        for tracker in self.names:
            t = _make_tracker(tracker, name, self.out_dir, self.project)
            t.start()
            t.store_init_configuration(flat)
            self.trackers.append(t)

    def on_log(self, run, metrics, step):
        if not self.trackers:
            return
        values = {k: v for k, v in metrics.items()
                  if k != "iter" and isinstance(v, (int, float)) and not isinstance(v, bool)
                  and math.isfinite(v)}
        for t in self.trackers:
            t.log(values, step=step)

    def on_fit_end(self, run):
        trackers, self.trackers = self.trackers, []
        for t in trackers:
            t.finish()


def _flat_config(doc: dict) -> dict[str, Any]:
    flat = {}
    for sec, table in doc.items():
        for k, v in table.items():
            if isinstance(v, dict):  # [plugins.NAME]
                for k2, v2 in v.items():
                    flat[f"{sec}.{k}.{k2}"] = str(v2) if isinstance(v2, (list, tuple)) or v2 is None else v2
            else:
                flat[f"{sec}.{k}"] = str(v) if isinstance(v, (list, tuple)) or v is None else v
    return flat


def _make_tracker(name: str, run_name: str, out_dir: Path | None, project: str):
    """One of Accelerate's tracker classes, with its files in the run directory."""
    import os

    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    from .errors import ConfigError, MissingDependencyError

    if name not in LOGGER_TYPE_TO_CLASS:
        raise ConfigError(f"train.trackers: unknown tracker '{name}'; Accelerate supports "
                          f"{', '.join(sorted(LOGGER_TYPE_TO_CLASS))}")
    module = {"comet_ml": "comet_ml", "tensorboard": "tensorboard"}.get(name, name)
    import importlib.util

    if importlib.util.find_spec(module) is None and not (
            name == "tensorboard" and importlib.util.find_spec("tensorboardX") is not None):
        extra = {"comet_ml": "comet"}.get(name, name)
        raise MissingDependencyError(f"train.trackers {name}", f"pip install 'ebmkit-core[{extra}]'")
    cls = LOGGER_TYPE_TO_CLASS[name]
    local = str(out_dir) if out_dir is not None else "."
    if name == "tensorboard":
        return cls("tensorboard", local)
    if name == "mlflow":
        if "MLFLOW_TRACKING_URI" in os.environ:  # a server or store of the user's choice
            return cls(experiment_name=project, run_name=run_name)
        # MLflow 3 refuses its old file store (./mlruns) by default: a SQLite store in the run
        # directory (`mlflow ui --backend-store-uri sqlite:///<run>/mlflow.db`), artifacts beside it
        for mod in ("sqlalchemy", "alembic"):
            if importlib.util.find_spec(mod) is None:
                raise MissingDependencyError(f"train.trackers mlflow (its local store needs {mod}; "
                                             "or set MLFLOW_TRACKING_URI)",
                                             "pip install 'ebmkit-core[mlflow]'")
        import logging

        import mlflow

        for logger in ("alembic", "mlflow.store.db.utils"):  # the store's schema set-up
            logging.getLogger(logger).setLevel(logging.WARNING)
        mlflow.set_tracking_uri(f"sqlite:///{Path(local, 'mlflow.db').resolve()}")
        return cls(experiment_name=project, run_name=run_name,
                   logging_dir=str(Path(local, "mlartifacts").resolve()))
    if name == "wandb":
        return cls(project, name=run_name, dir=local)  # wandb/ in the run directory
    if name == "aim":
        return cls(run_name, local)
    if name in ("dvclive",):
        return cls(run_name, dir=str(Path(local, "dvclive")))
    return cls(project)


class TensorBoard(Trackers):
    """Diagnostics to TensorBoard (``out_dir/tensorboard``): ``Trackers(["tensorboard"], ...)``."""

    def __init__(self, out_dir: Path, *, every: int = 1):
        super().__init__(["tensorboard"], out_dir)


class SampleGrids(Callback):
    """``samples/iter_NNNNNN.png`` (the training negatives) every ``every`` iterations and
    ``samples/final.png`` at the end (fresh chains from the trained model with the sampling K,
    the standalone chain-start policy of :class:`~ebmkit.EBM`). Image data only."""

    def __init__(self, directory: Path, *, every: int = 0, size: int = 64, final: bool = True):
        self.dir, self.every, self.size, self.final = Path(directory), every, size, final

    def on_step_end(self, run, out):
        if run.is_main and self.every and run.step % self.every == 0 and len(run.shape) == 3:
            from .images import save_grid

            save_grid(out.x_neg[: self.size], self.dir / f"iter_{run.step:06d}.png")

    def on_fit_end(self, run):
        if not (run.completed and run.is_main and self.final and len(run.shape) == 3):
            return
        model = run.model()
        if model.steps == 0 and run.x_neg is None:
            return
        from .images import save_grid

        n = min(self.size, 256, model.initializer.capacity or 256)
        x = model.sample(n, generator=run.generator, batch_size=n)
        save_grid(x, self.dir / "final.png")


class DiagnosticPlots(Callback):
    """``plots/diagnostics.png`` and ``plots/oscillation.png`` from the CSV at the end."""

    def __init__(self, csv_path: Path, out_dir: Path):
        self.csv, self.out = Path(csv_path), Path(out_dir)

    def on_fit_end(self, run):
        if run.completed and run.is_main and run.step > 0 and self.csv.exists():
            from .diagnostics import plot_diagnostics

            plot_diagnostics(self.csv, self.out)


class Checkpoint(Callback):
    """The run directory's model and resume state, through the run's
    :class:`~ebmkit.checkpoint.CheckpointManager` (``run.checkpoints``):

    * at the start of a fresh run: removes what interrupted saves and an earlier (forced) run
      left behind, then writes ``run.toml``; a resumed run was restored by the loop;
    * every ``every`` iterations, at the end, when the run is interrupted (SIGINT/SIGTERM) and
      when a callback failed: a crash-consistent ``checkpoints/step-NNNNNN/`` (see
      :class:`~ebmkit.checkpoint.CheckpointManager`); the top-level ``model.safetensors`` (the file
      users share) is then pointed at it and all but ``keep`` are removed.

    A kill at any moment leaves the previous complete checkpoint in place (docs/reliability.md;
    tests/test_kill.py kills runs at every point of a save).
    """

    #: Run after every other callback (``run_loop`` orders callbacks by it), so a checkpoint
    #: holds the other callbacks' state of the iteration it saves.
    saves_state = True

    def __init__(self, out_dir: Path, *, every: int = 0, run_toml: bool = True, keep: int = 2):
        self.out_dir, self.every, self.run_toml, self.keep = Path(out_dir), every, run_toml, keep

    @property
    def model_path(self) -> Path:
        return self.out_dir / ckpt.MODEL

    @property
    def last_saved(self) -> Path | None:
        return self._manager.last_saved if getattr(self, "_manager", None) else None

    def _mgr(self, run) -> ckpt.CheckpointManager:
        mgr = run.checkpoints
        if mgr is None:  # used without fit(): a manager of its own
            mgr = run.checkpoints = ckpt.CheckpointManager(self.out_dir, keep=self.keep)
        self._manager = mgr
        return mgr

    def on_fit_start(self, run):
        mgr = self._mgr(run)
        if run.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if not run.resume:
                mgr.clean()
                mgr.discard()  # a forced fresh run: old checkpoints must not mix in
                if self.run_toml:
                    ckpt.atomic_write_text(self.out_dir / "run.toml", run.config.to_toml())

    def on_step_end(self, run, out):
        if self.every and run.step % self.every == 0 and run.step < run.train.iterations:
            run.saved = self._mgr(run).save(run)

    def on_fit_end(self, run):
        if not (run.completed or run.interrupted or run.failed is not None) or run.step == 0:
            return
        mgr = self._mgr(run)
        if mgr.last_saved is not None and mgr.last_saved.name == ckpt.step_dir_name(run.step):
            run.saved = mgr.last_saved
            return  # this step is already committed
        run.saved = mgr.save(run)


def describe_state(out_dir: Path) -> dict[str, Any]:
    """``state.json`` of the newest complete checkpoint (``{}`` when there is none)."""
    return ckpt.CheckpointManager(out_dir).describe()


def _progress(console):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(TextColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text(f"{speed:.2f} it/s" if speed else "-- it/s", style="cyan")

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(""),
        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=console, transient=False,
    )


def default_callbacks(run_config, out_dir: Path | None, *, progress: bool = True,
                      console: Any = None) -> list[Callback]:
    """The callbacks ``ebmkit run`` uses, from the ``[train]`` options: divergence guard,
    progress bar, and with a run directory CSV, trackers, checkpoints, grids and plots."""
    cfg = run_config.train
    cbs: list[Callback] = [DivergenceGuard()]
    if progress:
        cbs.append(ProgressBar(console))
    cbs.append(TimeEstimate())
    names = tracker_names(cfg, auto_tensorboard=out_dir is not None)
    if out_dir is None:
        if names:
            cbs.append(Trackers(names, None))
        return cbs
    out_dir = Path(out_dir)
    cbs.append(CSVLogger(out_dir / "diagnostics.csv", every=cfg.log_every))
    if names:
        cbs.append(Trackers(names, out_dir))
    cbs.append(Checkpoint(out_dir, every=cfg.checkpoint_every, keep=cfg.keep))
    cbs.append(SampleGrids(out_dir / "samples", every=cfg.sample_every, size=cfg.grid_size))
    if cfg.plots:
        cbs.append(DiagnosticPlots(out_dir / "diagnostics.csv", out_dir / "plots"))
    return cbs


def tracker_names(cfg, *, auto_tensorboard: bool = True) -> list[str]:
    """``train.trackers``, plus TensorBoard when ``train.tensorboard`` is ``on`` or (``auto``)
    installed and the run has a directory."""
    from .errors import ConfigError

    names = list(dict.fromkeys(cfg.trackers))
    for n in names:
        if n not in TRACKERS:
            import difflib

            close = difflib.get_close_matches(n, TRACKERS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"train.trackers: unknown tracker '{n}'.{hint} Known: {', '.join(TRACKERS)}")
    if "tensorboard" not in names and auto_tensorboard and _want_tensorboard(cfg):
        names.insert(0, "tensorboard")
    return names


def _want_tensorboard(cfg) -> bool:
    """TensorBoard when asked for or (auto) when installed."""
    if cfg.tensorboard == "off":
        return False
    import importlib.util

    have = (importlib.util.find_spec("tensorboard") is not None
            or importlib.util.find_spec("tensorboardX") is not None)
    if cfg.tensorboard == "on" and not have:
        from .errors import MissingDependencyError

        raise MissingDependencyError("train.tensorboard=on", "pip install 'ebmkit-core[tensorboard]'")
    return have


__all__ = [
    "Callback", "CSVLogger", "Checkpoint", "DiagnosticPlots", "DivergenceGuard", "LambdaCallback",
    "ProgressBar", "SampleGrids", "TRACKERS", "TensorBoard", "TimeEstimate", "Trackers",
    "as_callbacks", "default_callbacks", "describe_state", "tracker_names",
]
