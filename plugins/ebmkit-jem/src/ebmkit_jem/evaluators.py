"""Evaluators for models with a conditional energy (a JEM or any classifier energy):

* ``accuracy``: classification accuracy and NLL of ``p(y | x)`` on labelled data;
* ``calibration``: expected calibration error and the reliability diagram;
* ``ood``: out-of-distribution AUROC of three scores (log p(x), max softmax, gradient norm)
  against uniform noise, constant images, inverted images and the other embedded digits set;
* ``class-samples``: class-conditional samples judged by an independently trained classifier,
  with a grid of a row per class.

All read the data's held-out split by default (``split``), a seeded subset of ``n`` examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ebmkit import ConfigError, DataError, EvalResult, Evaluator, MissingDependencyError, param
from ebmkit.evaluation import figure_path, write_metrics
from ebmkit.interfaces import classes_of
from torch import Tensor

from .judge import judge_for
from .metrics import (
    OOD_SCORES,
    auroc,
    calibration,
    class_logits,
    ood_scores,
    ood_sets,
    resize_images,
)

__all__ = ["EVALUATORS", "Accuracy", "CalibrationEval", "ClassSamples", "OOD", "labelled"]

#: The other embedded digits set of each (the ``ood`` evaluator's ``other = "auto"``).
OTHER = {"mnist5k": "digits8", "digits8": "mnist5k"}


def labelled(data: Any, split: str, n: int, seed: int, who: str) -> tuple[Tensor, Tensor]:
    """A seeded subset of ``n`` labelled examples ``(x, y)`` of ``split`` (all when fewer)."""
    if data is None:
        raise DataError(f"evaluator '{who}' needs labelled data: pass data= (e.g. 'mnist5k'; "
                        "--data NAME on the command line)")
    ds = data.open(split=split)
    tensors = getattr(ds, "tensors", None)
    if not tensors or len(tensors) < 2:
        raise DataError(f"evaluator '{who}' needs labelled data ((x, y) items); dataset "
                        f"'{getattr(data, 'name', '?')}' has no labels")
    x, y = tensors[0], tensors[1].long()
    if n and n < len(x):
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
        x, y = x[idx], y[idx]
    return x, y


def _conditional(model: Any, who: str) -> int:
    k = classes_of(model.energy)
    if k is None:
        raise ConfigError(f"evaluator '{who}' needs a conditional energy (a classifier energy such "
                          "as jem-cnn, trained with the jem or ce objective); this model's energy "
                          "is unconditional")
    return k


def _probs(model: Any, x: Tensor, bs: int) -> Tensor:
    energy = model.energy
    was = energy.training
    energy.eval()
    try:
        return torch.softmax(class_logits(energy, x.to(model.device), batch_size=bs), dim=1).cpu()
    finally:
        energy.train(was)


@dataclass(frozen=True, kw_only=True)
class ClassifyConfig:
    split: str = param("heldout", "Data split scored (mnist5k needs data.heldout > 0).")
    n: int = param(0, "Examples scored (a seeded subset; 0 = the whole split).", min=0)
    batch_size: int = param(256, "Examples per forward pass.", min=1)
    seed: int = param(0, "Seed of the subset.", min=0)


class Accuracy(Evaluator):
    name = "accuracy"
    summary = "Classification accuracy and NLL of p(y|x) of a conditional energy on labelled data."
    Config = ClassifyConfig

    def evaluate(self, model, data, out_dir):
        k = _conditional(model, self.name)
        c = self.config
        x, y = labelled(data, c.split, c.n, c.seed, self.name)
        p = _probs(model, x, c.batch_size)
        if int(y.max()) >= k:
            raise DataError(f"the data has label {int(y.max())} but the energy has {k} classes")
        acc = float((p.argmax(1) == y).double().mean())
        nll = float(-torch.log(p.gather(1, y[:, None]).clamp_min(1e-300)).mean())
        m = {"accuracy": acc, "error": 1 - acc, "nll": nll, "n": float(len(y))}
        write_metrics(out_dir, self.name, m)
        return EvalResult(metrics=m)


@dataclass(frozen=True, kw_only=True)
class CalibrationConfig(ClassifyConfig):
    bins: int = param(15, "Equal-width confidence bins of the ECE (JEM: 20).", min=1)


def reliability_figure(cal, acc: float, path, title: str = "") -> Any:
    from ebmkit.plotting import new_figure, save_figure

    fig = new_figure(figsize=(4.2, 4.2))
    ax = fig.subplots()
    mid = (cal.edges[:-1] + cal.edges[1:]) / 2
    width = cal.edges[1] - cal.edges[0]
    filled = cal.counts > 0
    ax.bar(mid[filled], cal.accuracy[filled], width=width * 0.95, color="C0", edgecolor="k",
           label="accuracy per bin")
    ax.bar(mid[filled], (cal.confidence - cal.accuracy)[filled], bottom=cal.accuracy[filled],
           width=width * 0.95, color="C3", alpha=0.35, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence max_y p(y|x)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}ECE {cal.ece:.3f}, accuracy {acc:.3f}")
    ax.legend(loc="upper left", fontsize=8)
    return save_figure(fig, path)


class CalibrationEval(Evaluator):
    name = "calibration"
    summary = "Expected calibration error of p(y|x) with a reliability diagram (reliability.png)."
    Config = CalibrationConfig

    def evaluate(self, model, data, out_dir):
        _conditional(model, self.name)
        c = self.config
        x, y = labelled(data, c.split, c.n, c.seed, self.name)
        p = _probs(model, x, c.batch_size)
        conf, pred = p.max(dim=1)
        correct = (pred == y).double()
        cal = calibration(conf, correct, n_bins=c.bins)
        acc = float(correct.mean())
        m = {"ece": cal.ece, "mce": cal.mce, "accuracy": acc,
             "mean_confidence": float(conf.double().mean()), "n": float(len(y))}
        write_metrics(out_dir, self.name, {
            **m, "bins": c.bins, "bin_edges": cal.edges.tolist(),
            "bin_counts": cal.counts.astype(int).tolist(),
            "bin_accuracy": [None if np.isnan(v) else float(v) for v in cal.accuracy],
            "bin_confidence": [None if np.isnan(v) else float(v) for v in cal.confidence]})
        figures = {}
        path = figure_path(out_dir, "reliability.png")
        if path is not None:
            figures["reliability"] = reliability_figure(cal, acc, path)
        return EvalResult(metrics=m, figures=figures)


@dataclass(frozen=True, kw_only=True)
class OODConfig(ClassifyConfig):
    n: int = param(1000, "In-distribution examples (and as many of each OOD set).", min=2)
    other: str = param("auto", "The other data set (resized to the model's shape): a dataset name, "
                               "auto (mnist5k <-> digits8) or none.")


def ood_figure(scores: dict[str, dict[str, Tensor]], aurocs: dict[str, float], path) -> Any:
    from ebmkit.plotting import new_figure, save_figure

    fig = new_figure(figsize=(4.0 * len(OOD_SCORES), 3.4))
    axes = fig.subplots(1, len(OOD_SCORES))
    for ax, score in zip(axes, OOD_SCORES, strict=True):
        allv = torch.cat([s[score] for s in scores.values()]).numpy()
        finite = allv[np.isfinite(allv)]
        lo, hi = (np.quantile(finite, 0.005), np.quantile(finite, 0.995)) if finite.size else (0, 1)
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 50)
        for i, (name, s) in enumerate(scores.items()):
            v = s[score].numpy()
            label = name if name == "data" else f"{name} (AUROC {aurocs[f'{score}/{name}']:.3f})"
            ax.hist(np.clip(v[np.isfinite(v)], bins[0], bins[-1]), bins=bins, alpha=0.45,
                    density=True, color=f"C{i}", label=label)
        ax.set_title(score)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


class OOD(Evaluator):
    name = "ood"
    summary = ("Out-of-distribution AUROC of log p(x), max softmax and gradient norm vs noise, "
               "constant, inverted and the other digits set (ood_hist.png).")
    Config = OODConfig

    def _other(self, model, data) -> Tensor | None:
        name = self.config.other
        if name == "none":
            return None
        if name == "auto":
            name = OTHER.get(getattr(data, "name", ""))
            if name is None:
                return None
        try:
            src = model.component("dataset", name)
            ds = src.open(split="all")
        except MissingDependencyError:
            if self.config.other == "auto":
                return None
            raise
        x = getattr(ds, "tensors", (None,))[0]
        if x is None:
            raise DataError(f"ood: dataset '{name}' is not held in memory; give other = none")
        if len(model.shape) != 3:
            raise ConfigError("ood: the other data set needs image data [C, H, W]; set other = none")
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.config.seed + 1))
        return resize_images(x[perm[: self.config.n]], model.shape)

    def evaluate(self, model, data, out_dir):
        _conditional(model, self.name)
        c = self.config
        x, _ = labelled(data, c.split, c.n, c.seed, self.name)
        sets = ood_sets(x, generator=torch.Generator().manual_seed(c.seed), other=self._other(model, data))
        energy = model.energy
        was = energy.training
        energy.eval()
        try:
            scores = {name: {k: v.cpu() for k, v in ood_scores(energy, xs.to(model.device),
                                                                 batch_size=c.batch_size).items()}
                      for name, xs in {"data": x, **sets}.items()}
        finally:
            energy.train(was)
        m: dict[str, Any] = {}
        for score in OOD_SCORES:
            for name in sets:
                m[f"{score}/{name}"] = auroc(scores["data"][score], scores[name][score])
        m["n"] = float(len(x))
        write_metrics(out_dir, self.name, m)
        figures = {}
        path = figure_path(out_dir, "ood_hist.png")
        if path is not None:
            figures["ood_hist"] = ood_figure(scores, m, path)
        return EvalResult(metrics=m, figures=figures)


@dataclass(frozen=True, kw_only=True)
class ClassSamplesConfig:
    per_class: int = param(100, "Conditional samples per class judged.", min=1)
    grid_per_class: int = param(10, "Samples per class (a row each) in class_grid.png.", min=1)
    steps: int | None = param(None, "MCMC steps of each conditional chain (default: the model's "
                                    "sampling K).", min=0)
    init: str = param("model", "Chain starts: model (the run's standalone starts, e.g. the replay "
                               "buffer) or noise (fresh draws from the prior).", choices=("model", "noise"))
    judge_split: str = param("train", "Split the independent judge (an RBF SVM) is trained on.")
    judge_n: int = param(5000, "Examples the judge is trained on (at most).", min=10)
    batch_size: int = param(256, "Chains per sampling batch.", min=1)
    seed: int = param(0, "Seed of the chains.", min=0)


class ClassSamples(Evaluator):
    name = "class-samples"
    summary = ("Class-conditional samples judged by an independently trained classifier (RBF SVM): "
               "accuracy per class, class_grid.png with a row per class.")
    Config = ClassSamplesConfig

    def evaluate(self, model, data, out_dir):
        k = _conditional(model, self.name)
        c = self.config
        xj, yj = labelled(data, c.judge_split, c.judge_n, c.seed, self.name)
        judge = judge_for(xj, yj)
        m: dict[str, Any] = {}
        try:
            xh, yh = labelled(data, "heldout", 1000, c.seed, self.name)
            m["judge_heldout_accuracy"] = judge.accuracy(xh, yh)
        except DataError:
            pass
        y = torch.arange(k).repeat_interleave(c.per_class)
        x0 = None
        if c.init == "noise":
            x0 = model.prior.sample(len(y), generator=torch.Generator().manual_seed(c.seed),
                                    device=model.device)
        x = model.sample(len(y), y=y, steps=c.steps, seed=c.seed, x0=x0, batch_size=c.batch_size)
        pred = judge.predict(x)
        yn = y.numpy()
        m["accuracy"] = float((pred == yn).mean())
        for cls in range(k):
            m[f"accuracy/{cls}"] = float((pred[yn == cls] == cls).mean())
        m.update({"per_class": float(c.per_class),
                  "steps": float(model.steps if c.steps is None else c.steps)})
        write_metrics(out_dir, self.name, {**m, "init": c.init})
        figures = {}
        path = figure_path(out_dir, "class_grid.png")
        if path is not None and x.dim() == 4:
            from ebmkit.images import save_grid

            g = min(c.grid_per_class, c.per_class)
            rows = torch.cat([x[yn == cls][:g] for cls in range(k)])
            figures["class_grid"] = save_grid(rows, path, nrow=g, scale=max(1, 64 // x.shape[-1]))
        return EvalResult(metrics=m, figures=figures)


EVALUATORS = (Accuracy, CalibrationEval, OOD, ClassSamples)
