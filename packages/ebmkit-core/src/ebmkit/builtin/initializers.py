"""Built-in chain initialisers: noise, data (contrastive divergence) and a persistent buffer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..hookspecs import hookimpl
from ..interfaces import Initializer, Prior, PriorInitializer
from ..mcmc import randn_like_on
from ..params import param


@dataclass(frozen=True, kw_only=True)
class NoiseConfig:
    distribution: str = param("uniform", "uniform on [low, high] (short-run default) or gaussian.",
                              choices=("uniform", "gaussian"))
    low: float = param(-1.0, "Uniform lower bound (the data range).")
    high: float = param(1.0, "Uniform upper bound.")
    mean: float = param(0.0, "Gaussian mean.")
    std: float = param(1.0, "Gaussian standard deviation.", min=0.0)

    def __post_init__(self):
        if self.low >= self.high:
            raise ValueError("low must be < high")


def draw_noise(cfg: NoiseConfig, n: int, shape: tuple[int, ...], *, generator=None,
               device=None, dtype=torch.float32) -> Tensor:
    """``n`` draws of the configured noise, drawn on the generator's device (a CPU generator may
    drive CUDA chains) and moved to ``device``."""
    return Prior.of(cfg, shape).sample(n, generator=generator, device=device, dtype=dtype)


class NoiseInit(Initializer):
    name = "noise"
    summary = "Chains start from noise: uniform on the data range (short-run default) or Gaussian."
    Config = NoiseConfig

    def sample(self, n, *, data=None, generator=None, device=None):
        return draw_noise(self.config, n, self.shape, generator=generator, device=device)

    @property
    def prior(self) -> Prior:
        return Prior.of(self.config, self.shape)


@dataclass(frozen=True, kw_only=True)
class DataInitConfig:
    noise_std: float = param(0.0, "Std of Gaussian noise added to the data starts.", min=0.0)


class DataInit(Initializer):
    name = "data"
    summary = "Contrastive divergence: chains start at the current data batch (optionally noised)."
    Config = DataInitConfig
    needs_data = True

    def sample(self, n, *, data=None, generator=None, device=None):
        if data is None:
            raise ValueError("the 'data' initializer needs the data batch (it cannot sample alone)")
        x = data[:n].detach().clone()
        if x.shape[0] < n:
            raise ValueError(f"the 'data' initializer needs {n} data examples, got {x.shape[0]}")
        if device is not None:
            x = x.to(device)
        if self.config.noise_std > 0:
            x = x + self.config.noise_std * randn_like_on(x, generator)
        return x


@dataclass(frozen=True, kw_only=True)
class PersistentConfig(NoiseConfig):
    buffer_size: int = param(10_000, "Persistent chains kept (anatomy paper: 10,000).", min=1)
    init_from: str = param("noise", "Fill the buffer from noise or from data.", choices=("noise", "data"))
    rejuvenation: float = param(
        0.0, "Probability that a drawn chain restarts from noise instead of its stored state.",
        min=0.0, max=1.0)


class PersistentInit(Initializer):
    """A buffer of N chains; each ``sample(m)`` reads m random slots, ``update`` writes the end
    states back to the same slots (persistent contrastive divergence)."""

    name = "persistent"
    summary = "Persistent buffer of chains (default 10,000), m read and written back per iteration."
    Config = PersistentConfig

    def __init__(self, config, shape):
        super().__init__(config, shape)
        self.buffer: Tensor | None = None
        self._idx: Tensor | None = None

    def setup(self, *, draw_data: Callable[[int], Tensor] | None = None, generator=None,
              device=None) -> None:
        n = self.config.buffer_size
        if self.config.init_from == "data":
            if draw_data is None:
                raise ValueError("persistent init_from='data' needs data to fill the buffer")
            self.buffer = draw_data(n).detach().to(device).clone()
        else:
            self.buffer = draw_noise(self.config, n, self.shape, generator=generator, device=device)

    def sample(self, n, *, data=None, generator=None, device=None):
        if self.buffer is None:
            self.setup(draw_data=(lambda k: _tile(data, k)) if data is not None else None,
                       generator=generator, device=device)
        buf = self.buffer
        if n > buf.shape[0]:
            raise ConfigError(
                f"the persistent buffer holds {buf.shape[0]} chains but {n} were asked for; "
                f"set init.buffer_size >= train.batch_size")
        gen_dev = generator.device if generator is not None else buf.device
        idx = torch.randperm(buf.shape[0], generator=generator, device=gen_dev)[:n].to(buf.device)
        x = buf[idx].clone()
        if self.config.rejuvenation > 0:
            r = torch.rand(n, generator=generator, device=gen_dev).to(buf.device)
            fresh = r < self.config.rejuvenation
            noise = draw_noise(self.config, n, self.shape, generator=generator, device=gen_dev).to(buf.device)
            x = torch.where(fresh.view(-1, *[1] * len(self.shape)), noise, x)
        self._idx = idx
        return x if device is None else x.to(device)

    def update(self, x_final):
        if self.buffer is None or self._idx is None:
            return
        self.buffer[self._idx] = x_final.detach().to(self.buffer.device, self.buffer.dtype)
        self._idx = None

    def state_dict(self):
        return {} if self.buffer is None else {"buffer": self.buffer}

    @property
    def prior(self) -> Prior:
        return Prior.of(self.config, self.shape)

    @property
    def capacity(self) -> int:
        """The buffer's chains (``buffer_size`` before it is filled): known before training, so
        a batch larger than the buffer is refused before anything is written."""
        return int(self.config.buffer_size) if self.buffer is None else int(self.buffer.shape[0])

    def standalone(self) -> Initializer:
        """The saved chains when the buffer was restored (what the anatomy paper shows for
        convergent ML); fresh draws from the noise prior otherwise (a model file alone)."""
        return self if self.buffer is not None else PriorInitializer(self.prior)

    def load_state_dict(self, state):
        if "buffer" in state:
            if tuple(state["buffer"].shape[1:]) != self.shape:
                raise ValueError(
                    f"saved persistent buffer has chains of shape {tuple(state['buffer'].shape[1:])},"
                    f" this run expects {self.shape}")
            self.buffer = state["buffer"].clone()


def _tile(data: Tensor, n: int) -> Tensor:
    reps = -(-n // data.shape[0])
    return data.repeat(reps, *[1] * (data.dim() - 1))[:n]


@hookimpl
def ebmkit_register(register):
    for cls in (NoiseInit, DataInit, PersistentInit):
        register(cls)
