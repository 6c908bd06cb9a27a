"""Noise-level-conditional energies ``U(x, t)`` (Gao et al. 2021, §3 and App. B).

One network serves every level ``t`` (``0 … levels−1``), the level embedded. ebmkit's sign
convention: ``U = −f`` (lower is more probable), and, as in the paper's code
(``f = g / s_t²``), the network's output ``h`` is divided by the level's Langevin step variance
``s_t²`` (:mod:`ebmkit_drl.schedule`): ``U(x, t) = h(x, t) / s_t²``, so a step
``x ← x − (s_t²/2)·∇U + s_t·z`` moves by ``−∇h/2`` at every level.

``forward(x)`` alone is level 0, the data level: the ordinary machinery (``ebmkit.check_energy``,
``EBM``, ``ebmkit.load``, the evaluators) sees an energy of the data. ``forward(x, t)`` takes the
levels per example (``[B]`` int64, or one int). The schedule lives in the config (``levels``,
``beta_start``, ``beta_end``, ``step_b2``), so ``run.toml`` and every checkpoint record it.

* ``drl-convnet32``: the short-run paper's 32 px ConvNet (the ``convnet32`` layout) with a
  per-level scale and shift of every layer's features (FiLM, a learned embedding of ``t``) and,
  as in the paper's code, spectral normalisation of every convolution. The
  paper's network is a 128-channel ResNet with sinusoidal time embeddings and spectral
  normalisation (35 M parameters for CIFAR-10); scaled down for a CPU.
* ``drl-mlp``: the same conditioning on an MLP, for points and tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from ebmkit import ConfigError, Energy, param
from torch import Tensor, nn

from .schedule import MAX_LEVELS, DiffusionBuffers, DiffusionSchedule

ACTIVATIONS = ("leaky_relu", "silu", "gelu", "softplus")


def _activation(name: str, leak: float) -> nn.Module:
    return {"leaky_relu": lambda: nn.LeakyReLU(leak), "silu": nn.SiLU, "gelu": nn.GELU,
            "softplus": nn.Softplus}[name]()


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """The diffusion schedule every noise-conditional energy carries in its config."""

    levels: int = param(6, "Noise levels T: energies U(x, t), t = 0 .. T-1 (paper: 6 for "
                           "CIFAR-10).", min=1, max=MAX_LEVELS)
    beta_start: float = param(1e-4, "First beta of DDPM's 1,000-step linear schedule the levels "
                                    "are cut from (paper: 1e-4).", min=0.0, max=1.0,
                              min_exclusive=True)
    beta_end: float = param(0.02, "Last beta of that schedule (paper: 0.02).", min=0.0, max=1.0,
                            min_exclusive=True)
    step_b2: float = param(2e-4, "b^2 of the Langevin step sizes s_t^2 = b^2 (sigma_bar_t / "
                                 "sigma_bar_0) sigma_{t+1}^2; the network's output is divided "
                                 "by s_t^2 (paper's code: 2e-4).", min=0.0, min_exclusive=True)

    def __post_init__(self):
        if not self.beta_start <= self.beta_end < 1:
            raise ValueError(f"need beta_start <= beta_end < 1; got beta_start = "
                             f"{self.beta_start}, beta_end = {self.beta_end}")


class NoiseConditionalEnergy(Energy):
    """Base of the noise-conditional energies: ``U(x, t) = net(x, t) / s_t²``.

    Subclasses implement :meth:`net` (``[B, *shape]``, levels ``[B]`` -> ``[B]``). The schedule's
    per-level tables are the buffers of ``self.diffusion`` (:class:`DiffusionBuffers`), which
    the ``drl`` objective and the ``drl-progressive`` sampler read (through
    :func:`noise_conditional`).
    """

    def __init__(self, config: Any, shape: tuple[int, ...]):
        super().__init__(config, shape)
        self.diffusion = DiffusionBuffers(DiffusionSchedule.of(config))

    @property
    def levels(self) -> int:
        return self.diffusion.levels

    def net(self, x: Tensor, t: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, t: Tensor | int | None = None) -> Tensor:
        """``U(x, t)`` ``[B]``; ``t`` the level of each example (``[B]`` int64), one int for
        all, or ``None``: level 0 (the data)."""
        t = levels_like(x, 0 if t is None else t)
        h = self.net(x, t)
        if h.dtype != x.dtype:  # bf16 autocast: divide by s² (down to 2e-5) in the input's dtype
            h = h.to(x.dtype)
        return h / self.diffusion.step_var.to(h.dtype)[t]


def levels_like(x: Tensor, t: Tensor | int) -> Tensor:
    """Levels ``[B]`` int64 on ``x``'s device from an int or a tensor of ``B`` levels."""
    if isinstance(t, Tensor):
        return t.to(device=x.device, dtype=torch.long).reshape(x.shape[0])
    return torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)


class FiLM(nn.Module):
    """A per-level scale and shift of ``channels`` features: ``h·(1 + γ_t) + β_t``; the
    embedding starts at zero (every level the same network until training tells them apart)."""

    def __init__(self, levels: int, channels: int):
        super().__init__()
        self.embed = nn.Embedding(levels, 2 * channels)
        nn.init.zeros_(self.embed.weight)

    def forward(self, h: Tensor, t: Tensor) -> Tensor:
        gamma, beta = self.embed(t).chunk(2, dim=1)
        shape = (h.shape[0], -1) + (1,) * (h.dim() - 2)
        return h * (1 + gamma.view(shape)) + beta.view(shape)


