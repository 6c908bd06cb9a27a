"""Stability guard for JEM training: divergence detection with automatic restart.

JEM's users report runs that diverge (the energies of the SGLD samples run away and the
classifier collapses; JEM issues #4, #8). ebmkit's own :class:`~ebmkit.DivergenceGuard` stops a
run whose numbers are no longer finite; this guard acts earlier, on the run-away itself: an
iteration whose ``|e_pos|``, ``|e_neg|`` or ``|d_t|`` exceeds ``plugins.jem.max_energy``.

It keeps an in-memory snapshot of the last good state (the energy's weights, the optimizer's
moments, the initializer's replay buffer; every ``snapshot_every`` healthy iterations) and, on a
run-away, puts it back and goes on (the iteration counter keeps counting: the iterations since the
snapshot are spent). After ``restarts`` restarts it stops the run with one line saying what to
change (a :class:`ebmkit.DivergenceError`; the last checkpoint on disk stays intact).

``[plugins.jem]`` options: ``guard`` (auto: on for the ``jem`` objective), ``max_energy``,
``restarts``, ``snapshot_every``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ebmkit import Callback, DivergenceError, param
from ebmkit.interfaces import Options

__all__ = ["JEMOptions", "JEMOptionsConfig", "RestartGuard", "from_config"]


@dataclass(frozen=True, kw_only=True)
class JEMOptionsConfig:
    guard: str = param("auto", "Divergence guard with automatic restart: on, off, or auto (on for "
                               "the jem objective).", choices=("auto", "on", "off"))
    max_energy: float = param(1000.0, "An iteration whose |e_pos|, |e_neg| or |d_t| exceeds this "
                                      "has diverged.", min=0.0, min_exclusive=True)
    restarts: int = param(3, "Automatic restarts from the last good state before a clear stop "
                             "(0 = stop at the first divergence).", min=0)
    snapshot_every: int = param(25, "Iterations between in-memory snapshots of the last good state.",
                                min=1)


class JEMOptions(Options):
    """``[plugins.jem]``: the divergence guard of JEM training (``ebmkit describe options jem``)."""

    name = "jem"
    summary = "JEM stability guard: divergence detection, automatic restart from the last good state."
    Config = JEMOptionsConfig
    resumable: ClassVar[frozenset[str]] = frozenset(f.name for f in dataclasses.fields(JEMOptionsConfig))


def _clone(obj: Any) -> Any:
    return copy.deepcopy(obj)


class RestartGuard(Callback):
    """Restores the last good state when an iteration's energies run away; stops with one line
    after ``restarts`` restarts. Usable on its own: ``fit(callbacks=[RestartGuard(...)])``."""

    state_key = "jem.RestartGuard"

    def __init__(self, *, max_energy: float = 1000.0, restarts: int = 3, snapshot_every: int = 25):
        self.max_energy = float(max_energy)
        self.restarts = int(restarts)
        self.snapshot_every = int(snapshot_every)
        self.used = 0
        self._snap: dict[str, Any] | None = None
        self._snap_step = 0

    def _take(self, run) -> None:
        self._snap = {
            "energy": _clone(run.energy.state_dict()),
            "optimizer": _clone(run.optimizer.state_dict()),
            "initializer": _clone(run.initializer.state_dict()),
            "ema": _clone(run.ema.state_dict()) if run.ema is not None else None,
        }
        self._snap_step = run.step

    def _restore(self, run) -> None:
        s = self._snap
        run.energy.load_state_dict(s["energy"])
        run.optimizer.load_state_dict(_clone(s["optimizer"]))
        if s["initializer"]:
            run.initializer.load_state_dict(_clone(s["initializer"]))
        if s["ema"] is not None and run.ema is not None:
            run.ema.load_state_dict(s["ema"])

    def diverged(self, row: dict[str, Any]) -> bool:
        vals = [row.get(k) for k in ("e_pos", "e_neg", "d_t")]
        return any(v is not None and (not math.isfinite(v) or abs(v) > self.max_energy) for v in vals)

    def on_fit_start(self, run):
        self._take(run)

    def on_step_end(self, run, out):
        row = run.row
        if not self.diverged(row):
            if run.step - self._snap_step >= self.snapshot_every:
                self._take(run)
            return
        what = (f"|e_pos| = {abs(row['e_pos']):.3g}, |e_neg| = {abs(row['e_neg']):.3g}, "
                f"|d_t| = {abs(row['d_t']):.3g} > plugins.jem.max_energy = {self.max_energy:g}")
        if self.used < self.restarts and self._snap is not None:
            self.used += 1
            self._restore(run)
            run.say(f"jem guard: training diverged at iteration {row['iter']} ({what}); restart "
                    f"{self.used} of {self.restarts} from the state of iteration {self._snap_step}")
            return
        where = f"; the last checkpoint in {run.out_dir} is intact" if run.out_dir else ""
        raise DivergenceError(
            f"jem guard: training diverged at iteration {row['iter']} ({what}) after "
            f"{self.used} automatic restart(s); run again with a lower train.lr (e.g. "
            f"{run.train.lr / 2:.3g}), a larger objective.alpha (e.g. 0.1) or a smaller "
            f"sampler step{where}")

    def state_dict(self):
        return {"used": self.used}

    def load_state_dict(self, state):
        self.used = int(state.get("used", 0))


def from_config(config: Any, out_dir: Any) -> RestartGuard | None:
    """The guard a run asked for (``[plugins.jem]``), or ``None``."""
    opts = config.plugin("jem")
    if opts.guard == "off":
        return None
    if opts.guard == "auto":
        name = config.to_dict().get("objective", {}).get("name")
        if name != "jem":
            return None
    return RestartGuard(max_energy=opts.max_energy, restarts=opts.restarts,
                        snapshot_every=opts.snapshot_every)
