"""Sample metrics while training: :class:`FidelityCallback` scores a fixed number of fresh samples
every ``every`` iterations against a fixed reference batch of the training data.

Switched on by the run document's ``[plugins.fid]`` table (``--set plugins.fid.every=100``,
``ebmkit.fit(plugins={"fid": {"every": 100}})``, see :mod:`ebmkit_fid.options`): the plugin's
``ebmkit_callbacks`` hook returns the callback when ``every > 0``. From Python it can also be
passed directly, ``ebmkit.fit(..., callbacks=[FidelityCallback(every=100)])``.

The metrics are found by the :class:`ebmkit.SampleMetric` interface: ``metrics`` names registered
evaluators that implement it (this plugin's ``fid``, ``kid``, ``prc`` or any other plugin's), each
built with the options it has among ``n``, ``seed``, ``feature_extractor``, ``inception_weights``,
``kid_subset_size``, ``batch_size``. Every number goes through ``run.log`` as
``fidelity/<metric>`` (plus ``fidelity/sec``), the run's one metrics sink: the core's CSV logger
writes ``fidelity.csv`` (``iter`` first), TensorBoard and the trackers (``train.trackers``) get
the same values. One line per evaluation is printed (main process). ``history`` holds the rows
and is saved in every checkpoint, so a resumed run keeps the rows before it.
"""

from __future__ import annotations

import dataclasses
import difflib
import time
from typing import Any

import torch
from ebmkit import Callback
from ebmkit.errors import ConfigError
from ebmkit.interfaces import SampleMetric

from .fidelity import INCEPTION

#: The metric group of ``run.log``: ``fidelity/fid`` etc., and ``fidelity.csv``.
GROUP = "fidelity"


def sample_metric_names(registry) -> list[str]:
    """The registered evaluators that implement :class:`ebmkit.SampleMetric`."""
    return [e.name for e in registry.entries("evaluator")
            if isinstance(e.obj, type) and issubclass(e.obj, SampleMetric)]


def check_metric_names(names, registry, *, where: str) -> tuple[str, ...]:
    """``names`` if each is a registered sample metric; else one :class:`ConfigError` line naming
    the available ones (with a did-you-mean)."""
    names = tuple(dict.fromkeys(names))
    available = sample_metric_names(registry)
    if not names:
        raise ConfigError(f"{where} is empty; name at least one sample metric "
                          f"(available: {', '.join(available) or 'none installed'})")
    for name in names:
        if name not in available:
            close = difflib.get_close_matches(name, available, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{where}: '{name}' is not a sample metric (an evaluator implementing "
                              f"ebmkit.SampleMetric).{hint} Available: "
                              f"{', '.join(available) or 'none installed'}")
    return names


def build_metric(registry, name: str, options: dict[str, Any]):
    """Evaluator ``name`` with those ``options`` its ``Config`` has (``None`` values: defaults)."""
    cls = registry.get("evaluator", name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    cfg = {k: v for k, v in options.items() if k in fields and v is not None}
    return registry.create("evaluator", name, cfg)


class FidelityCallback(Callback):
    """Every ``every`` iterations (and at the last one): the sample metrics ``metrics`` of ``n``
    model samples (seed ``seed``, the model's sampling K) against ``n`` training images drawn
    once at the start. ``history`` holds one row per evaluation (``iter``, the metrics, ``sec``).
    """

    state_key = "ebmkit_fid.FidelityCallback"

    def __init__(self, every: int = 100, n: int = 1000, *, metrics=("fid", "kid"),
                 feature_extractor: str = INCEPTION, inception_weights: str | None = None,
                 kid_subset_size: int | None = None, batch_size: int = 64, seed: int = 0,
                 log: bool = True, registry: Any = None):
        if every < 1 or n < 2:
            raise ConfigError(f"FidelityCallback needs every >= 1 and n >= 2, got every={every}, n={n}")
        self.every, self.n, self.seed, self.log = int(every), int(n), int(seed), log
        self.metrics = tuple(metrics)
        self.options = {"n": self.n, "seed": self.seed, "feature_extractor": feature_extractor,
                        "inception_weights": inception_weights,
                        "kid_subset_size": kid_subset_size or min(1000, self.n),
                        "batch_size": batch_size}
        self.history: list[dict[str, Any]] = []
        self._scorers: list[Any] = []
        self._ref = None
        if registry is not None:  # fail before the run starts
            check_metric_names(self.metrics, registry, where="plugins.fid.metrics")

    @classmethod
    def from_options(cls, options, *, registry: Any = None) -> FidelityCallback:
        """The callback a ``[plugins.fid]`` table (:class:`~ebmkit_fid.options.FidOptionsConfig`)
        asks for."""
        o = options
        return cls(o.every, o.n, metrics=o.metrics, feature_extractor=o.feature_extractor,
                   inception_weights=o.inception_weights, kid_subset_size=o.kid_subset_size,
                   batch_size=o.batch_size, seed=o.seed, registry=registry)

    def __repr__(self) -> str:
        return f"FidelityCallback(every={self.every}, n={self.n}, metrics={list(self.metrics)})"

    # -- state (saved in every checkpoint) -------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(r) for r in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [dict(r) for r in state.get("history", [])]

    # -- the loop ----------------------------------------------------------------------------------
    def on_fit_start(self, run):
        reg = run.config.registry
        if reg is None:
            from ebmkit import build_registry

            reg = build_registry()
        names = check_metric_names(self.metrics, reg, where="plugins.fid.metrics")
        self._scorers = [build_metric(reg, name, self.options) for name in names]
        self._ref = _reference_batch(run, self.n, self.seed)
        from .evaluators import FidelityEvaluator

        for m in self._scorers:  # this plugin's metrics: weights, image shape, KID's subsets, now
            if isinstance(m, FidelityEvaluator):
                m.check(run.shape, self.n, len(self._ref), run.device)
        self.history = [r for r in self.history if r["iter"] <= run.step]  # a resume: rows so far

    def on_step_end(self, run, out):
        if run.step % self.every == 0 or run.step == run.train.iterations:
            self.measure(run)

    def measure(self, run) -> dict[str, Any]:
        """Score fresh samples of the model as trained so far; log and return the row."""
        t0 = time.perf_counter()
        model = run.model()
        with torch.no_grad():
            x = model.sample(self.n, seed=self.seed)
        ref = self._ref.to(x.device)
        res: dict[str, float] = {}
        for m in self._scorers:
            res.update({k: float(v) for k, v in m.score(x, ref).items()})
        row = {"iter": run.step, **res, "sec": time.perf_counter() - t0}
        self.history.append(row)
        run.log({f"{GROUP}/{k}": v for k, v in row.items() if k != "iter"}, run.step)
        if run.is_main and self.log:
            nums = "  ".join(f"{k} {v:.4g}" for k, v in res.items())
            run.say(f"[fidelity] iter {run.step}: {nums} ({row['sec']:.1f}s)")
        return row


def _reference_batch(run, n: int, seed: int):
    """``n`` training images (a seeded subset, drawn without touching the run's generators)."""
    from ebmkit import InMemoryData
    from ebmkit.evaluation import data_batch

    if run.config.classes.get("data") is not None:
        src = run.config.data_source()
    else:
        src = InMemoryData(run.dataset)
    return data_batch(src, n, seed)


def from_config(config, out_dir=None) -> FidelityCallback | None:
    """For ``ebmkit run`` and ``ebmkit.fit``: the callback ``[plugins.fid]`` asks for (``every > 0``),
    else ``None``."""
    options = config.plugin("fid")
    if options.every <= 0:
        return None
    return FidelityCallback.from_options(options, registry=config.registry)
