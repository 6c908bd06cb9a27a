"""The JEM objective (Grathwohl et al., ICLR 2020) and plain cross-entropy.

``jem``: with a classifier energy (``U(x, y) = -f(x)[y]``, ``U(x) = -logsumexp f(x)``), one
iteration minimises

    L = ce_weight · CE(f(x+), y)                                 -log p(y | x) on the data
      + px_weight · (mean U(x+) − mean U(x−))                    MCMC ML on p(x) (both papers)
      + pxy_weight · (mean U(x+, y) − mean_j Σ_i w_i(y_j) U(x−_i, y_j))   optional: p(x | y)
      + alpha · (mean U(x+)² + mean U(x−)²)                      energy-magnitude penalty

from one forward of the energy on ``[x+; x−]`` (logits, ``energy(x, logits=True)``), so DDP
reduces the gradient once. The ``p(x | y)`` term needs samples of ``p(x | y)``; it reuses the
chains of ``p(x)``: since ``p(x | y) = p(x) p(y | x) / p(y)``, the weights ``w_i(y) ∝ p(y | x−_i)``
(normalised over the negatives, no gradient) turn the ``p(x)`` negatives into a self-normalised
importance sample of ``p(x | y)``.

``ce``: the cross-entropy alone (the plain classifier, with no likelihood term); the negatives
are scored but do not enter the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from ebmkit import ConfigError, param
from ebmkit.interfaces import Objective, ObjectiveOutput, classes_of
from torch import Tensor

from .energy import energy_from_logits

__all__ = ["CrossEntropy", "CrossEntropyConfig", "JEM", "JEMConfig", "jem_terms"]


def _logits(energy, x_pos: Tensor, x_neg: Tensor, who: str) -> tuple[Tensor, Tensor]:
    if classes_of(energy) is None:
        raise ConfigError(
            f"objective '{who}' needs a classifier energy (one with n_classes that gives logits: "
            "energy.name = \"jem-cnn\", or ebmkit_jem.ClassifierEnergy(net, n_classes)); this "
            "energy is unconditional")
    f = energy(torch.cat([x_pos, x_neg]), logits=True)  # one forward: one DDP reduction
    if f.dtype not in (torch.float32, torch.float64):
        f = f.float()  # bf16 autocast -> float32; float64 stays
    return f[: x_pos.shape[0]], f[x_pos.shape[0]:]


def _need_labels(labels: Tensor | None, who: str) -> Tensor:
    if labels is None:
        raise ValueError(f"objective '{who}' needs the batch's labels (a labelled dataset: items "
                         "(x, y), e.g. mnist5k or digits8)")
    return labels.long()


def jem_terms(f_pos: Tensor, f_neg: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """The JEM loss terms from the logits of the positives ``[B, K]`` and negatives ``[n, K]``
    (differentiable): ``ce``, ``ml`` (``mean U(x+) − mean U(x−)``), ``pxy`` (the ``p(x | y)``
    ML term with importance-weighted negatives), ``reg`` (``mean U(x+)² + mean U(x−)²``), and
    ``u_pos``, ``u_neg``, ``acc`` (batch accuracy, detached)."""
    u_pos, u_neg = energy_from_logits(f_pos), energy_from_logits(f_neg)
    ce = F.cross_entropy(f_pos, labels)
    # p(x|y) ∝ p(x) p(y|x): weights p(y|x-_i) over the negatives, per class (no gradient)
    w = torch.softmax(torch.log_softmax(f_neg.detach(), dim=1), dim=0)  # [n, K], columns sum to 1
    neg_y = (w * -f_neg).sum(dim=0)  # [K]: E_{p(x|y)} U(x, y), estimated
    pxy = energy_from_logits(f_pos, labels).mean() - neg_y[labels].mean()
    acc = (f_pos.detach().argmax(dim=1) == labels).to(f_pos.dtype).mean()
    return {"ce": ce, "ml": u_pos.mean() - u_neg.mean(), "pxy": pxy,
            "reg": u_pos.pow(2).mean() + u_neg.pow(2).mean(), "u_pos": u_pos, "u_neg": u_neg,
            "acc": acc}


@dataclass(frozen=True, kw_only=True)
class JEMConfig:
    ce_weight: float = param(1.0, "Weight of the cross-entropy -log p(y|x) on the data batch.", min=0.0)
    px_weight: float = param(1.0, "Weight of the MCMC maximum-likelihood term on p(x): "
                                  "mean U(x+) - mean U(x-).", min=0.0)
    pxy_weight: float = param(0.0, "Weight of the p(x|y) term (the p(x) negatives reweighted by "
                                   "p(y|x-)); 0 = JEM's p(y|x) + p(x).", min=0.0)
    alpha: float = param(0.0, "Energy-magnitude penalty alpha * (mean U(x+)^2 + mean U(x-)^2): "
                              "keeps logsumexp f near 0 (a stability guard).", min=0.0)

    def __post_init__(self):
        if self.ce_weight == 0 and self.px_weight == 0 and self.pxy_weight == 0:
            raise ValueError("every term has weight 0: set ce_weight, px_weight or pxy_weight > 0")


class JEM(Objective):
    """JEM: cross-entropy on ``p(y|x)`` plus MCMC maximum likelihood on ``p(x)`` (optionally
    ``p(x|y)``) and an energy-magnitude penalty, for a classifier energy."""

    name = "jem"
    summary = ("JEM: cross-entropy on p(y|x) + MCMC maximum likelihood on p(x) (optionally p(x|y)) "
               "for a classifier energy; alpha = energy-magnitude penalty.")
    Config = JEMConfig
    needs_labels = True

    def __call__(self, energy, x_pos, x_neg, *, labels=None) -> ObjectiveOutput:
        labels = _need_labels(labels, self.name)
        f_pos, f_neg = _logits(energy, x_pos, x_neg, self.name)
        t = jem_terms(f_pos, f_neg, labels.to(f_pos.device))
        c = self.config
        loss = c.ce_weight * t["ce"] + c.px_weight * t["ml"]
        metrics = {"ce": t["ce"].detach(), "acc": t["acc"]}
        if c.pxy_weight > 0:
            loss = loss + c.pxy_weight * t["pxy"]
            metrics["pxy"] = t["pxy"].detach()
        if c.alpha > 0:
            loss = loss + c.alpha * t["reg"]
            metrics["energy_reg"] = t["reg"].detach()
        return ObjectiveOutput(loss=loss, u_pos=t["u_pos"], u_neg=t["u_neg"], metrics=metrics)


@dataclass(frozen=True, kw_only=True)
class CrossEntropyConfig:
    label_smoothing: float = param(0.0, "Label smoothing of the cross-entropy.", min=0.0, max=1.0)


class CrossEntropy(Objective):
    """The plain classifier's loss: cross-entropy on the data batch, no likelihood term (the
    negatives are scored for the diagnostics only; run it with sampler.steps = 0)."""

    name = "ce"
    summary = "Plain classifier: cross-entropy on p(y|x) only, no MCMC term (use sampler.steps = 0)."
    Config = CrossEntropyConfig
    needs_labels = True

    def __call__(self, energy, x_pos, x_neg, *, labels=None) -> ObjectiveOutput:
        labels = _need_labels(labels, self.name)
        f_pos, f_neg = _logits(energy, x_pos, x_neg, self.name)
        labels = labels.to(f_pos.device)
        ce = F.cross_entropy(f_pos, labels, label_smoothing=self.config.label_smoothing)
        acc = (f_pos.detach().argmax(dim=1) == labels).to(f_pos.dtype).mean()
        return ObjectiveOutput(loss=ce, u_pos=energy_from_logits(f_pos),
                               u_neg=energy_from_logits(f_neg),
                               metrics={"ce": ce.detach(), "acc": acc})
