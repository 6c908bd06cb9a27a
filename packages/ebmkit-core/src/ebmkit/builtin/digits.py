"""Real 8x8 digits and a long-run evaluator with numbers (anatomy §3-4 on real images).

* ``digits8``: the 1,797 handwritten 8x8 digits that ship inside scikit-learn
  (``sklearn.datasets.load_digits``, the UCI test set, CC BY 4.0), scaled from ``0..16`` to
  ``[-1, 1]``, shape ``[1, 8, 8]``, split into train / held-out by a fixed seed. Offline: read
  from the installed scikit-learn (optional extra ``ebmkit-core[digits]``).
* ``digits-longrun``: from training digits and from uniform noise, run MALA (acceptance
  reported) and ULA for 10^4-10^5 steps on any model of ``[1, 8, 8]`` images and report along
  the way the mean energy relative to the held-out digits' energy distribution, the fraction of
  saturated pixels, the MMD to held-out digits (with held-out vs train as the noise floor) and a
  scikit-learn digit classifier's verdict (mean max-probability, class-histogram entropy,
  classes covered), with curves against the step count and snapshot grids.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from ..datastream import SPLITS, split_part
from ..errors import ConfigError, require
from ..hookspecs import hookimpl
from ..images import save_grid
from ..interfaces import DataSource, EvalResult, Evaluator
from ..params import param

INSTALL = 'pip install "ebmkit-core[digits]"'


def _sklearn(what: str, submodule: str):
    return require(f"sklearn.{submodule}", what=what, install=INSTALL)


# ---------------------------------------------------------------------------------------------
# the data set
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Digits8Config:
    heldout: int = param(500, "Digits held out from training (the evaluation reference).", min=1, max=1796)
    split_seed: int = param(0, "Seed of the fixed random train / held-out split.")
    split: str = param("train", "Which part open(split='train') returns (what a run trains on): "
                                "train, heldout or all.", choices=SPLITS)


def load_digits8() -> tuple[Tensor, Tensor]:
    """All 1,797 digits as float ``[1797, 1, 8, 8]`` in ``[-1, 1]`` and int64 labels."""
    x, y = _load_digits8()
    return x.clone(), y.clone()


@functools.lru_cache(maxsize=1)
def _load_digits8() -> tuple[Tensor, Tensor]:
    datasets = _sklearn("dataset 'digits8'", "datasets")
    d = datasets.load_digits()
    x = torch.from_numpy(np.asarray(d.images, dtype=np.float32)).reshape(-1, 1, 8, 8)
    return x / 8.0 - 1.0, torch.from_numpy(np.asarray(d.target, dtype=np.int64))


class Digits8(DataSource):
    name = "digits8"
    summary = ("1,797 real 8x8 handwritten digits shipped in scikit-learn (UCI, CC BY 4.0), "
               "[1, 8, 8] in [-1, 1], seeded train/held-out split (no download).")
    Config = Digits8Config

    @property
    def shape(self):
        return (1, 8, 8)

    @property
    def n_classes(self) -> int:
        return 10

    def open(self, *, split: str = "train"):
        x, y = split_part(load_digits8(), split, default=self.config.split, heldout=self.config.heldout,
                          seed=self.config.split_seed, name="digits8")
        return TensorDataset(x, y)


# ---------------------------------------------------------------------------------------------
# sample metrics (each a plain function of tensors, so they can be checked on known inputs)
# ---------------------------------------------------------------------------------------------
def saturation(x: Tensor, threshold: float) -> float:
    """Fraction of pixels with ``|x| > threshold`` (the data's own range is ``[-1, 1]``)."""
    return float((x.abs() > threshold).float().mean())


def mmd2(x: Tensor, y: Tensor, bandwidths: tuple[float, ...]) -> float:
    """Biased (V-statistic) MMD² between sample sets ``x`` [n, ...] and ``y`` [m, ...] with a sum
    of Gaussian kernels ``exp(-|a-b|²/(2h²))``. Always >= 0; between two finite samples of one
    distribution it is a positive bias of order 1/n (hence the held-out-vs-train noise floor)."""
    a = x.reshape(x.shape[0], -1).double()
    b = y.reshape(y.shape[0], -1).double()
    bad = ~torch.isfinite(a).all(dim=1)
    a = torch.where(bad[:, None], torch.full_like(a, 1e6), a)  # a diverged chain is far from all
    def k(p, q):
        d2 = torch.cdist(p, q).square()
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)
    return float(k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean())