@dataclass(frozen=True, kw_only=True)
class DRLConvNetConfig(ScheduleConfig):
    nf: int = param(64, "Width: feature maps of the first layer, doubled by each of the three "
                        "stride-2 layers (convnet32's layout).", min=1)
    activation: str = param("leaky_relu", "Nonlinearity (the paper's code: leaky ReLU 0.2).",
                            choices=ACTIVATIONS)
    leak: float = param(0.2, "Negative slope of leaky_relu.", min=0.0)
    spectral_norm: bool = param(True, "Spectral normalisation of every convolution (the paper's "
                                      "code: on); without it the recovery chains diverge within "
                                      "~50 iterations of drl-quick.")


def spectral_normalise(module: nn.Module) -> nn.Module:
    """``torch.nn.utils.parametrizations.spectral_norm`` on every convolution and linear layer
    of ``module`` (not the level embeddings): one power iteration per training forward, fixed
    in eval mode (the chains run in eval mode, so their energy is deterministic)."""
    from torch.nn.utils.parametrizations import spectral_norm

    for m in list(module.modules()):
        if isinstance(m, nn.Conv2d | nn.Linear):
            spectral_norm(m)
    return module


class DRLConvNet32(NoiseConditionalEnergy):
    """3x3 conv(nf), then 4x4 stride-2 convs to 2nf, 4nf, 8nf, each followed by the level's FiLM
    and the activation, then a 4x4 conv to one number."""

    name = "drl-convnet32"
    summary = ("Noise-level-conditional ConvNet for 32x32 images (diffusion recovery likelihood): "
               "U(x, t), forward(x) = level 0.")
    Config = DRLConvNetConfig
    resolution = 32

    def __init__(self, config: DRLConvNetConfig, shape: tuple[int, ...]):
        super().__init__(config, shape)
        self.check_shape("images [C, 32, 32]", len(self.shape) == 3 and self.shape[1:] == (32, 32))
        c, nf, levels = self.shape[0], config.nf, config.levels
        widths = [nf, 2 * nf, 4 * nf, 8 * nf]
        convs: list[nn.Module] = [nn.Conv2d(c, nf, 3, 1, 1)]
        convs += [nn.Conv2d(a, b, 4, 2, 1) for a, b in zip(widths, widths[1:], strict=False)]
        self.convs = nn.ModuleList(convs)
        self.films = nn.ModuleList(FiLM(levels, w) for w in widths)
        self.act = _activation(config.activation, config.leak)
        self.out = nn.Conv2d(widths[-1], 1, 4, 1, 0)
        if config.spectral_norm:
            spectral_normalise(self)

    def net(self, x: Tensor, t: Tensor) -> Tensor:
        h = x
        for conv, film in zip(self.convs, self.films, strict=True):
            h = self.act(film(conv(h), t))
        return self.out(h).reshape(x.shape[0])


@dataclass(frozen=True, kw_only=True)
class DRLMLPConfig(ScheduleConfig):
    hidden: int = param(128, "Hidden units per layer.", min=1)
    layers: int = param(3, "Hidden layers.", min=1)
    activation: str = param("silu", "Nonlinearity (smooth by default).", choices=ACTIVATIONS)
    leak: float = param(0.2, "Negative slope of leaky_relu.", min=0.0)


class DRLMLP(NoiseConditionalEnergy):
    """Linear, FiLM of the level, activation (``layers`` times), then a linear map to one
    number; any example shape (flattened)."""

    name = "drl-mlp"
    summary = "Noise-level-conditional MLP for points (diffusion recovery likelihood): U(x, t)."
    Config = DRLMLPConfig

    def __init__(self, config: DRLMLPConfig, shape: tuple[int, ...]):
        super().__init__(config, shape)
        d = 1
        for s in self.shape:
            d *= s
        dims = [d] + [config.hidden] * config.layers
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:], strict=False))
        self.films = nn.ModuleList(FiLM(config.levels, config.hidden) for _ in range(config.layers))
        self.act = _activation(config.activation, config.leak)
        self.out = nn.Linear(config.hidden, 1)

    def net(self, x: Tensor, t: Tensor) -> Tensor:
        h = x.flatten(1)
        for lin, film in zip(self.linears, self.films, strict=True):
            h = self.act(film(lin(h), t))
        return self.out(h).reshape(x.shape[0])


def noise_conditional(energy: Any, who: str = "this component") -> nn.Module:
    """The noise-conditional module behind ``energy``: the energy itself or what a wrapper holds
    (``DistributedDataParallel.module``, the trainer's bf16 ``Autocast.inner``,
    ``torch.compile``'s ``_orig_mod``). It has ``diffusion`` (:class:`DiffusionBuffers`) and
    ``forward(x, t)``. Anything else is one :class:`ebmkit.ConfigError` line."""
    seen = 0
    obj = energy
    while obj is not None and seen < 8:
        if isinstance(getattr(obj, "diffusion", None), DiffusionBuffers):
            return obj
        nxt = None
        for attr in ("module", "inner", "_orig_mod"):
            mods = getattr(obj, "_modules", {})
            if attr in mods:
                nxt = mods[attr]
                break
        obj, seen = nxt, seen + 1
    name = getattr(energy, "name", None) or type(energy).__name__
    raise ConfigError(f"{who} needs a noise-conditional energy U(x, t) (drl-convnet32, drl-mlp), "
                      f"but the energy is '{name}'; set energy.name to one of them")
