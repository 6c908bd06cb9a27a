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
import shutil
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
        first = f"first iteration: {run.sampler.default_steps} chain steps..."
        self._task = self._bar.add_task("training", total=run.train.iterations, completed=run.step,
                                        info=first)
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
    """The run directory's model and resume state, crash-consistent.

    * at the start: removes what interrupted saves left behind, then writes ``run.toml`` (fresh
      run) or restores the newest complete checkpoint (resume: weights, optimizer, initializer
      state, RNG, step) and says which;
    * every ``every`` iterations, at the end, and when the run is interrupted (SIGINT/SIGTERM):
      ``checkpoints/step-NNNNNN/`` (``model.safetensors``, ``rank<r>.safetensors``,
      ``state.json``) written in full under a temporary name, fsynced, renamed, and only then
      made current by replacing ``checkpoints/LATEST``; the top-level ``model.safetensors`` (the
      file users share) is then pointed at it and all but the ``keep`` newest are removed.

    A kill at any moment leaves the previous complete checkpoint in place (see
    docs/reliability.md; tests/test_kill.py kills runs at every point of a save).
    """

    def __init__(self, out_dir: Path, *, every: int = 0, run_toml: bool = True, keep: int = 2):
        self.out_dir, self.every, self.run_toml, self.keep = Path(out_dir), every, run_toml, keep
        self.last_saved: Path | None = None

    @property
    def model_path(self) -> Path:
        return self.out_dir / ckpt.MODEL

    def on_resume(self, run):
        if run.is_main:
            _clean(self.out_dir)
        run.accelerator.wait_for_everyone()
        found = load_state(self.out_dir, run)
        if found is None:  # killed before the first checkpoint: start again from iteration 0
            run.say(f"no complete checkpoint in {self.out_dir}; starting again from iteration 0 "
                    "with its run.toml")
            run.resume = False
            return
        run.step, where = found
        run.setup_done = True
        self.last_saved = where
        run.say(f"resuming from {where} (iteration {run.step})")

    def on_fit_start(self, run):
        if run.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if not run.resume:
                _clean(self.out_dir)
                _discard_old_run(self.out_dir)  # a forced fresh run: old checkpoints must not mix in
                if self.run_toml:
                    ckpt.atomic_write_text(self.out_dir / "run.toml", run.config.to_toml())

    def on_step_end(self, run, out):
        if self.every and run.step % self.every == 0 and run.step < run.train.iterations:
            self.last_saved = save_state(self.out_dir, run, keep=self.keep)
            run.saved = self.last_saved

    def on_fit_end(self, run):
        if not (run.completed or run.interrupted) or run.step == 0:
            return
        if self.last_saved is not None and self.last_saved.name == ckpt.step_dir_name(run.step):
            run.saved = self.last_saved
            return  # this step is already committed
        self.last_saved = save_state(self.out_dir, run, keep=self.keep)
        run.saved = self.last_saved


def _clean(out_dir: Path) -> None:
    """Remove temporaries of interrupted saves (top level, checkpoints/, legacy train_state/)."""
    for d in (out_dir, out_dir / ckpt.CHECKPOINTS, out_dir / STATE_DIR):
        ckpt.remove_stale_temporaries(d)


def _discard_old_run(out_dir: Path) -> None:
    for name in (ckpt.CHECKPOINTS, STATE_DIR):
        old = out_dir / name
        if old.is_dir():
            trash = out_dir / f".tmp-old-{name}"
            shutil.rmtree(trash, ignore_errors=True)
            old.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# resume state: checkpoints/step-N/{model,rank<r>}.safetensors + state.json (tensors in
# safetensors, the rest in JSON; nothing pickled)
# ---------------------------------------------------------------------------------------------
def save_state(out_dir: Path, run: Run, *, keep: int = 2) -> Path:
    """Commit the checkpoint of ``run.step`` (see :func:`ebmkit.checkpoint.save_checkpoint`)."""
    acc = run.accelerator
    opt_tensors, opt_rest = ckpt.flatten_optimizer(run.optimizer.state_dict())
    tensors = dict(opt_tensors)
    for k, v in run.initializer.state_dict().items():
        tensors[f"init.{k}"] = v
    tensors["rng.chain"] = run.generator.get_state().clone()
    tensors["rng.data"] = run.data_generator.get_state().clone()

    def write_rank(d: Path) -> None:
        ckpt.write_tensors(d / f"rank{run.rank}.safetensors", tensors, ckpt.state_meta(run.step))

    def write_main(d: Path) -> None:
        ckpt.save_energy(d / ckpt.MODEL, run.energy, doc=run.config.to_dict(), step=run.step,
                         shape=run.shape, fault="save-model")
        ckpt._fault("save-model")
        info = {"step": run.step, "world_size": run.world_size, "optimizer": opt_rest}
        (d / ckpt.STATE_JSON).write_text(json.dumps(info), encoding="utf-8")
        ckpt.fsync_file(d / ckpt.STATE_JSON)
        ckpt._fault("save-state")

    return ckpt.save_checkpoint(out_dir, run.step, write_rank=write_rank, write_main=write_main,
                                rank=run.rank, is_main=run.is_main,
                                barrier=acc.wait_for_everyone, keep=keep)