def class_histogram(pred: np.ndarray, n_classes: int = 10) -> np.ndarray:
    return np.bincount(np.asarray(pred, dtype=np.int64), minlength=n_classes) / max(len(pred), 1)


def histogram_entropy(hist: np.ndarray) -> float:
    """Entropy (nats) of a class histogram; ln 10 = 2.303 for ten equally used classes."""
    p = hist[hist > 0]
    return float(-(p * np.log(p)).sum())


def classes_covered(hist: np.ndarray, min_share: float) -> int:
    """Classes predicted for at least ``min_share`` of the samples."""
    return int((hist >= min_share).sum())


def energy_stats(u: Tensor, ref: Tensor) -> dict[str, float]:
    """Mean energy of ``u`` against the reference energies ``ref`` (held-out digits): the
    z-score of the mean, and the fractions below the reference's 1st percentile and inside its
    1st-99th percentile range."""
    u, ref = u.double(), ref.double()
    q01, q99 = torch.quantile(ref, 0.01), torch.quantile(ref, 0.99)
    finite = torch.isfinite(u)
    uf = u[finite]
    mean = float(uf.mean()) if uf.numel() else math.nan
    return {
        "energy": mean,
        "energy_z": (mean - float(ref.mean())) / max(float(ref.std()), 1e-12),
        "energy_below_data": float(((u < q01) & finite).double().mean()),
        "energy_in_range": float(((u >= q01) & (u <= q99)).double().mean()),
    }


