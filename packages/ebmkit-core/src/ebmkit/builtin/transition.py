"""The K-transition view (rebuttal): the same chains run to K = 0, 20, 40, ..., 1000 steps.

A short-run model is trained with K1 steps; the rebuttal's claim is that sampling with K2 > K1
steps keeps lowering the energy and saturates the images. This evaluator runs one set of chains
and records, at every K of the grid, the mean energy, a saturation score (the fraction of pixels
within ``1 − saturation`` of the range limits ±1) and, at every ``metric_every``-th K, the
installed **sample metrics** of the chains against the data: registered evaluators that
implement :class:`~ebmkit.SampleMetric` (ebmkit-fid's ``fid``, ``kid``, ``prc``, or any other
plugin's), found by that interface and called through ``score(samples, reference)``. It ends
with one verdict: "over-saturates beyond K ≈ …" or "stable up to K = …".
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from ..evaluation import data_batch, write_json
from ..hookspecs import hookimpl
from ..images import save_grid
from ..interfaces import EvalResult, Evaluator, SampleMetric
from ..params import param, parse_override, to_dict


@dataclass(frozen=True, kw_only=True)
class TransitionConfig:
    n: int = param(64, "Chains (all Ks use the same chains).", min=1)
    max_k: int = param(1000, "Largest K.", min=1)
    k_step: int = param(20, "Grid spacing: K = 0, k_step, 2 k_step, ..., max_k.", min=1)
    saturation: float = param(0.95, "|x| above this counts as a saturated pixel.", min=0.0)
    rise: float = param(0.05, "Verdict: over-saturated where the saturation score exceeds its "
                        "value at the model's own K by more than this.", min=0.0)
    strips: int = param(8, "Chains drawn as strips (one row each).", min=0)
    columns: int = param(11, "Ks shown per strip (evenly spread over the grid).", min=2)
    metrics: tuple[str, ...] | None = param(
        None, "Sample metrics scored per K (registered evaluators implementing ebmkit.SampleMetric, "
        "e.g. fid, kid, prc from ebmkit-fid). Default: every installed one marked cheap (fid, kid) "
        "when the model makes images and there is data; [] = none.")
    metric_every: int = param(5, "Sample metrics at every metric_every-th K of the grid (and at "
                              "the model's K and the last).", min=1)
    metric_options: tuple[str, ...] = param(
        (), "KEY=VALUE options for the sample metrics, each given to every chosen metric that has "
        "KEY (e.g. [feature_extractor=ebmkit-pixels, inception_weights=PATH]); n and seed are "
        "this evaluator's.")
    seed: int = param(0, "Seed of the chains and of the reference batch.")


class _Metrics:
    """The chosen sample metrics and the reference batch they score the chains against."""

    def __init__(self, metrics: dict[str, Any], reference: Tensor):
        self.metrics, self.reference = metrics, reference
        #: The headline number of each metric (its first ``metric_names`` entry): plotted.
        self.headline = [m.metric_names[0] for m in metrics.values() if m.metric_names]

    def __call__(self, x: Tensor) -> dict[str, float]:
        ref = self.reference.to(x.device)
        out: dict[str, float] = {}
        for metric in self.metrics.values():
            out.update({k: float(v) for k, v in metric.score(x, ref).items()})
        return out

    def configs(self) -> dict[str, dict[str, Any]]:
        return {name: to_dict(m.config) for name, m in self.metrics.items()}


def sample_metric_classes(registry: Any) -> dict[str, type]:
    """The registered evaluators that implement :class:`~ebmkit.SampleMetric`, by name."""
    if registry is None:
        return {}
    return {e.name: e.obj for e in registry.entries("evaluator")
            if isinstance(e.obj, type) and issubclass(e.obj, SampleMetric)}


class Transition(Evaluator):
    """Runs the same chains through a grid of K and reports energy, saturation and the installed
    sample metrics (FID/KID with ebmkit-fid) per K, with strips per chain and one verdict line."""

    name = "transition"
    summary = ("K-transition view (rebuttal): the same chains to K = 0..1000; energy, saturation "
               "and sample metrics (FID/KID with ebmkit-fid) per K, strips, a verdict.")
    Config = TransitionConfig

    @torch.no_grad()
    def evaluate(self, model, data, out_dir):
        c = self.config
        ks = list(range(0, c.max_k + 1, c.k_step))
        if ks[-1] != c.max_k:
            ks.append(c.max_k)
        k_model = min(ks, key=lambda k: abs(k - model.steps))
        quality = self._metrics(model, data)
        metric_ks = set(ks[:: c.metric_every]) | {k_model, ks[-1]} if quality else set()
        g = torch.Generator(device=model.device).manual_seed(c.seed)
        x = model.starts(c.n, generator=g)
        is_image = x.dim() == 4
        rows, snaps, done = [], {}, 0
        model.energy.eval()
        show = {ks[round(i * (len(ks) - 1) / (c.columns - 1))] for i in range(c.columns)}
        for k in ks:
            if k > done:
                x = model.sampler.run(model.energy, x, k - done, generator=g).x
                done = k
            row = {"K": k, "energy": float(model.energy(x).mean()),
                   "saturation": float((x.abs() > c.saturation).float().mean())}
            if k in metric_ks:
                row.update(quality(x))
            rows.append(row)
            if k in show and is_image:
                snaps[k] = x[: c.strips].cpu()
        sat_data = None
        if data is not None and is_image:
            try:
                xd = data_batch(data, c.n, c.seed).to(model.device)
                u_data = float(model.energy(xd).mean())
                sat_data = float((xd.abs() > c.saturation).float().mean())
            except DataError:
                pass
        # over-saturated: above both the model's own K and the data (when known) by `rise`
        at_model = next(r["saturation"] for r in rows if r["K"] == k_model)
        base = max(at_model, sat_data) if sat_data is not None else at_model
        over = [r["K"] for r in rows if r["K"] > k_model and r["saturation"] > base + c.rise]
        ref = f"the model's K = {k_model}: {at_model:.2f}" + (
            f", data: {sat_data:.2f}" if sat_data is not None else "")
        verdict = (f"over-saturates beyond K ≈ {over[0]} (saturation > {base + c.rise:.2f} from "
                   f"K = {over[0]}; {ref}; K = {ks[-1]}: {rows[-1]['saturation']:.2f})" if over else
                   f"stable up to K = {ks[-1]} (saturation {rows[-1]['saturation']:.2f} at K = "
                   f"{ks[-1]}, never above {base + c.rise:.2f}; {ref})")
        first, at, last = rows[0], next(r for r in rows if r["K"] == k_model), rows[-1]
        m = {"k_model": float(k_model), "energy_k0": first["energy"], "energy_k_model": at["energy"],
             "energy_k_max": last["energy"], "saturation_k0": first["saturation"],
             "saturation_k_model": at["saturation"], "saturation_k_max": last["saturation"],
             "oversaturates": float(bool(over)), "verdict_k": float(over[0] if over else ks[-1])}
        if sat_data is not None:
            m["energy_data"], m["saturation_data"] = u_data, sat_data
        scored = [key for key in at if key not in ("K", "energy", "saturation")]
        for key in scored:  # the sample metrics' numbers at the model's K and the last
            m[f"{key}_k_model"], m[f"{key}_k_max"] = at[key], last[key]
        doc = {**m, "verdict": verdict, "curve": rows, "seed": c.seed, "n": c.n,
               "sampler": model.sampler.name, "checkpoint_step": model.step,
               "sample_metrics": quality.configs() if quality else {}}
        if out_dir is None:  # in memory: numbers only, no file
            return EvalResult(metrics=m)
        out_dir = Path(out_dir)
        write_json(out_dir, "transition_metrics.json", doc)
        (out_dir / "transition_verdict.txt").write_text(verdict + "\n")
        figures = {"curves": self._plot(rows, m, k_model, verdict, out_dir / "transition_curves.png",
                                        quality.headline if quality else [])}
        if snaps and c.strips:
            cols = sorted(snaps)
            strip = torch.stack([snaps[k] for k in cols], 1).reshape(-1, *x.shape[1:])
            figures["strips"] = save_grid(strip, out_dir / "transition_strips.png",
                                          nrow=len(cols), scale=2)
        return EvalResult(metrics=m, figures=figures)

    def _metrics(self, model, data) -> _Metrics | None:
        """The sample metrics to score per K (``None``: none), checked before any chain runs:
        ``metrics`` names registered evaluators implementing :class:`~ebmkit.SampleMetric`; by
        default the installed ones whose class says ``cheap``, for image models with data."""
        c = self.config
        available = sample_metric_classes(model.registry)
        if c.metrics is None:
            if len(model.shape) != 3 or data is None:
                return None
            names = [name for name, cls in available.items() if cls.cheap]
        else:
            names = list(dict.fromkeys(c.metrics))
            for name in names:
                if name not in available:
                    close = difflib.get_close_matches(name, list(available), n=1)
                    hint = f" Did you mean '{close[0]}'?" if close else ""
                    raise ConfigError(
                        f"transition.metrics: '{name}' is not a sample metric (an evaluator "
                        f"implementing ebmkit.SampleMetric).{hint} Available: "
                        f"{', '.join(available) or 'none installed (pip install ebmkit-fid)'}")
        if not names:
            return None
        if data is None:
            raise DataError(f"transition.metrics ({', '.join(names)}) score the chains against "
                            "reference data: give --data NAME (or data=), or metrics=[]")
        options: dict[str, str] = {}
        for text in c.metric_options:
            _, key, value = parse_override(text, section="metric_options",
                                           flag="transition.metric_options")
            options[key] = value
        have = {name: {f.name for f in fields(available[name].Config)} for name in names}
        unused = sorted(set(options) - set().union(*have.values()))
        if unused:
            raise ConfigError(f"transition.metric_options: no chosen metric ({', '.join(names)}) "
                              f"has the option '{unused[0]}'; see ebmkit describe evaluator NAME")
        metrics = {}
        for name in names:
            cfg = {k: v for k, v in options.items() if k in have[name]}
            cfg.update({k: v for k, v in (("n", c.n), ("seed", c.seed)) if k in have[name]})
            metrics[name] = model.component("evaluator", name, cfg)
        return _Metrics(metrics, data_batch(data, c.n, c.seed))

    @staticmethod
    def _plot(rows, m, k_model, verdict, path: Path, headline=()) -> Path:
        from ..plotting import new_figure, save_figure

        ks = [r["K"] for r in rows]
        panels = [("energy", "mean energy U"), ("saturation", "saturation score")]
        panels += [(key, key) for key in headline if any(key in r for r in rows)]
        scored = {key for key, _ in panels[2:]}
        fig = new_figure(figsize=(3.2 * len(panels), 3.2))
        axes = fig.subplots(1, len(panels))
        for ax, (key, label) in zip(axes, panels, strict=True):
            pts = [(r["K"], r[key]) for r in rows if key in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if key in scored else "-",
                    ms=3, lw=1.2)
            if key in scored:  # K = 0 (the noise) is far above the rest
                ys = [p[1] for p in pts]
                ax.set_yscale("log" if min(ys) > 0 else "symlog", **({} if min(ys) > 0 else {"linthresh": 1e-3}))
            ax.axvline(k_model, color="C1", ls="--", lw=1, label=f"model's K = {k_model}")
            data_key = {"energy": "energy_data", "saturation": "saturation_data"}.get(key)
            if data_key and data_key in m:
                ax.axhline(m[data_key], color="C2", ls=":", lw=1.5, label="data")
            ax.set_xlabel("K (Langevin steps from the same starts)")
            ax.set_ylabel(label)
            ax.set_xlim(0, max(ks))
        axes[0].legend(fontsize=7)
        fig.suptitle(verdict, fontsize=8)
        return save_figure(fig, path)


@hookimpl
def ebmkit_register(register):
    register(Transition)
