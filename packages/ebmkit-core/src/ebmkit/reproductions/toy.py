"""The papers' toy experiments (anatomy Fig. 6, short-run App. 7.7): train the non-convergent
and convergent presets on a toy density, evaluate each with ``toy_density`` and check the claims.

Library: :func:`reproduce`; command line: ``ebmkit toy`` (:mod:`ebmkit.cli.toy`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

# --------------------------------------------------------------------------------------------
# the reproduction: train both regimes, evaluate, check the papers' claims
# --------------------------------------------------------------------------------------------
TOYS = ("gmm", "rings", "1d")
REGIMES = ("nonconvergent", "convergent")

#: Shortened settings for a quick look (and the fast test): the direction of the effects only.
FAST_OVERRIDES = {
    "nonconvergent": ["train.iterations=300"],
    "convergent": ["train.iterations=80", "init.buffer_size=1000"],
}
FAST_EVAL = {"grid": 64, "n_samples": 1000, "long_steps": 200, "mmd_samples": 500}

#: What counts as a reproduction (see docs/reproductions/toy.md for how they were chosen).
#: Each entry: (regime, metric, op, threshold, meaning).
CLAIMS: tuple[tuple[str, str, str, float, str], ...] = (
    ("nonconvergent", "tv_short_kde", "<", 0.25, "short-run samples match the data"),
    ("nonconvergent", "entropy_gap", "<", -0.5, "learned density much sharper than the truth"),
    ("nonconvergent", "tv_model", ">", 0.4, "learned density is not the data density"),
    ("convergent", "tv_model", "<", 0.25, "learned density matches the data"),
    ("convergent", "tv_long_kde", "<", 0.25, "long-run samples keep matching the data"),
    ("convergent", "entropy_gap", ">", -0.25, "learned density is not much sharper"),
)


def check_claims(metrics: dict[str, dict[str, float]]) -> list[tuple[str, str, float, str, float, bool, str]]:
    """``metrics[regime]`` -> rows ``(regime, metric, value, op, threshold, ok, meaning)``."""
    rows = []
    for regime, key, op, thr, meaning in CLAIMS:
        if regime not in metrics or key not in metrics[regime]:
            continue
        v = metrics[regime][key]
        ok = v < thr if op == "<" else v > thr
        rows.append((regime, key, v, op, thr, ok, meaning))
    return rows


def reproduce(toy: str, out_dir: Path, *, regimes=REGIMES, fast: bool = False,
              overrides: list[str] | None = None, eval_overrides: dict | None = None,
              registry=None, progress: bool = False, console=None,
              threads: int | None = 1) -> dict[str, dict[str, float]]:
    """Train ``toy-<toy>-<regime>`` for each regime into ``out_dir/<regime>``, evaluate it with
    ``toy_density`` and return ``{regime: metrics}`` (also written to ``out_dir/metrics.json``).

    ``threads`` caps torch's intra-op threads while it runs (restored after): a 2-D MLP gains
    nothing from them, and on a shared CPU their spin-waiting slowed a run up to 50x.
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _reproduce(toy, out_dir, regimes=regimes, fast=fast, overrides=overrides,
                          eval_overrides=eval_overrides, registry=registry, progress=progress,
                          console=console)
    finally:
        torch.set_num_threads(previous)


def _reproduce(toy, out_dir, *, regimes, fast, overrides, eval_overrides, registry, progress,
               console) -> dict[str, dict[str, float]]:
    from ..api import evaluate, fit, load
    from ..plugins import build_registry
    from ..runconfig import RunConfig

    reg = registry if registry is not None else build_registry()
    out_dir = Path(out_dir)
    results: dict[str, dict[str, float]] = {}
    for regime in regimes:
        name = f"toy-{toy}-{regime}"
        over = (FAST_OVERRIDES[regime] if fast else []) + list(overrides or [])
        cfg = RunConfig.from_preset(name, registry=reg).with_overrides(*over)
        run_dir = out_dir / regime
        t0 = time.perf_counter()
        fit(config=cfg, out_dir=run_dir, force=True, registry=reg, progress=progress, console=console)
        t_train = time.perf_counter() - t0
        model = load(run_dir, registry=reg)  # the run's own chain starts (persistent: its buffer)
        model.meta["title"] = f"{name}: {cfg.train.iterations} iterations"
        ecfg = {**(FAST_EVAL if fast else {}), **(eval_overrides or {})}
        t0 = time.perf_counter()
        res = evaluate(model, "toy_density", out_dir=run_dir / "eval", config=ecfg, registry=reg)
        results[regime] = {**res.metrics, "train_seconds": t_train,
                           "eval_seconds": time.perf_counter() - t0,
                           "iterations": float(cfg.train.iterations)}
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


SUMMARY_KEYS = ("entropy_true", "entropy_model", "entropy_gap", "tv_model", "kl_model",
                "tv_short_kde", "tv_long_kde", "tv_data_kde", "tv_short_kde_vs_model",
                "tv_long_kde_vs_model", "mmd_short", "mmd_long", "mmd_data", "train_seconds")
