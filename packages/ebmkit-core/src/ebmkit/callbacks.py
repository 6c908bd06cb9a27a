"""Training callbacks: everything the loop does besides learning.

A callback is a small object with three methods, each optional (the base class's do nothing):

* ``on_resume(run)`` — resumed runs only, before any ``on_fit_start``: restore saved state
  (the checkpoint callback loads weights, optimizer, chains, RNG and sets ``run.step``);
* ``on_fit_start(run)`` — before the first iteration (after the components are built);
* ``on_step_end(run, out)`` — after every iteration: ``run.row`` holds the diagnostics
  (``iter, d_t, v_t, r_t, e_pos, e_neg, accept, lr, steps, data_noise, sec``), ``out`` the
  :class:`~ebmkit.training.StepOutput`; set ``run.stop = True`` to end training;
* ``on_fit_end(run)`` — always, also when training failed or was interrupted;
  ``run.completed`` tells whether all iterations ran.

Callbacks run on every process (so collectives stay matched); those that write files do so on
the main process only (``run.is_main``). :func:`ebmkit.fit` composes the built-ins below from
``[train]`` options and adds yours (``callbacks=[...]``) and plugins' (the ``ebmkit_callbacks``
hook) after them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import checkpoint as ckpt
from .errors import CheckpointError, DivergenceError

if TYPE_CHECKING:  # pragma: no cover
    from .training import Run, StepOutput

STATE_DIR = "train_state"


class Callback:
    """Base class; override what you need."""

    def on_resume(self, run: Run) -> None:
        """Resumed runs: restore saved state (before every callback's ``on_fit_start``)."""

    def on_fit_start(self, run: Run) -> None:
        """Before the first iteration."""

    def on_step_end(self, run: Run, out: StepOutput) -> None:
        """After each iteration (``run.step`` iterations done)."""

    def on_fit_end(self, run: Run) -> None:
        """At the end, completed or not (``run.completed``)."""


class LambdaCallback(Callback):
    """A callback from plain functions, e.g. ``LambdaCallback(on_step_end=lambda run, out: ...)``."""

    def __init__(self, *, on_fit_start: Callable | None = None, on_step_end: Callable | None = None,
                 on_fit_end: Callable | None = None):
        self._start, self._step, self._end = on_fit_start, on_step_end, on_fit_end

    def on_fit_start(self, run):
        if self._start:
            self._start(run)

    def on_step_end(self, run, out):
        if self._step:
            self._step(run, out)

    def on_fit_end(self, run):
        if self._end:
            self._end(run)


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
    """A rich progress bar with d_t, v_t, K and acceptance (main process only)."""

    def __init__(self, console: Any = None):
        self.console = console
        self._bar = None
        self._task = None

    def on_fit_start(self, run):
        if not run.is_main:
            return
        self._bar = _progress(self.console)
        self._task = self._bar.add_task("training", total=run.train.iterations, completed=run.step,
                                        info="")
        self._bar.start()

    def on_step_end(self, run, out):
        if self._bar is None:
            return
        r = run.row
        acc = f" acc {r['accept']:.2f}" if r["accept"] is not None else ""
        self._bar.update(self._task, completed=run.step,
                         info=f"d_t {r['d_t']:+.3g}  v_t {r['v_t']:.3g}  K {r['steps']}{acc}")

    def on_fit_end(self, run):
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class CSVLogger(Callback):
    """``diagnostics.csv``: one row every ``every`` iterations (resume keeps the rows up to the
    restored step)."""

    def __init__(self, path: Path, *, every: int = 1):
        self.path, self.every = Path(path), every
        self._log = None

    def on_fit_start(self, run):
        if run.is_main:
            from .diagnostics import CSVLog

            self._log = CSVLog(self.path, keep_until=run.step if run.resume else None)

    def on_step_end(self, run, out):
        if self._log is not None and run.step % self.every == 0:
            self._log.write(run.row)
            self._log.flush()

    def on_fit_end(self, run):
        if self._log is not None:
            self._log.close()
            self._log = None


class TensorBoard(Callback):
    """Diagnostics to TensorBoard through Accelerate's tracker (``out_dir/tensorboard``)."""

    def __init__(self, out_dir: Path, *, every: int = 1):
        self.out_dir, self.every = Path(out_dir), every
        self._tracker = None

    def on_fit_start(self, run):
        if not run.is_main:
            return
        from accelerate.tracking import TensorBoardTracker

        self._tracker = TensorBoardTracker("tensorboard", str(self.out_dir))
        self._tracker.start()
        flat = {f"{sec}.{k}": (str(v) if isinstance(v, (list, tuple)) or v is None else v)
                for sec, table in run.config.to_dict().items() for k, v in table.items()}
        self._tracker.store_init_configuration(flat)

    def on_step_end(self, run, out):
        if self._tracker is not None and run.step % self.every == 0:
            self._tracker.log({k: v for k, v in run.row.items() if v is not None and k != "iter"},
                              step=run.step)

    def on_fit_end(self, run):
        if self._tracker is not None:
            self._tracker.finish()
            self._tracker = None


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
    """The run directory's model and resume state.

    * at the start: writes ``run.toml`` (fresh run) or restores the state saved in
      ``train_state/`` (resume: weights, optimizer, initializer state, RNG, step);
    * every ``every`` iterations and at the end: ``model.safetensors`` (weights + run document)
      and ``train_state/`` (tensors in safetensors, the rest in JSON; ``state.json`` last).
    """

    def __init__(self, out_dir: Path, *, every: int = 0, run_toml: bool = True):
        self.out_dir, self.every, self.run_toml = Path(out_dir), every, run_toml

    @property
    def model_path(self) -> Path:
        return self.out_dir / "model.safetensors"

    def on_resume(self, run):
        run.step = load_state(self.out_dir, run)
        run.setup_done = True

    def on_fit_start(self, run):
        if not run.resume and run.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.run_toml:
                ckpt.atomic_write_text(self.out_dir / "run.toml", run.config.to_toml())

    def on_step_end(self, run, out):
        if self.every and run.step % self.every == 0 and run.step < run.train.iterations:
            save_state(self.out_dir, run)

    def on_fit_end(self, run):
        if run.completed:
            save_state(self.out_dir, run)


# ---------------------------------------------------------------------------------------------
# resume state: model.safetensors + train_state/ (tensors in safetensors, the rest in JSON)
# ---------------------------------------------------------------------------------------------
def save_state(out_dir: Path, run: Run) -> None:
    acc = run.accelerator
    sdir = Path(out_dir) / STATE_DIR
    opt_tensors, opt_rest = ckpt.flatten_optimizer(run.optimizer.state_dict())
    tensors = dict(opt_tensors)
    for k, v in run.initializer.state_dict().items():
        tensors[f"init.{k}"] = v
    tensors["rng.chain"] = run.generator.get_state().clone()
    tensors["rng.data"] = run.data_generator.get_state().clone()
    ckpt.save_state(sdir / f"rank{run.rank}.safetensors", tensors, step=run.step)
    acc.wait_for_everyone()
    if run.is_main:
        ckpt.save_energy(Path(out_dir) / "model.safetensors", run.energy, doc=run.config.to_dict(),
                         step=run.step, shape=run.shape)
        info = {"step": run.step, "world_size": run.world_size, "optimizer": opt_rest}
        ckpt.atomic_write_text(sdir / "state.json", json.dumps(info))  # written last: the commit
    acc.wait_for_everyone()


def load_state(out_dir: Path, run: Run) -> int:
    out_dir = Path(out_dir)
    sdir = out_dir / STATE_DIR
    info_path = sdir / "state.json"
    if not info_path.is_file():
        raise CheckpointError(f"nothing to resume in {out_dir}: {info_path} is missing")
    try:
        info = json.loads(info_path.read_text())
        step = int(info["step"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{info_path} is damaged ({exc})") from None
    if int(info.get("world_size", 1)) != run.world_size:
        raise CheckpointError(
            f"{out_dir} was saved by {info.get('world_size')} process(es); resume it with the same "
            f"number (got {run.world_size}) so each rank gets its own persistent chains back"
        )
    model_path = out_dir / "model.safetensors"
    meta = ckpt.read_metadata(model_path)
    if int(meta.get("step", -1)) != step:
        raise CheckpointError(f"{out_dir}: model.safetensors is at step {meta.get('step')} but the state at {step}")
    ckpt.load_weights(model_path, run.energy)
    tensors = ckpt.load_state(sdir / f"rank{run.rank}.safetensors", step=step)
    run.optimizer.load_state_dict(ckpt.unflatten_optimizer(tensors, info["optimizer"]))
    dev = run.device
    try:
        run.initializer.load_state_dict({k[5:]: v.to(dev) for k, v in tensors.items()
                                         if k.startswith("init.")})
    except ValueError as exc:
        raise CheckpointError(f"{out_dir}: cannot restore the initializer ({exc})") from None
    run.generator.set_state(tensors["rng.chain"])
    run.data_generator.set_state(tensors["rng.data"])
    return step


def describe_state(out_dir: Path) -> dict[str, Any]:
    info_path = Path(out_dir) / STATE_DIR / "state.json"
    return json.loads(info_path.read_text()) if info_path.is_file() else {}


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
    progress bar, and with a run directory CSV, TensorBoard, checkpoints, grids and plots."""
    cfg = run_config.train
    cbs: list[Callback] = [DivergenceGuard()]
    if progress:
        cbs.append(ProgressBar(console))
    if out_dir is None:
        return cbs
    out_dir = Path(out_dir)
    cbs.append(CSVLogger(out_dir / "diagnostics.csv", every=cfg.log_every))
    if _want_tensorboard(cfg):
        cbs.append(TensorBoard(out_dir, every=cfg.log_every))
    cbs.append(Checkpoint(out_dir, every=cfg.checkpoint_every))
    cbs.append(SampleGrids(out_dir / "samples", every=cfg.sample_every, size=cfg.grid_size))
    if cfg.plots:
        cbs.append(DiagnosticPlots(out_dir / "diagnostics.csv", out_dir / "plots"))
    return cbs


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
    "ProgressBar", "SampleGrids", "TensorBoard", "default_callbacks", "describe_state",
    "load_state", "save_state",
]