class DigitClassifier:
    """An RBF support-vector classifier (scikit-learn ``SVC``) trained on the training split,
    with Platt-scaled pairwise-coupled probabilities (``probability=True``). Its confidence is
    ~0.94 on held-out digits and ~0.2 on uniform noise or random +-1 images; one-vs-rest
    calibrated alternatives (``CalibratedClassifierCV``) stay ~0.85 confident on noise, so they
    cannot tell "looks like a digit". (``probability`` is deprecated from scikit-learn 1.9 and
    removed in 1.11, hence the extra's ``<1.11``.)"""

    def __init__(self, x: Tensor, y: Tensor, *, seed: int = 0):
        import warnings

        svm = _sklearn("evaluator 'digits-longrun'", "svm")
        self.clf = svm.SVC(kernel="rbf", gamma="scale", C=10.0, probability=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*probability.*", category=FutureWarning)
            self.clf.fit(x.reshape(x.shape[0], -1).double().numpy(), y.numpy())

    def verdict(self, x: Tensor, min_share: float = 0.01) -> dict[str, float]:
        a = x.detach().reshape(x.shape[0], -1).double().cpu()
        a = torch.nan_to_num(a, nan=0.0, posinf=1e6, neginf=-1e6).clamp(-1e6, 1e6).numpy()
        p = self.clf.predict_proba(a)
        pred = self.clf.classes_[p.argmax(1)]
        hist = class_histogram(pred)
        return {"confidence": float(p.max(1).mean()), "class_entropy": histogram_entropy(hist),
                "classes": float(classes_covered(hist, min_share))}


# ---------------------------------------------------------------------------------------------
# the evaluator
# ---------------------------------------------------------------------------------------------
CHAINS = ("mala-noise", "mala-data", "ula-noise", "ula-data")


@dataclass(frozen=True, kw_only=True)
class DigitsLongRunConfig:
    n: int = param(500, "Chains per (sampler, start) pair; also the size of each MMD set.", min=10)
    steps: int = param(10_000, "Long-run MCMC steps (the anatomy check wants 10^4-10^5).", min=1)
    checkpoints: int = param(9, "Log-spaced step counts (plus 0) at which the metrics are taken.", min=2)
    chains: tuple[str, ...] = param(CHAINS, "Which chains: mala-noise, mala-data, ula-noise, ula-data "
                                            "(sampler, then start: uniform noise or training digits).")
    step_size: float | None = param(None, "Step size eps of MALA and ULA (default: the model's "
                                          "sampler's, sqrt(2 * grad_coef), else 0.015).",
                                    min=0.0, min_exclusive=True)
    saturation: float = param(0.95, "|x| above this counts as a saturated pixel.", min=0.0)
    bandwidths: tuple[float, ...] = param((2.0, 4.0, 8.0), "Gaussian kernel widths of the MMD "
                                          "(pixel distances between 8x8 digits are 5-15).")
    min_share: float = param(0.01, "A class counts as covered when predicted for this share of samples.",
                             min=0.0, max=1.0)
    short_run: bool = param(True, "Also score the model's own short-run samples (model.sample).")
    grid: int = param(10, "Samples per snapshot row.", min=1)
    seed: int = param(0, "Seed of the chains, the MMD subsets and the classifier.")

    def __post_init__(self):
        bad = [c for c in self.chains if c not in CHAINS]
        if bad or not self.chains:
            raise ValueError(f"unknown chain '{bad[0] if bad else ''}'; choose from {', '.join(CHAINS)}")
        if not self.bandwidths or any(h <= 0 for h in self.bandwidths):
            raise ValueError("bandwidths must be positive numbers")


class DigitsLongRun(Evaluator):
    """Anatomy §3-4 on real digits: do long-run samples stay realistic? Needs ``[1, 8, 8]``
    images and the ``digits8`` data (the run's own, or ``data="digits8"``)."""

    name = "digits-longrun"
    summary = ("Long-run MALA/ULA from noise and from held-out digits on [1,8,8] models: energy vs "
               "data, saturation, MMD vs noise floor, classifier verdict, curves and snapshots.")
    Config = DigitsLongRunConfig

    def evaluate(self, model, data, out_dir):
        c = self.config
        if tuple(model.shape) != (1, 8, 8):
            raise ConfigError(f"evaluator 'digits-longrun' needs a model of [1, 8, 8] images, "
                              f"not {list(model.shape)}")
        # The run's split (seed, size); the reference is always its held-out part and the
        # classifier and the noise floor use its training part, whatever the run trained on.
        cfg = dataclasses.replace(data.config, split="train") if isinstance(data, Digits8) else Digits8Config()
        data = Digits8(cfg)
        train_x, train_y = data.open(split="train").tensors
        held_x, _ = data.open(split="heldout").tensors
        if out_dir is not None:  # fail before the long chains, not after
            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
        dev = model.device
        n = min(c.n, len(held_x))
        g_cpu = torch.Generator().manual_seed(c.seed)
        ref = held_x[torch.randperm(len(held_x), generator=g_cpu)[:n]]
        floor_set = train_x[torch.randperm(len(train_x), generator=g_cpu)[:n]]
        clf = DigitClassifier(train_x, train_y, seed=c.seed)
        model.energy.eval()

        def energy(x: Tensor) -> Tensor:
            with torch.no_grad():
                return torch.cat([model.energy(b.to(dev)).cpu() for b in x.split(1000)])

        u_ref = energy(held_x)

        def score(x: Tensor) -> dict[str, float]:
            x = x.detach().cpu()
            m = energy_stats(energy(x), u_ref)
            m["saturation"] = saturation(x, c.saturation)
            m["mmd"] = mmd2(x, ref, c.bandwidths)
            m.update(clf.verdict(x, c.min_share))
            return m

        # the reference rows: held-out digits themselves and the noise floor
        metrics: dict[str, float] = {"n": float(n), "steps": float(c.steps)}
        data_m = score(ref)
        data_m["mmd"] = mmd2(floor_set, ref, c.bandwidths)  # train vs held-out: the noise floor
        data_m["saturation"] = saturation(ref, c.saturation)
        metrics.update({f"data_{k}": v for k, v in data_m.items()})
        metrics["mmd_floor"] = data_m["mmd"]

        a = model.sampler.grad_coef  # eps^2/2 of the model's sampler (its gradient coefficient)
        eps = c.step_size or (math.sqrt(2 * a) if a else 0.015)
        metrics["step_size"] = float(eps)
        marks = sorted({0} | {int(round(v)) for v in np.logspace(0, math.log10(c.steps), c.checkpoints)})
        curves: dict[str, dict[str, list[float]]] = {}
        snaps: dict[str, list[Tensor]] = {}
        short_x = None
        if c.short_run:
            g = torch.Generator(device=dev).manual_seed(c.seed + 1)
            short_x = model.sample(n, generator=g, batch_size=n).detach().cpu()
            metrics.update({f"short_{k}": v for k, v in score(short_x).items()})
        for j, chain in enumerate(c.chains):
            kind, start = chain.split("-")
            sampler = model.component(
                "sampler", "mala" if kind == "mala" else "langevin",
                {"step_size": float(eps), **({"tau": 1.0} if kind == "ula" else {})})
            g = torch.Generator(device=dev).manual_seed(c.seed + 10 + j)
            if start == "noise":
                x = torch.rand(n, 1, 8, 8, generator=g, device=dev) * 2 - 1
            else:
                x = train_x[torch.randperm(len(train_x), generator=g_cpu)[:n]].to(dev)
            done, acc, rows = 0, [], {}
            snaps[chain] = []
            for mark in marks:
                if mark > done:
                    res = sampler.run(model.energy, x, mark - done, generator=g)
                    x, done = res.x, mark
                    if res.accept_rate is not None:
                        acc.append((float(res.accept_rate), res.steps))
                m = score(x)
                if kind == "mala":  # cumulative acceptance over the steps so far
                    m["accept"] = sum(a * s for a, s in acc) / sum(s for _, s in acc) if acc else math.nan
                for k, v in m.items():
                    rows.setdefault(k, []).append(v)
                snaps[chain].append(x[:100].detach().cpu())
            curves[chain] = {"steps": [float(s) for s in marks], **rows}
            for k, v in rows.items():
                metrics[f"{chain}_{k}"] = v[-1]
        if out_dir is None:  # in memory: numbers only, no file
            return EvalResult(metrics=metrics)
        (out_dir / "digits_longrun_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (out_dir / "digits_longrun_curves.json").write_text(json.dumps(curves, indent=2) + "\n")
        arrays = {ch: torch.stack(rows).numpy() for ch, rows in snaps.items()}
        arrays.update({f"{ch}_steps": np.asarray(marks) for ch in snaps})
        if short_x is not None:
            arrays["short"] = short_x[:100].numpy()
        np.savez_compressed(out_dir / "digits_longrun_snapshots.npz", **arrays)
        figures = {"curves": plot_curves(curves, metrics, out_dir / "digits_longrun_curves.png",
                                         title=str((model.meta or {}).get("title", "")))}
        for chain, rows in snaps.items():
            figures[f"snapshots_{chain}"] = save_grid(torch.cat([r[: c.grid] for r in rows]),
                                                      out_dir / f"snapshots_{chain}.png",
                                                      nrow=c.grid, scale=4)
        if short_x is not None:
            figures["short_run"] = save_grid(short_x[:100], out_dir / "short_run.png", nrow=10, scale=4)
        return EvalResult(metrics=metrics, figures=figures)


CURVE_PANELS = (
    ("energy_z", "mean energy, z vs held-out digits", "symlog"),
    ("saturation", "saturated pixel fraction", "linear"),
    ("mmd", "MMD² to held-out (dotted: noise floor)", "log"),
    ("confidence", "classifier mean max-probability", "linear"),
    ("class_entropy", "class-histogram entropy (nats)", "linear"),
    ("accept", "MALA acceptance", "linear"),
)


def plot_curves(curves: dict, metrics: dict, path: Path, *, title: str = "") -> Path:
    """Each metric against the step count (x: steps + 1, log scale), one line per chain."""
    from ..plotting import new_figure, save_figure

    fig = new_figure(figsize=(13, 7))
    axes = fig.subplots(2, 3).ravel()
    for ax, (key, label, scale) in zip(axes, CURVE_PANELS, strict=True):
        for i, (chain, rows) in enumerate(curves.items()):
            if key in rows:
                s = np.asarray(rows["steps"]) + 1
                ax.plot(s, rows[key], marker="o", ms=3, color=f"C{i}", label=chain,
                        ls="-" if chain.startswith("mala") else "--")
        ref = {"energy_z": 0.0, "mmd": metrics.get("mmd_floor"), "saturation": metrics.get("data_saturation"),
               "confidence": metrics.get("data_confidence"), "class_entropy": metrics.get("data_class_entropy")}
        if ref.get(key) is not None:
            ax.axhline(ref[key], color="k", ls=":", lw=1.5, label="held-out digits")
        ax.set_xscale("log")
        if scale == "log":
            ax.set_yscale("log")
        elif scale == "symlog":
            ax.set_yscale("symlog", linthresh=1.0)
        ax.set_xlabel("MCMC steps + 1")
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


@hookimpl
def ebmkit_register(register):
    register(Digits8)
    register(DigitsLongRun)
