"""The measurements, as plain functions of tensors (so tests check them on known inputs):
classifier logits of any conditional energy, accuracy, expected calibration error with its
reliability bins, AUROC, the three OOD scores and the OOD image sets."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from ebmkit import ConfigError
from ebmkit.interfaces import classes_of
from torch import Tensor, nn

__all__ = ["Calibration", "OOD_SCORES", "auroc", "calibration", "class_logits", "gaussian_auroc",
           "ood_scores", "ood_sets", "resize_images"]


def class_logits(energy: nn.Module, x: Tensor, *, batch_size: int = 256) -> Tensor:
    """``log p(y | x)`` up to a per-example constant, ``[N, K]``: the energy's ``logits(x)`` when
    it has them (a classifier energy), else ``-U(x, y)`` for every class (any conditional
    energy). No gradient; the energy in its current mode (evaluators put it in eval mode)."""
    k = classes_of(energy)
    if k is None:
        raise ConfigError("this needs a conditional energy (n_classes; e.g. the jem plugin's "
                          "classifier energies); the model's energy is unconditional")
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            if hasattr(energy, "logits"):
                out.append(energy.logits(xb))
            else:
                out.append(torch.stack([-energy(xb, y=torch.full((len(xb),), c, dtype=torch.int64,
                                                                  device=xb.device))
                                        for c in range(k)], dim=1))
    return torch.cat(out).double()


# --------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    """Expected calibration error and its reliability diagram's bins (equal-width on ``[0, 1]``
    of the confidence ``max_y p(y|x)``): ``counts``, ``accuracy`` and ``confidence`` per bin
    (NaN where a bin is empty)."""

    ece: float
    mce: float
    edges: np.ndarray
    counts: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray


def calibration(confidence: Tensor | np.ndarray, correct: Tensor | np.ndarray, *,
                n_bins: int = 15) -> Calibration:
    """ECE ``Σ_b (n_b / N) |acc_b − conf_b|`` over ``n_bins`` equal-width bins (Guo et al. 2017;
    JEM reports it with 20), and MCE ``max_b |acc_b − conf_b|``."""
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    ok = np.asarray(correct, dtype=np.float64).reshape(-1)
    if conf.shape != ok.shape or conf.size == 0:
        raise ValueError("confidence and correct must be non-empty and of the same length")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins).astype(np.float64)
    acc_sum = np.bincount(which, weights=ok, minlength=n_bins)
    conf_sum = np.bincount(which, weights=conf, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = acc_sum / counts
        cb = conf_sum / counts
    gap = np.abs(acc - cb)
    filled = counts > 0
    ece = float((counts[filled] / conf.size * gap[filled]).sum())
    return Calibration(ece=ece, mce=float(gap[filled].max()), edges=edges, counts=counts,
                       accuracy=acc, confidence=cb)


# --------------------------------------------------------------------------------------------
# AUROC
# --------------------------------------------------------------------------------------------
def auroc(positive: Tensor | np.ndarray, negative: Tensor | np.ndarray) -> float:
    """``P(s⁺ > s⁻) + ½ P(s⁺ = s⁻)`` (the Mann-Whitney statistic, ties at half weight): 1 when
    every positive (in-distribution) score is above every negative (OOD) one, 0.5 for chance."""
    a = np.asarray(positive, dtype=np.float64).reshape(-1)
    b = np.asarray(negative, dtype=np.float64).reshape(-1)
    if a.size == 0 or b.size == 0:
        raise ValueError("auroc needs at least one score of each kind")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        # a non-finite score ranks below everything (a diverged input is "out")
        a = np.where(np.isfinite(a), a, -np.inf)
        b = np.where(np.isfinite(b), b, -np.inf)
    s = np.concatenate([a, b])
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based mean rank of each tie group
    ranks = avg_rank[inv]
    return float((ranks[: a.size].sum() - a.size * (a.size + 1) / 2.0) / (a.size * b.size))


def gaussian_auroc(mu_pos: float, mu_neg: float, sigma_pos: float, sigma_neg: float) -> float:
    """The closed form for Gaussian scores: ``Φ((μ⁺ − μ⁻) / sqrt(σ⁺² + σ⁻²))``."""
    z = (mu_pos - mu_neg) / math.sqrt(sigma_pos**2 + sigma_neg**2)
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


# --------------------------------------------------------------------------------------------
# OOD scores and sets
# --------------------------------------------------------------------------------------------
#: Higher = more in-distribution for all three.
OOD_SCORES = ("logpx", "max_softmax", "grad_norm")


def ood_scores(energy: nn.Module, x: Tensor, *, batch_size: int = 256) -> dict[str, Tensor]:
    """The three OOD scores of JEM (§5.3) per example, higher meaning more in-distribution:
    ``logpx`` = ``-U(x)`` (log p(x) up to log Z), ``max_softmax`` = ``max_y p(y | x)`` and
    ``grad_norm`` = ``-‖∇ₓ U(x)‖₂`` (JEM's approximate mass: data sits where the density is flat
    at a mode). float64 ``[N]`` each."""
    logpx, msp, gn = [], [], []
    for i in range(0, x.shape[0], batch_size):
        xb = x[i:i + batch_size].detach().requires_grad_(True)
        with torch.enable_grad():
            u = energy(xb)
            (g,) = torch.autograd.grad(u.sum(), xb)
        logpx.append(-u.detach())
        gn.append(-g.flatten(1).norm(dim=1))
        msp.append(torch.softmax(class_logits(energy, xb.detach(), batch_size=batch_size), 1)
                   .max(dim=1).values)
    return {"logpx": torch.cat(logpx).double(), "max_softmax": torch.cat(msp).double(),
            "grad_norm": torch.cat(gn).double()}


def resize_images(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Images ``[N, C, h, w]`` resized to ``shape`` ``(C', H, W)`` (bilinear, antialiased when
    shrinking; grey replicated or averaged for channels), in ``[-1, 1]``."""
    c, h, w = shape
    x = x.float()
    if x.shape[1] != c:
        x = x.mean(dim=1, keepdim=True).expand(-1, c, -1, -1)
    if tuple(x.shape[-2:]) != (h, w):
        shrink = h < x.shape[-2] or w < x.shape[-1]
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
    return x.clamp(-1, 1).contiguous()


def ood_sets(x_in: Tensor, *, generator: torch.Generator,
             other: Tensor | None = None) -> dict[str, Tensor]:
    """Out-of-distribution sets as large as ``x_in`` (images in ``[-1, 1]``): ``noise`` (uniform
    on ``[-1, 1]``), ``constant`` (each image one uniform grey level), ``inverted`` (``-x_in``:
    white digits become black on white) and, when given, ``other`` (another data set, already
    resized to ``x_in``'s shape; its first ``len(x_in)``)."""
    n, shape = x_in.shape[0], tuple(x_in.shape[1:])
    noise = torch.rand((n, *shape), generator=generator) * 2 - 1
    levels = torch.rand((n,) + (1,) * len(shape), generator=generator) * 2 - 1
    sets = {"noise": noise.to(x_in.dtype), "constant": levels.expand(n, *shape).to(x_in.dtype).clone(),
            "inverted": -x_in}
    if other is not None:
        sets["other"] = other[:n].to(x_in.dtype)
    return sets
