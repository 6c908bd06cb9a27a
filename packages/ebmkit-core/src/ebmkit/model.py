"""``EBM``: a trained energy-based model in memory — the energy plus how to sample from it.

:func:`ebmkit.fit` returns one, :func:`ebmkit.load` rebuilds one from a checkpoint, evaluators
receive one. Sampling follows one policy everywhere (``ebmkit sample``, ``ebmkit eval``,
``ebmkit toy``, training grids, notebooks): chains start from the run initializer's
:meth:`~ebmkit.Initializer.standalone` starts and run the *sampling K* (``train.sample_steps``,
else the sampler's ``steps``).
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .interfaces import Initializer, Prior, PriorInitializer, Sampler

if TYPE_CHECKING:  # pragma: no cover
    from .runconfig import RunConfig


def sampling_steps(sampler: Sampler, sample_steps: int | None) -> int:
    """The one sampling-K rule: ``train.sample_steps`` when set, else the sampler's ``steps``."""
    return int(sample_steps) if sample_steps is not None else sampler.default_steps


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module.eval()`` for the duration, then its previous mode back."""
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


class EBM:
    """A trained EBM: ``energy`` (an ``nn.Module``, ``[B, ...] -> [B]``), the ``sampler`` and the
    chain starts (``initializer``, already the standalone policy) used to draw from it.

    >>> x = ebm.sample(64, steps=40, seed=0)      # [64, *shape]
    >>> ebm.save("model.safetensors")

    ``config`` is the run's :class:`~ebmkit.RunConfig` (``None`` for a hand-built model), ``step``
    the training iteration it was saved at, ``meta`` the checkpoint's metadata.
    """

    def __init__(self, energy: nn.Module, sampler: Sampler, initializer: Initializer | None = None,
                 *, steps: int | None = None, shape: tuple[int, ...] | None = None,
                 config: RunConfig | None = None, step: int = 0,
                 meta: dict[str, Any] | None = None, registry: Any = None):
        self.energy = energy
        self.sampler = sampler
        shape = shape if shape is not None else getattr(energy, "shape", None)
        if shape is None and initializer is not None:
            shape = initializer.shape
        if shape is None:
            raise ConfigError("EBM needs the shape of one example (pass shape=(C, H, W) or (D,))")
        self.shape = tuple(int(s) for s in shape)
        self.initializer = (initializer.standalone() if initializer is not None
                            else PriorInitializer(Prior(self.shape)))
        self.steps = int(steps) if steps is not None else sampler.default_steps
        self.config = config
        self.step = int(step)
        self.meta = dict(meta or {})
        self.registry = registry
        #: set by :func:`ebmkit.fit`: the run directory (or None), the last iteration's
        #: diagnostics, and whether every iteration ran.
        self.out_dir: Path | None = None
        self.last: dict[str, Any] = {}
        self.completed: bool | None = None

    def __repr__(self) -> str:
        name = getattr(self.energy, "name", "") or type(self.energy).__name__
        return (f"EBM(energy={name}, sampler={self.sampler.name}, "
                f"init={self.initializer.name}, steps={self.steps}, shape={self.shape}, "
                f"step={self.step})")

    # -- the model ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        p = next(iter(self.energy.parameters()), None)
        if p is not None:
            return p.device
        b = next(iter(self.energy.buffers()), None)
        return b.device if b is not None else torch.device("cpu")

    @property
    def prior(self) -> Prior:
        """``p₀`` of the generator view ``x = M_θ(z)`` (uniform on ``[-1, 1]`` by default)."""
        return self.initializer.prior or Prior(self.shape)

    def to(self, device: torch.device | str) -> EBM:
        self.energy.to(device)
        return self

    def __call__(self, x: Tensor) -> Tensor:
        """``U(x)`` ``[B]`` (the energy in eval mode)."""
        with eval_mode(self.energy):
            return self.energy(x)

    # -- sampling ----------------------------------------------------------------------------
    def _generator(self, seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
        if generator is not None:
            if seed is not None:
                raise ConfigError("give either seed= or generator=, not both")
            return generator
        if seed is None:
            return None
        try:
            value = operator.index(seed)  # ints, numpy ints; not floats or strings
        except TypeError:
            value = -1
        if isinstance(seed, bool) or not 0 <= value < 2**64:
            raise ConfigError(f"seed must be an integer with 0 <= seed < 2**64, got {seed!r}")
        return torch.Generator(device=self.device).manual_seed(value)

    def starts(self, n: int, *, seed: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """``n`` chain starts ``x₀`` under the standalone policy."""
        gen = self._generator(seed, generator)
        return self.initializer.sample(n, generator=gen, device=self.device)

    def sample(self, n: int, *, steps: int | None = None, seed: int | None = None,
               generator: torch.Generator | None = None, noise: bool = True,
               batch_size: int = 256, x0: Tensor | None = None) -> Tensor:
        """``n`` samples ``[n, *shape]``: ``steps`` MCMC steps (default: the sampling K) from the
        standalone chain starts (or from ``x0``). The same ``seed`` gives the same samples.
        ``noise=False`` runs the deterministic generator ``x = M_θ(x₀)``."""
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        k = self.steps if steps is None else int(steps)
        if k < 0:
            raise ConfigError(f"steps must be >= 0, got {k}")
        gen = self._generator(seed, generator)
        cap = self.initializer.capacity
        bs = max(1, min(int(batch_size), cap) if cap else int(batch_size))
        outs = []
        with eval_mode(self.energy):
            for start in range(0, n, bs):
                m = min(bs, n - start)
                if x0 is not None:
                    xs = x0[start:start + m].to(self.device)
                else:
                    xs = self.initializer.sample(m, generator=gen, device=self.device)
                outs.append(self.sampler.run(self.energy, xs, k, generator=gen, noise=noise).x)
        return torch.cat(outs)

    def generate(self, z: Tensor, *, steps: int | None = None, differentiable: bool = False) -> Tensor:
        """``M_θ(z)``: the noise-free K-step chain from ``z`` (differentiable in ``z`` when asked:
        the short-run generator view used by interpolation, reconstruction and flow densities)."""
        k = self.steps if steps is None else int(steps)
        return self.sampler.run(self.energy, z, k, noise=False, differentiable=differentiable).x

    def component(self, kind: str, name: str, config: Any = None) -> Any:
        """Build another registered component (e.g. a second sampler for a long run) from the
        registry this model was loaded with (a fresh one when it has none)."""
        reg = self.registry
        if reg is None:
            from .plugins import build_registry

            reg = self.registry = build_registry()
        return reg.create(kind, name, config)

    # -- exchange ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the energy's weights and the run document to one ``.safetensors`` file
        (no pickle); :func:`ebmkit.load` rebuilds the model from it."""
        from .checkpoint import save_energy

        return save_energy(Path(path), self.energy, doc=self.document(), step=self.step,
                           shape=self.shape)

    def document(self) -> dict[str, dict[str, Any]]:
        """The run document this model saves: the run's, or (hand-built) one describing its
        components; ``train.sample_steps`` records the sampling K when it differs from the
        sampler's ``steps``."""
        from .params import to_dict

        if self.config is not None:
            doc = self.config.to_dict()
        else:
            doc = {}
            for section, obj in (("energy", self.energy), ("sampler", self.sampler),
                                 ("init", self.initializer)):
                name, cfg = getattr(obj, "name", ""), getattr(obj, "config", None)
                if name and cfg is not None and hasattr(cfg, "__dataclass_fields__"):
                    doc[section] = {"name": name, **to_dict(cfg)}
                else:
                    cls = type(obj)
                    doc[section] = {"name": "custom", "class": f"{cls.__module__}.{cls.__qualname__}"}
            doc["data"] = {"name": "custom"}
            doc["train"] = {}
        if self.steps != self.sampler.default_steps:
            doc.setdefault("train", {})["sample_steps"] = self.steps
        return doc
