"""Built-in energies: the short-run paper's ConvNets (App. 7.4), the anatomy paper's non-local
ConvNet (§4.3) and an MLP for 1-D / 2-D toys.

Convention: ``forward`` returns ``U(x)`` of shape ``[B]`` (the short-run code's ``f = -U``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..hookspecs import hookimpl
from ..interfaces import Energy
from ..params import param

ACTIVATIONS = ("leaky_relu", "gelu", "silu", "relu", "softplus", "elu")


_SN_HELP = ("Spectral normalisation (Miyato et al. 2018, as in IGEBM, Du & Mordatch 2019) of "
            "every conv / linear weight: W / sigma(W), sigma from one power iteration per "
            "training forward (frozen in the chains, which run in eval mode). Bounds each "
            "layer's gain, so the energy cannot grow sharp walls between updates.")


def spectral_normalise(module: nn.Module) -> nn.Module:
    """Spectral normalisation (``torch.nn.utils.parametrizations.spectral_norm``) of every
    ``nn.Conv2d`` / ``nn.Linear`` inside ``module``, in place; returns ``module``. A conv's
    weight is normalised as the ``[out, in·k·k]`` matrix (Miyato et al. 2018), which bounds but
    is not the convolution's exact operator norm."""
    from torch.nn.utils.parametrizations import spectral_norm

    for m in list(module.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            spectral_norm(m)
    return module


def make_activation(name: str, slope: float = 0.2) -> nn.Module:
    return {
        "leaky_relu": lambda: nn.LeakyReLU(slope),
        "gelu": nn.GELU,
        "silu": nn.SiLU,
        "relu": nn.ReLU,
        "softplus": nn.Softplus,
        "elu": nn.ELU,
    }[name]()


@dataclass(frozen=True, kw_only=True)
class ConvNetConfig:
    nf: int = param(64, "Width: feature maps of the first layer (paper: 32, 64 or 128).", min=1)
    activation: str = param(
        "leaky_relu",
        "Nonlinearity. leaky_relu (slope 0.2) as in the paper; gelu/silu/softplus are smooth, "
        "which the flow (log-likelihood) view needs.",
        choices=ACTIVATIONS,
    )
    leak: float = param(0.2, "Negative slope of leaky_relu.", min=0.0)
    scale: float = param(
        1.0,
        "Multiply the network output by this. The anatomy paper's convergent-ML recipe uses "
        "U = F / (eps^2/2), i.e. scale = 2/eps^2.",
        min=0.0, min_exclusive=True,
    )
    spectral_norm: bool = param(False, _SN_HELP)


class _ShortRunConvNet(Energy):
    """3x3 conv(nf) stride 1, then 4x4 stride-2 convs doubling width up to 8·nf, then 4x4 conv(1)."""

    Config = ConvNetConfig
    resolution: int = 32
    widths: tuple[int, ...] = (1, 2, 4, 8)

    def __init__(self, config: ConvNetConfig, shape: tuple[int, ...]):
        super().__init__(config, shape)
        r = self.resolution
        self.check_shape(f"images [C, {r}, {r}]", len(self.shape) == 3 and self.shape[1:] == (r, r))
        c, nf = self.shape[0], config.nf
        layers: list[nn.Module] = [nn.Conv2d(c, nf, 3, 1, 1), make_activation(config.activation, config.leak)]
        prev = nf
        for mult in self.widths[1:]:
            layers += [nn.Conv2d(prev, nf * mult, 4, 2, 1), make_activation(config.activation, config.leak)]
            prev = nf * mult
        layers.append(nn.Conv2d(prev, 1, 4, 1, 0))
        self.f = nn.Sequential(*layers)
        if config.spectral_norm:
            spectral_normalise(self.f)

    def forward(self, x: Tensor) -> Tensor:
        u = self.f(x).reshape(x.shape[0])
        return u * self.config.scale if self.config.scale != 1.0 else u


class ConvNet32(_ShortRunConvNet):
    name = "convnet32"
    summary = "Short-run paper ConvNet for 32x32 images (App. 7.4, Table 4), width nf."
    resolution = 32
    widths = (1, 2, 4, 8)


class ConvNet64(_ShortRunConvNet):
    name = "convnet64"
    summary = "Short-run paper ConvNet for 64x64 images (App. 7.4, Table 5), width nf."
    resolution = 64
    widths = (1, 2, 4, 8, 8)


class ConvNet128(_ShortRunConvNet):
    name = "convnet128"
    summary = "Short-run paper ConvNet for 128x128 images (App. 7.4, Table 6), width nf."
    resolution = 128
    widths = (1, 2, 4, 8, 8, 8)


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al. 2018) with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        inner = max(channels // 2, 1)
        self.theta = nn.Conv2d(channels, inner, 1)
        self.phi = nn.Conv2d(channels, inner, 1)
        self.g = nn.Conv2d(channels, inner, 1)
        self.out = nn.Conv2d(inner, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        q = self.theta(x).flatten(2).transpose(1, 2)  # [B, HW, C']
        k = self.phi(x).flatten(2)  # [B, C', HW]
        v = self.g(x).flatten(2).transpose(1, 2)  # [B, HW, C']
        attn = torch.softmax(q @ k, dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(b, -1, h, w)
        return x + self.out(y)


@dataclass(frozen=True, kw_only=True)
class NonLocalConfig(ConvNetConfig):
    nf: int = param(32, "Width: feature maps of the first layer.", min=1)


class NonLocalConvNet(Energy):
    """The anatomy paper's ConvNet with non-local layers (§4.3) for 32x32 or 64x64 images:
    conv3x3(nf), then stride-2 stages, a non-local block after the 16x16 and 8x8 stages."""

    name = "nonlocal"
    summary = "Anatomy paper ConvNet with non-local (self-attention) layers, 32 or 64 px."
    Config = NonLocalConfig

    def __init__(self, config: NonLocalConfig, shape: tuple[int, ...]):
        super().__init__(config, shape)
        ok = len(self.shape) == 3 and self.shape[1] == self.shape[2] and self.shape[1] in (32, 64)
        self.check_shape("images [C, 32, 32] or [C, 64, 64]", ok)
        c, nf, act = self.shape[0], config.nf, config.activation
        res = self.shape[1]
        layers: list[nn.Module] = [nn.Conv2d(c, nf, 3, 1, 1), make_activation(act, config.leak)]
        prev, mult = nf, 1
        while res > 4:
            mult = min(mult * 2, 8)
            layers += [nn.Conv2d(prev, nf * mult, 4, 2, 1), make_activation(act, config.leak)]
            prev, res = nf * mult, res // 2
            if res in (16, 8):
                layers.append(NonLocalBlock(prev))
        layers.append(nn.Conv2d(prev, 1, 4, 1, 0))
        self.f = nn.Sequential(*layers)
        if config.spectral_norm:
            spectral_normalise(self.f)

    def forward(self, x: Tensor) -> Tensor:
        u = self.f(x).reshape(x.shape[0])
        return u * self.config.scale if self.config.scale != 1.0 else u


@dataclass(frozen=True, kw_only=True)
class MLPConfig:
    hidden: int = param(128, "Hidden units per layer.", min=1)
    layers: int = param(3, "Number of hidden layers.", min=1)
    activation: str = param("silu", "Nonlinearity (smooth by default).", choices=ACTIVATIONS)
    leak: float = param(0.2, "Negative slope of leaky_relu.", min=0.0)
    scale: float = param(1.0, "Multiply the network output by this.", min=0.0, min_exclusive=True)
    spectral_norm: bool = param(False, _SN_HELP)


class MLPEnergy(Energy):
    name = "mlp"
    summary = "Fully connected energy for low-dimensional data (1-D/2-D toys), any [D] input."
    Config = MLPConfig

    def __init__(self, config: MLPConfig, shape: tuple[int, ...]):
        super().__init__(config, shape)
        d = 1
        for s in self.shape:
            d *= s
        layers: list[nn.Module] = []
        prev = d
        for _ in range(config.layers):
            layers += [nn.Linear(prev, config.hidden), make_activation(config.activation, config.leak)]
            prev = config.hidden
        layers.append(nn.Linear(prev, 1))
        self.f = nn.Sequential(*layers)
        if config.spectral_norm:
            spectral_normalise(self.f)

    def forward(self, x: Tensor) -> Tensor:
        u = self.f(x.flatten(1)).reshape(x.shape[0])
        return u * self.config.scale if self.config.scale != 1.0 else u


@hookimpl
def ebmkit_register(register):
    for cls in (ConvNet32, ConvNet64, ConvNet128, NonLocalConvNet, MLPEnergy):
        register(cls)