def load_state(out_dir: Path, run: Run) -> tuple[int, Path] | None:
    """Restore the newest complete checkpoint into ``run``; returns ``(step, directory)``, or
    ``None`` when the run directory has none (a run killed before its first save)."""
    out_dir = Path(out_dir)
    found = ckpt.find_checkpoint(out_dir)
    if found is None:
        if (out_dir / STATE_DIR / ckpt.STATE_JSON).is_file():  # written by ebmkit < 0.2
            return _load_legacy(out_dir, run), out_dir / STATE_DIR
        if ckpt.list_checkpoints(out_dir):
            raise CheckpointError(f"no checkpoint in {out_dir / ckpt.CHECKPOINTS} is complete and "
                                  "readable; start again with --force (or a new --out)")
        return None
    where, info, notes = found
    for note in notes:
        run.say(note)
    if run.is_main:  # newer, damaged directories would confuse rotation: remove them
        for step, path in ckpt.list_checkpoints(out_dir):
            if step > info["step"]:
                shutil.rmtree(path, ignore_errors=True)
    run.accelerator.wait_for_everyone()
    _restore(where, where / f"rank{run.rank}.safetensors", info, run)
    return info["step"], where


def _check_world(out_dir: Path, info: dict, run: Run) -> None:
    if int(info.get("world_size", 1)) != run.world_size:
        raise CheckpointError(
            f"{out_dir} was saved by {info.get('world_size')} process(es); resume it with the same "
            f"number (got {run.world_size}) so each rank gets its own persistent chains back"
        )


def _restore(where: Path, rank_file: Path, info: dict, run: Run, model_path: Path | None = None) -> None:
    _check_world(where, info, run)
    step = info["step"]
    model_path = model_path or where / ckpt.MODEL
    ckpt.load_weights(model_path, run.energy)
    tensors = ckpt.load_state(rank_file, step=step)
    try:
        run.optimizer.load_state_dict(ckpt.unflatten_optimizer(tensors, info["optimizer"]))
    except (ValueError, KeyError, IndexError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{where}: the saved optimizer state does not fit this run ({first}); "
                              "was the energy or the optimizer changed?") from None
    dev = run.device
    try:
        run.initializer.load_state_dict({k[5:]: v.to(dev) for k, v in tensors.items()
                                         if k.startswith("init.")})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{where}: cannot restore the initializer ({exc})") from None
    try:
        run.generator.set_state(tensors["rng.chain"])
        run.data_generator.set_state(tensors["rng.data"])
    except (KeyError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{rank_file}: the random-number state is missing or damaged ({exc})") from None


def _load_legacy(out_dir: Path, run: Run) -> int:
    """Resume a run directory written before checkpoints/ (``train_state/`` + top-level model)."""
    sdir = out_dir / STATE_DIR
    info = ckpt.read_state_info(sdir / ckpt.STATE_JSON)
    meta = ckpt.read_checkpoint(out_dir / ckpt.MODEL)
    if meta["step"] != info["step"]:
        raise CheckpointError(f"{out_dir}: model.safetensors is at step {meta['step']} but "
                              f"train_state at {info['step']}; this old-layout run cannot be resumed")
    _restore(out_dir, sdir / f"rank{run.rank}.safetensors", info, run, model_path=out_dir / ckpt.MODEL)
    return info["step"]


def describe_state(out_dir: Path) -> dict[str, Any]:
    """``state.json`` of the newest complete checkpoint (``{}`` when there is none)."""
    found = ckpt.find_checkpoint(Path(out_dir))
    return dict(found[1], directory=str(found[0])) if found else {}


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
    cbs.append(TimeEstimate())
    if out_dir is None:
        return cbs
    out_dir = Path(out_dir)
    cbs.append(CSVLogger(out_dir / "diagnostics.csv", every=cfg.log_every))
    if _want_tensorboard(cfg):
        cbs.append(TensorBoard(out_dir, every=cfg.log_every))
    cbs.append(Checkpoint(out_dir, every=cfg.checkpoint_every, keep=cfg.keep))
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
    "ProgressBar", "SampleGrids", "TensorBoard", "TimeEstimate", "default_callbacks", "describe_state",
    "load_state", "save_state",
]
