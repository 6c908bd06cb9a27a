"""The anatomy paper's image-space claim (§3-4) on real 8x8 digits: train the non-convergent and
the convergent preset on ``digits8``, run the ``digits-longrun`` evaluator on each, draw them
side by side and check the claims against thresholds fixed before the full runs.

Library: :func:`reproduce`; command line: ``ebmkit reproduce digits`` (:mod:`ebmkit.cli.reproduce`).
See docs/reproductions/digits.md.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

REGIMES = ("nonconvergent", "convergent")
PRESETS = {r: f"digits8-{r}" for r in REGIMES}

#: The full evaluation: 500 chains per (sampler, start), 10^4 steps (anatomy: 10^4-10^5).
FULL_EVAL: dict = {"n": 500, "steps": 10_000}

#: Shortened settings for a quick look and the fast test: the direction of the effects only.
FAST_OVERRIDES = {
    "nonconvergent": ["train.iterations=150"],
    "convergent": ["train.iterations=150", "sampler.steps=50", "init.buffer_size=500",
                   "train.decay_start=100", "train.lr_decay_every=25"],
}
FAST_EVAL: dict = {"n": 100, "steps": 300, "checkpoints": 4, "chains": ("mala-noise",),
                   "short_run": True}

#: The chain the claims read: MALA (exact for exp(-U)) started from uniform noise.
LONG = "mala-noise"

#: What counts as a reproduction. Each entry: (regime, metric, op, threshold, meaning).
#: Fixed before the full runs (after shortened exploratory runs; see docs/reproductions/digits.md
#: for the reasoning). ``*_mmd_ratio`` = MMD² / noise floor (held-out vs train digits, same n).
CLAIMS: tuple[tuple[str, str, str, float, str], ...] = (
    ("nonconvergent", "short_mmd_ratio", "<", 3.0,
     "short-run samples near the data by MMD (< 3x the noise floor)"),
    ("nonconvergent", "short_confidence_gap", ">", -0.1,
     "short-run samples look like digits to the classifier (confidence within 0.1 of the data's)"),
    ("nonconvergent", "long_energy_z", "<", -5.0,
     "long-run energy far below the data's (< -5 held-out sd)"),
    ("nonconvergent", "long_saturation_gap", ">", 0.1,
     "long-run samples oversaturated (saturated-pixel fraction > data's + 0.1)"),
    ("nonconvergent", "long_mmd_ratio", ">", 10.0,
     "long-run samples far from the data by MMD (> 10x the noise floor)"),
    ("convergent", "long_mmd_ratio", "<", 5.0,
     "long-run samples (>= 10^4 MALA steps from noise) within 5x the noise floor by MMD"),
    ("convergent", "long_energy_z_abs", "<", 1.0,
     "long-run samples keep the data's energy (|mean - data mean| < 1 held-out sd)"),
    ("convergent", "long_energy_in_range", ">", 0.8,
     "long-run energies inside the data's 1st-99th percentile range (> 80% of chains)"),
    ("convergent", "long_classes", ">", 9.5,
     "long-run samples cover all ten classes (each >= 1% of the samples)"),
)


#: Issue 24's sample-quality targets for the digits presets: stricter than the reproduction's
#: claims, written here (2026-12-07) before the runs that test them. Same format as CLAIMS;
#: ``check_claims(metrics, TARGETS)`` checks them.
TARGETS: tuple[tuple[str, str, str, float, str], ...] = (
    ("convergent", "long_mmd_ratio", "<", 3.0,
     "long-run samples (10^4 MALA steps from noise) within 3x the noise floor by MMD"),
    ("convergent", "long_classes", ">", 9.5,
     "long-run samples cover all ten classes (each >= 1% of the samples)"),
    ("nonconvergent", "short_confidence_gap", ">", -0.1,
     "short-run samples look like digits to the classifier (confidence within 0.1 of the data's)"),
)


def derived(m: dict[str, float]) -> dict[str, float]:
    """The quantities the claims read, from one ``digits-longrun`` metrics dict."""
    floor = m["mmd_floor"]
    out = {}
    if "short_mmd" in m:
        out["short_mmd_ratio"] = m["short_mmd"] / floor
        out["short_confidence_gap"] = m["short_confidence"] - m["data_confidence"]
    if f"{LONG}_mmd" in m:
        out["long_mmd_ratio"] = m[f"{LONG}_mmd"] / floor
        out["long_energy_z"] = m[f"{LONG}_energy_z"]
        out["long_energy_z_abs"] = abs(m[f"{LONG}_energy_z"])
        out["long_energy_in_range"] = m[f"{LONG}_energy_in_range"]
        out["long_saturation_gap"] = m[f"{LONG}_saturation"] - m["data_saturation"]
        out["long_classes"] = m[f"{LONG}_classes"]
        out["long_confidence"] = m[f"{LONG}_confidence"]
        out["long_class_entropy"] = m[f"{LONG}_class_entropy"]
        out["long_accept"] = m.get(f"{LONG}_accept", math.nan)
    return out


def check_claims(metrics: dict[str, dict[str, float]], claims=CLAIMS
                 ) -> list[tuple[str, str, float, str, float, bool, str]]:
    """``metrics[regime]`` -> rows ``(regime, metric, value, op, threshold, ok, meaning)`` for
    ``claims`` (default :data:`CLAIMS`; :data:`TARGETS` for issue 24's targets)."""
    rows = []
    for regime, key, op, thr, meaning in claims:
        if regime not in metrics or key not in metrics[regime]:
            continue
        v = metrics[regime][key]
        ok = bool(v < thr) if op == "<" else bool(v > thr)
        rows.append((regime, key, v, op, thr, ok, meaning))
    return rows


def reproduce(out_dir: Path, *, regimes=REGIMES, fast: bool = False,
              overrides: dict[str, list[str]] | None = None, eval_overrides: dict | None = None,
              registry=None, progress: bool = False, console=None,
              threads: int | None = 1) -> dict[str, dict[str, float]]:
    """Train ``digits8-<regime>`` for each regime into ``out_dir/<regime>``, evaluate it with
    ``digits-longrun`` and return ``{regime: metrics}``. ``out_dir/metrics.json`` and the figure
    ``out_dir/digits_side_by_side.png`` also keep a regime run earlier into the same directory
    (so ``--regime nonconvergent`` then ``--regime convergent`` gives the whole picture). ``overrides[regime]``: extra ``SECTION.KEY=VALUE``
    training overrides. ``threads`` caps torch's intra-op threads while it runs (restored
    after): these small MLPs gain nothing from more on a shared CPU.
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _reproduce(Path(out_dir), regimes=regimes, fast=fast, overrides=overrides or {},
                          eval_overrides=eval_overrides or {}, registry=registry,
                          progress=progress, console=console)
    finally:
        torch.set_num_threads(previous)


def _reproduce(out_dir, *, regimes, fast, overrides, eval_overrides, registry, progress,
               console) -> dict[str, dict[str, float]]:
    from ..api import evaluate, fit, load
    from ..plugins import build_registry
    from ..runconfig import RunConfig, build_document

    reg = registry if registry is not None else build_registry()
    results: dict[str, dict[str, float]] = {}
    for regime in regimes:
        name = PRESETS[regime]
        over = (FAST_OVERRIDES[regime] if fast else []) + list(overrides.get(regime, []))
        # From the document, so an override of train.lr or sampler.step_size still gets the
        # App. A rescaling of train.convergent (with_overrides on a resolved config would not).
        doc = build_document(preset_doc=reg.get("preset", name).read(), overrides=over)
        cfg = RunConfig.from_dict(doc, registry=reg)
        run_dir = out_dir / regime
        t0 = time.perf_counter()
        fit(config=cfg, out_dir=run_dir, force=True, registry=reg, progress=progress, console=console)
        t_train = time.perf_counter() - t0
        model = load(run_dir, registry=reg)
        model.meta["title"] = f"{name}: {cfg.train.iterations} iterations"
        ecfg = {**(FAST_EVAL if fast else FULL_EVAL), **eval_overrides}
        t0 = time.perf_counter()
        res = evaluate(model, "digits-longrun", out_dir=run_dir / "eval", config=ecfg, registry=reg)
        m = dict(res.metrics)
        results[regime] = {**m, **derived(m), "train_seconds": t_train,
                           "eval_seconds": time.perf_counter() - t0,
                           "iterations": float(cfg.train.iterations)}
    # One regime at a time into the same directory adds up: keep the other regime's numbers.
    path = out_dir / "metrics.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    merged = {r: (results[r] if r in results else previous[r]) for r in REGIMES
              if r in results or (r in previous and (out_dir / r / "eval").is_dir())}
    path.write_text(json.dumps(merged, indent=2) + "\n")
    side_by_side(out_dir, list(merged))
    return results


SUMMARY_KEYS = ("mmd_floor", "data_confidence", "data_saturation", "short_mmd_ratio",
                "short_confidence", "short_energy_z", "short_saturation", "long_mmd_ratio",
                "long_energy_z", "long_energy_in_range", "long_saturation_gap", "long_confidence",
                "long_class_entropy", "long_classes", "long_accept", "ula-noise_mmd",
                "ula-noise_energy_z", "mala-data_mmd", "mala-data_energy_z", "train_seconds",
                "eval_seconds")


# ---------------------------------------------------------------------------------------------
# the side-by-side figure
# ---------------------------------------------------------------------------------------------
def _grid_image(x: np.ndarray, nrow: int) -> np.ndarray:
    """``[n, 1, 8, 8]`` in [-1, 1] -> one grey image with a 1-pixel gap, values clipped to [0, 1]."""
    n = x.shape[0]
    rows = math.ceil(n / nrow)
    img = np.ones((rows * 9 + 1, nrow * 9 + 1))
    for i in range(n):
        r, c = divmod(i, nrow)
        img[1 + 9 * r: 9 + 9 * r, 1 + 9 * c: 9 + 9 * c] = (x[i, 0] + 1) / 2
    return img.clip(0, 1)


def side_by_side(out_dir: Path, regimes: list[str], *, k: int = 25) -> Path:
    """Rows: regimes. Columns: short-run samples and the MALA-from-noise chains at three step
    counts; below, the curves of both regimes against the step count."""
    from ..plotting import new_figure, save_figure

    out_dir = Path(out_dir)
    data = {r: np.load(out_dir / r / "eval" / "digits_longrun_snapshots.npz") for r in regimes}
    curves = {r: json.loads((out_dir / r / "eval" / "digits_longrun_curves.json").read_text())
              for r in regimes}
    metrics = {r: json.loads((out_dir / r / "eval" / "digits_longrun_metrics.json").read_text())
               for r in regimes}
    fig = new_figure(figsize=(15, 3.5 * len(regimes) + 4.2), layout="constrained")
    sub = fig.subfigures(2, 1, height_ratios=[3.5 * len(regimes), 4.2])
    axes = sub[0].subplots(len(regimes), 4, squeeze=False)
    for i, r in enumerate(regimes):
        d = data[r]
        steps = d[f"{LONG}_steps"]
        snaps = d[LONG]
        picks = [s for s in (100, 1000, int(steps[-1])) if s in steps.tolist()] or [int(steps[-1])]
        panels = [("short-run samples", d["short"][:k] if "short" in d else None)]
        panels += [(f"MALA from noise, {s:,} steps", snaps[steps.tolist().index(s)][:k]) for s in picks]
        for j in range(4):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(panels) and panels[j][1] is not None:
                ax.imshow(_grid_image(panels[j][1], 5), cmap="gray", vmin=0, vmax=1)
                ax.set_title(panels[j][0], fontsize=9)
        axes[i, 0].set_ylabel(r, fontsize=11)
    cax = sub[1].subplots(1, 4)
    keys = (("mmd", "MMD² / noise floor", "log"), ("energy_z", "energy z vs held-out", "symlog"),
            ("saturation", "saturated pixels", "linear"), ("confidence", "classifier confidence", "linear"))
    for ax, (key, label, scale) in zip(cax, keys, strict=True):
        for i, r in enumerate(regimes):
            rows = curves[r][LONG]
            y = np.asarray(rows[key], dtype=float)
            if key == "mmd":
                y = y / metrics[r]["mmd_floor"]
            ax.plot(np.asarray(rows["steps"]) + 1, y, marker="o", ms=3, color=f"C{i}", label=r)
        ref = {"mmd": 1.0, "energy_z": 0.0}.get(key)
        if ref is None:
            ref = float(np.mean([metrics[r][f"data_{key}"] for r in regimes]))
        ax.axhline(ref, color="k", ls=":", lw=1.5, label="held-out digits")
        ax.set_xscale("log")
        if scale == "log":
            ax.set_yscale("log")
        elif scale == "symlog":
            ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlabel("MALA steps from noise + 1")
        ax.set_title(label, fontsize=9)
    cax[0].legend(fontsize=8)
    return save_figure(fig, out_dir / "digits_side_by_side.png", dpi=100)
