"""FID/KID while training: :class:`FidelityCallback` scores a fixed number of fresh samples every
``every`` iterations against a fixed reference batch of the training data.

Where the numbers go (main process only): ``fidelity.csv`` in the run directory (``iter, fid,
kid_mean, kid_std, sec``), TensorBoard scalars ``fidelity/fid``, ``fidelity/kid_mean`` under
``<run>/tensorboard`` when the ``tensorboard`` package is installed, and one printed line per
evaluation (it appears above the progress bar). ``history`` keeps them in memory.

Switched on from Python with ``ebmkit.fit(..., callbacks=[FidelityCallback(every=100)])``, and for
``ebmkit run`` by the plugin's ``ebmkit_callbacks`` hook when ``$EBMKIT_FID_EVERY`` is set (see
:func:`from_environment`).
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

import torch
from ebmkit import Callback
from ebmkit.errors import ConfigError

from .fidelity import INCEPTION, Setup, check_kid, score, to_uint8


class FidelityCallback(Callback):
    """Every ``every`` iterations (and at the last one): ``metrics`` of ``n`` model samples (seed
    ``seed``, the model's sampling K) against ``n`` training images drawn once at the start."""

    def __init__(self, every: int = 100, n: int = 1000, *, metrics=("fid", "kid"),
                 feature_extractor: str = INCEPTION, inception_weights: str | None = None,
                 kid_subset_size: int | None = None, seed: int = 0, out_dir: Path | None = None,
                 log: bool = True):
        if every < 1 or n < 2:
            raise ConfigError(f"FidelityCallback needs every >= 1 and n >= 2, got every={every}, n={n}")
        self.every, self.n, self.metrics, self.seed, self.log = every, n, tuple(metrics), seed, log
        self.setup = Setup(feature_extractor=feature_extractor, inception_weights=inception_weights,
                           kid_subset_size=kid_subset_size or min(1000, n), seed=seed)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.history: list[dict[str, Any]] = []
        self._ref = None
        self._tb = None

    def on_fit_start(self, run):
        self.setup.weights()  # fail now, not after the first `every` iterations
        x = _reference_batch(run, self.n, self.seed)
        self._ref = to_uint8(x)
        if "kid" in self.metrics:
            check_kid(self.setup, self.n, len(self._ref))
        out = self.out_dir or run.out_dir
        self.out_dir = Path(out) if out is not None else None
        if run.is_main and self.out_dir is not None:
            self._tb = _tensorboard(self.out_dir)

    def on_step_end(self, run, out):
        if run.step % self.every == 0 or run.step == run.train.iterations:
            self.measure(run)

    def measure(self, run) -> dict[str, Any]:
        t0 = time.perf_counter()
        model = run.model()
        with torch.no_grad():
            x = model.sample(self.n, seed=self.seed)
        from dataclasses import replace

        res = score(x, self._ref, self.metrics, replace(self.setup, device=model.device))
        res.pop("setup")
        row = {"iter": run.step, **res, "sec": time.perf_counter() - t0}
        self.history.append(row)
        if run.is_main:
            self._write(row)
            if self.log:
                nums = "  ".join(f"{k} {v:.4g}" for k, v in res.items())
                print(f"[fidelity] iter {run.step}: {nums} ({row['sec']:.1f}s)", flush=True)
        return row

    def _write(self, row):
        if self.out_dir is None:
            return
        path = self.out_dir / "fidelity.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(list(row))
            w.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row.values()])
        if self._tb is not None:
            self._tb.log({f"fidelity/{k}": v for k, v in row.items() if k not in ("iter", "sec")},
                         step=row["iter"])

    def on_fit_end(self, run):
        if self._tb is not None:
            self._tb.finish()
            self._tb = None


def _reference_batch(run, n: int, seed: int):
    from ebmkit.evaluation import data_batch

    src = run.config.data_source() if run.config.classes.get("data") is not None else None
    if src is None:
        raise ConfigError("FidelityCallback needs a registered dataset to draw its reference from")
    return data_batch(src, n, seed)


def _tensorboard(out_dir: Path):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        return None
    from accelerate.tracking import TensorBoardTracker

    tb = TensorBoardTracker("tensorboard", str(out_dir))
    tb.start()
    return tb


ENV = "EBMKIT_FID_EVERY"


def from_environment(config, out_dir) -> FidelityCallback | None:
    """For ``ebmkit run``: a callback when ``$EBMKIT_FID_EVERY`` is set (iterations between
    evaluations); ``$EBMKIT_FID_N`` (samples, default 1000), ``$EBMKIT_FID_METRICS`` (default
    ``fid,kid``), ``$EBMKIT_FID_EXTRACTOR`` and ``$EBMKIT_INCEPTION_WEIGHTS`` refine it. Only for
    image datasets."""
    every = os.environ.get(ENV, "").strip()
    if not every:
        return None
    try:
        every_i = int(every)
        n = int(os.environ.get("EBMKIT_FID_N", "1000"))
    except ValueError:
        raise ConfigError(f"${ENV} and $EBMKIT_FID_N must be integers") from None
    metrics = [m.strip() for m in os.environ.get("EBMKIT_FID_METRICS", "fid,kid").split(",") if m.strip()]
    return FidelityCallback(every_i, n, metrics=metrics,
                            feature_extractor=os.environ.get("EBMKIT_FID_EXTRACTOR", INCEPTION),
                            out_dir=out_dir)
