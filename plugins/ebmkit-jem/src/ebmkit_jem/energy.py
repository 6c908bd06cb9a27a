"""Classifier energies: any classifier's logits ``f(x)`` read as a conditional energy.

JEM (Grathwohl et al., ICLR 2020) reads a classifier ``f: x -> logits [K]`` as the joint energy
``U(x, y) = -f(x)[y]``, so ``p(y | x) = softmax f(x)`` (the classifier, unchanged) and the
marginal ``U(x) = -log sum_y exp f(x)[y]`` (``p(x) ∝ sum_y exp f(x)[y]``). Both follow ebmkit's
conditional-energy contract (:attr:`ebmkit.Energy.n_classes`): ``forward(x)`` is ``U(x)`` (what
samplers and the trainer see), ``forward(x, y=y)`` is ``U(x, y)``; ``forward(x, logits=True)``
gives the logits ``[B, K]`` in the same single forward (what the ``jem`` objective needs).

BatchNorm is refused with one line: its batch statistics make ``U(x)[i]`` depend on the other
examples of the batch (SGLD chains and the data batch see different statistics, JEM's issue #13),
and in eval mode in the chain but train mode in the loss the two passes score different
functions. Use GroupNorm (``norm = "group"``), LayerNorm or no normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from ebmkit import ConfigError, param
from ebmkit.interfaces import Energy
from torch import Tensor, nn

__all__ = ["ClassifierEnergy", "ConvClassifier", "JEMConvNet", "energy_from_logits",
           "refuse_batchnorm"]


def refuse_batchnorm(module: nn.Module, what: str = "the classifier") -> None:
    """A one-line :class:`ebmkit.ConfigError` when ``module`` holds a BatchNorm layer."""
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            raise ConfigError(
                f"{what} has a BatchNorm layer ({name or type(sub).__name__}): batch statistics "
                "break SGLD chains and JEM training (U(x) of one example must not depend on the "
                "batch); use GroupNorm or LayerNorm (jem-cnn: energy.norm = \"group\") or none")


def energy_from_logits(f: Tensor, y: Tensor | None = None) -> Tensor:
    """``U(x, y) = -f[y]`` ``[B]`` for labels ``y`` ``[B]``; ``U(x) = -logsumexp f`` without."""
    if y is None:
        return -torch.logsumexp(f, dim=1)
    return -f.gather(1, y.long().reshape(-1, 1)).squeeze(1)


def _check_logits(f: Any, x: Tensor, k: int) -> Tensor:
    if not isinstance(f, Tensor) or f.dim() != 2 or f.shape[0] != x.shape[0] or f.shape[1] != k:
        got = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
        raise ConfigError(f"the classifier must map [B, ...] to logits [B, {k}]; it gave {got} for "
                          f"a batch of {x.shape[0]}")
    return f


class ClassifierEnergy(nn.Module):
    """Any classifier module (``x [B, *shape] -> logits [B, K]``) as a conditional energy::

        energy = ClassifierEnergy(my_net, n_classes=10)
        energy(x)               # U(x) = -logsumexp f(x)        [B]
        energy(x, y=y)          # U(x, y) = -f(x)[y]            [B]
        energy(x, logits=True)  # f(x)                          [B, K]
        energy.log_prob_y(x)    # log p(y | x) = log_softmax f  [B, K]

    Hand it to :class:`ebmkit.EBM` or :func:`ebmkit.fit` (``energy=``) like any energy; a
    BatchNorm layer anywhere in ``classifier`` is refused (see the module's docstring).
    """

    def __init__(self, classifier: nn.Module, n_classes: int, *, shape: tuple[int, ...] | None = None):
        super().__init__()
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
            raise ConfigError(f"n_classes must be a positive int, got {n_classes!r}")
        refuse_batchnorm(classifier)
        self.classifier = classifier
        self.n_classes = int(n_classes)
        if shape is not None:
            self.shape = tuple(int(s) for s in shape)

    def logits(self, x: Tensor) -> Tensor:
        return _check_logits(self.classifier(x), x, self.n_classes)

    def log_prob_y(self, x: Tensor) -> Tensor:
        return torch.log_softmax(self.logits(x), dim=1)

    def forward(self, x: Tensor, y: Tensor | None = None, *, logits: bool = False) -> Tensor:
        f = self.logits(x)
        return f if logits else energy_from_logits(f, y)


# --------------------------------------------------------------------------------------------
# the registered architecture
# --------------------------------------------------------------------------------------------
ACTIVATIONS = {"silu": nn.SiLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "elu": nn.ELU}


class ConvClassifier(nn.Module):
    """A small CNN classifier for ``[C, H, W]`` images (H, W >= 8): four 3x3 convolutions (two
    with stride 2), global average pooling, a linear layer to ``K`` logits."""

    def __init__(self, shape: tuple[int, ...], n_classes: int, *, nf: int = 32,
                 act: str = "silu", norm: str = "none"):
        super().__init__()
        c = shape[0]
        widths = [(c, nf, 1), (nf, 2 * nf, 2), (2 * nf, 4 * nf, 2), (4 * nf, 4 * nf, 1)]
        layers: list[nn.Module] = []
        for cin, cout, stride in widths:
            layers.append(nn.Conv2d(cin, cout, 3, stride=stride, padding=1))
            if norm == "group":
                layers.append(nn.GroupNorm(min(8, cout), cout))
            elif norm == "batch":
                layers.append(nn.BatchNorm2d(cout))
            layers.append(ACTIVATIONS[act]())
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(4 * nf, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


@dataclass(frozen=True, kw_only=True)
class JEMConvNetConfig:
    n_classes: int = param(10, "Number of classes K (labels 0 .. K-1).", min=1)
    nf: int = param(32, "Width: channels of the first convolution (then 2nf, 4nf, 4nf).", min=1)
    act: str = param("silu", "Activation (smooth ones suit SGLD).", choices=tuple(ACTIVATIONS))
    norm: str = param("none", "Normalisation: none, group (GroupNorm) or batch (refused: "
                              "batch statistics break SGLD and JEM).", choices=("none", "group", "batch"))


class JEMConvNet(Energy):
    """A CNN classifier read as a conditional energy (``U(x, y) = -f(x)[y]``, ``U(x) = -logsumexp
    f(x)``): the JEM energy for image data such as mnist5k (28 px) and digits8 (8 px)."""

    name = "jem-cnn"
    summary = ("CNN classifier as a conditional energy: U(x,y) = -f(x)[y], U(x) = -logsumexp f(x) "
               "(JEM); n_classes, nf.")
    Config = JEMConvNetConfig

    def __init__(self, config: JEMConvNetConfig, shape: tuple[int, ...]):
        super().__init__(config, shape)
        self.check_shape("images [C, H, W] with H, W >= 8",
                         len(self.shape) == 3 and min(self.shape[1:]) >= 8)
        if config.norm == "batch":
            raise ConfigError(
                "energy 'jem-cnn': norm = \"batch\" is refused: BatchNorm's batch statistics break "
                "SGLD chains and JEM training (U(x) of one example must not depend on the batch); "
                "use norm = \"group\" or \"none\"")
        self.n_classes = int(config.n_classes)
        self.net = ConvClassifier(self.shape, self.n_classes, nf=config.nf, act=config.act,
                                  norm=config.norm)

    def logits(self, x: Tensor) -> Tensor:
        return self.net(x)

    def log_prob_y(self, x: Tensor) -> Tensor:
        return torch.log_softmax(self.logits(x), dim=1)

    def forward(self, x: Tensor, y: Tensor | None = None, *, logits: bool = False) -> Tensor:
        f = self.net(x)
        return f if logits else energy_from_logits(f, y)
