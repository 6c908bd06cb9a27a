"""The K-transition view (rebuttal): the same chains run to K = 0, 20, 40, ..., 1000 steps.

A short-run model is trained with K1 steps; the rebuttal's claim is that sampling with K2 > K1
steps keeps lowering the energy and saturates the images. This evaluator runs one set of chains
and records, at every K of the grid, the mean energy, a saturation score (the fraction of pixels
within ``1 − saturation`` of the range limits ±1) and, when an installed plugin registers the
evaluators ``fid`` and ``kid`` (ebmkit-fid), FID and KID of the chains at every ``fid_every``-th
K. It ends with one verdict: "over-saturates beyond K ≈ …" or "stable up to K = …".
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import DataError, UnknownComponentError
from ..evaluation import data_batch
from ..hookspecs import hookimpl
from ..images import save_grid
from ..interfaces import EvalResult, Evaluator
from ..model import EBM
from ..params import param


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
    fid: bool = param(True, "FID/KID per K when the fid and kid evaluators are installed (ebmkit-fid).")
    fid_every: int = param(5, "FID/KID at every fid_every-th K of the grid (and at the model's K).", min=1)
    fid_extractor: str | None = param(None, "Feature extractor for FID/KID (default: the fid plugin's).")
    kid_subset_size: int | None = param(None, "KID subset size (default: min(1000, n)).")
    seed: int = param(0, "Seed of the chains.")


class _Fixed(EBM):
    """An EBM whose ``sample`` returns given chain states: lets an installed ``fid``/``kid``
    evaluator score the chains at one K through the plain Evaluator interface."""

    def __init__(self, model: EBM, x: Tensor, k: int):
        super().__init__(model.energy, model.sampler, model.initializer, steps=k,
                         shape=model.shape, config=model.config, step=model.step,
                         meta=model.meta, registry=model.registry)
        self._x = x

    def sample(self, n, **kwargs):
        return self._x[:n]


class _Quality:
    """Scores chain states with the ``fid`` and ``kid`` evaluators (their JSON goes to a
    temporary directory; the first one's ``setup`` is kept for the transition's JSON)."""

    def __init__(self, model: EBM, fid: Evaluator, kid: Evaluator):
        self.model, self.fid, self.kid, self.setup = model, fid, kid, None
        self._tmp = tempfile.TemporaryDirectory(prefix="ebmkit-transition-")

    def __call__(self, x: Tensor, k: int, data) -> dict[str, float]:
        tmp = Path(self._tmp.name)
        fixed = _Fixed(self.model, x, k)
        out = {"fid": self.fid.evaluate(fixed, data, tmp).metrics["fid"],
               "kid_mean": self.kid.evaluate(fixed, data, tmp).metrics["kid_mean"]}
        if self.setup is None and (tmp / "fid_metrics.json").is_file():
            self.setup = json.loads((tmp / "fid_metrics.json").read_text()).get("setup")
        return out

    def close(self) -> None:
        self._tmp.cleanup()


class Transition(Evaluator):
    """Runs the same chains through a grid of K and reports energy, saturation and (with the fid
    plugin) FID/KID per K, with strips per chain and one verdict line."""

    name = "transition"
    summary = ("K-transition view (rebuttal): the same chains to K = 0..1000; energy, saturation "
               "and FID/KID (ebmkit-fid) per K, strips, a verdict.")
    Config = TransitionConfig

    @torch.no_grad()
    def evaluate(self, model, data, out_dir):
        c = self.config
        out_dir = Path(out_dir)
        ks = list(range(0, c.max_k + 1, c.k_step))
        if ks[-1] != c.max_k:
            ks.append(c.max_k)
        k_model = min(ks, key=lambda k: abs(k - model.steps))
        quality = self._quality(model) if c.fid else None
        fid_ks = set(ks[:: c.fid_every]) | {k_model, ks[-1]} if quality else set()
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
            if k in fid_ks:
                row.update(quality(x, k, data))
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
        for key in ("fid", "kid_mean"):
            if key in at:
                m[f"{key}_k_model"], m[f"{key}_k_max"] = at[key], last[key]
        out_dir.mkdir(parents=True, exist_ok=True)
        doc = {**m, "verdict": verdict, "curve": rows, "seed": c.seed, "n": c.n,
               "sampler": model.sampler.name, "checkpoint_step": model.step,
               "fid_setup": quality.setup if quality else None}
        if quality:
            quality.close()
        (out_dir / "transition_metrics.json").write_text(json.dumps(doc, indent=2) + "\n")
        (out_dir / "transition_verdict.txt").write_text(verdict + "\n")
        figures = {"curves": self._plot(rows, m, k_model, verdict, out_dir / "transition_curves.png")}
        if snaps and c.strips:
            cols = sorted(snaps)
            strip = torch.stack([snaps[k] for k in cols], 1).reshape(-1, *x.shape[1:])
            figures["strips"] = save_grid(strip, out_dir / "transition_strips.png",
                                          nrow=len(cols), scale=2)
        return EvalResult(metrics=m, figures=figures)

    def _quality(self, model) -> _Quality | None:
        """FID and KID of the chains at one K, from the installed ``fid``/``kid`` evaluators;
        ``None`` when they are not registered."""
        c = self.config
        cfg = {"n": c.n, "seed": c.seed}
        if c.fid_extractor:
            cfg["feature_extractor"] = c.fid_extractor
        try:
            fid = model.component("evaluator", "fid", cfg)
            kid = model.component("evaluator", "kid",
                                  {**cfg, "kid_subset_size": c.kid_subset_size or min(1000, c.n)})
        except UnknownComponentError:
            return None
        return _Quality(model, fid, kid)

    @staticmethod
    def _plot(rows, m, k_model, verdict, path: Path) -> Path:
        from ..plotting import new_figure, save_figure

        ks = [r["K"] for r in rows]
        panels = [("energy", "mean energy U"), ("saturation", "saturation score")]
        if any("fid" in r for r in rows):
            panels += [("fid", "FID"), ("kid_mean", "KID")]
        fig = new_figure(figsize=(3.2 * len(panels), 3.2))
        axes = fig.subplots(1, len(panels))
        for ax, (key, label) in zip(axes, panels, strict=True):
            pts = [(r["K"], r[key]) for r in rows if key in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if key in ("fid", "kid_mean") else "-",
                    ms=3, lw=1.2)
            if key in ("fid", "kid_mean"):  # K = 0 (the noise) is far above the rest
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
