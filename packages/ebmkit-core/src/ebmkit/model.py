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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import torch
from torch import Tensor, nn

from .checks import as_data, check_energy
from .errors import ConfigError
from .interfaces import Initializer, Prior, PriorInitializer, RunDocument, Sampler, classes_of


def sampling_steps(sampler: Sampler, sample_steps: int | None) -> int:
    """The one sampling-K rule: ``train.sample_steps`` when set, else the sampler's ``steps``."""
    return int(sample_steps) if sample_steps is not None else sampler.default_steps


@dataclass(frozen=True)
class SampleInfo:
    """What the chains of :meth:`EBM.sample` did (``x, info = ebm.sample(n, return_info=True)``).

    ``acceptance``: mean Metropolis-Hastings acceptance over the chains (after the sampler's
    warm-up), ``None`` for an unadjusted sampler (Langevin); ``energies``: the final energy
    ``U(x)`` of each sample ``[n]`` (on the model's device; the temperature taken out);
    ``steps``: the MCMC steps each chain ran; ``grad_norm``: mean ``‖∇ₓU/T‖₂`` over the
    steps and chains; ``divergent``: ``[n]`` bool, a chain whose state, energy or gradient went
    non-finite (``None`` when the sampler does not report it).
    """

    acceptance: float | None
    energies: Tensor
    steps: int
    grad_norm: float
    divergent: Tensor | None = None


def _as_classes(y: Any) -> tuple[Tensor | None, bool]:
    """``y`` (an int, a sequence, an array or a tensor) as a tensor (``None`` if it is none) and
    whether it is a single class index (for every sample)."""
    try:
        return torch.tensor([operator.index(y)], dtype=torch.int64), True
    except TypeError:
        pass
    try:
        return torch.as_tensor(y), False
    except (TypeError, ValueError, RuntimeError):
        return None, False


class Conditioned(nn.Module):
    """The closure a sampler sees for class-conditional chains: ``x -> U(x, y)`` ``[B]`` of a
    conditional energy (``forward(x, y=None)``, see :attr:`ebmkit.Energy.n_classes`) with the
    classes ``y`` ``[B]`` fixed. A module (the energy is its submodule), so samplers freeze its
    parameters as they do an energy's."""

    def __init__(self, energy: nn.Module, y: Tensor):
        super().__init__()
        self.energy = energy
        self.y = y

    def forward(self, x: Tensor) -> Tensor:
        return self.energy(x, y=self.y)


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
                 config: RunDocument | None = None, step: int = 0,
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
        self._checked: nn.Module | None = None  # the energy check_energy last passed

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

    def check(self, x: Tensor | None = None) -> None:
        """Check the energy once (:func:`ebmkit.checks.check_energy`): on ``x`` (a small batch
        ``[B, *shape]``), else on two draws from the noise prior (a private seed: no RNG state
        is used). A one-line :class:`ConfigError` when it cannot be sampled from: a wrong input
        size, a ``[B, 1]`` or scalar output, non-finite values. :meth:`sample` calls it before
        its first chains; it runs again only for another ``energy``."""
        if self._checked is self.energy:
            return
        if x is None:
            x = self.prior.sample(2, generator=torch.Generator().manual_seed(0), device=self.device)
        check_energy(self.energy, x)
        self._checked = self.energy

    def starts(self, n: int, *, seed: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """``n`` chain starts ``x₀`` under the standalone policy."""
        gen = self._generator(seed, generator)
        return self.initializer.sample(n, generator=gen, device=self.device)

    @overload
    def sample(self, n: int, *, steps: int | None = ..., seed: int | None = ...,
               generator: torch.Generator | None = ..., noise: bool = ..., batch_size: int = ...,
               x0: Tensor | None = ..., y: Any = ...,
               return_info: Literal[False] = ...) -> Tensor: ...

    @overload
    def sample(self, n: int, *, steps: int | None = ..., seed: int | None = ...,
               generator: torch.Generator | None = ..., noise: bool = ..., batch_size: int = ...,
               x0: Tensor | None = ..., y: Any = ...,
               return_info: Literal[True]) -> tuple[Tensor, SampleInfo]: ...

    def sample(self, n: int, *, steps: int | None = None, seed: int | None = None,
               generator: torch.Generator | None = None, noise: bool = True,
               batch_size: int = 256, x0: Tensor | None = None, y: Any = None,
               return_info: bool = False) -> Tensor | tuple[Tensor, SampleInfo]:
        """``n`` samples ``[n, *shape]``: ``steps`` MCMC steps (default: the sampling K) from the
        standalone chain starts (or from ``x0``, ``[n, *shape]``: one start per sample). The
        same ``seed`` gives the same samples. ``noise=False`` runs the deterministic generator
        ``x = M_θ(x₀)``. ``return_info=True`` returns ``(x, info)``, ``info`` a
        :class:`SampleInfo` (acceptance, final energies, grad norm). An exception from a
        plugin's component is one :class:`~ebmkit.PluginError` line naming the plugin.

        ``y`` (a conditional energy only, :attr:`ebmkit.Energy.n_classes`): the class of every
        sample, an int (all ``n``) or ``n`` ints (a list, array or tensor); the chains then
        sample ``p(x | y) ∝ exp(-U(x, y))`` (the sampler sees the closure ``x -> U(x, y)``) and
        ``info.energies`` are ``U(x, y)``."""
        try:
            n = operator.index(n)  # ints, numpy ints; not floats or strings
        except TypeError:
            raise ConfigError(f"n must be an integer number of samples, got {n!r}") from None
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        k = self.steps if steps is None else int(steps)
        if k < 0:
            raise ConfigError(f"steps must be >= 0, got {k}")
        if x0 is not None:
            x0 = self._check_x0(x0, n)
        labels = self._check_y(y, n)
        gen = self._generator(seed, generator)
        cap = self.initializer.capacity
        bs = max(1, min(int(batch_size), cap) if cap else int(batch_size))
        results = []
        from .plugins import contained  # a plugin's sampler/initializer/energy fails with its name

        parts = {"sampler": self.sampler, "energy": self.energy, "initializer": self.initializer}
        with contained(parts, self.registry, doing=" failed while sampling"), eval_mode(self.energy):
            for start in range(0, n, bs):
                m = min(bs, n - start)
                if x0 is not None:
                    xs = x0[start:start + m].to(self.device)
                else:
                    xs = self.initializer.sample(m, generator=gen, device=self.device)
                if start == 0:
                    self.check(xs[:2])
                fn = (self.energy if labels is None
                      else Conditioned(self.energy, labels[start:start + m].to(self.device)))
                results.append(self.sampler.run(fn, xs, k, generator=gen, noise=noise))
        x = torch.cat([r.x for r in results])
        if not return_info:
            return x
        return x, self._info(results, k)

    @property
    def n_classes(self) -> int | None:
        """The classes of a conditional energy (``sample(n, y=...)`` works), else ``None``."""
        return classes_of(self.energy)

    def _check_y(self, y: Any, n: int) -> Tensor | None:
        """``y`` as :meth:`sample` needs it: ``[n]`` int64 classes in ``0 .. K-1``, or ``None``."""
        if y is None:
            return None
        k = self.n_classes
        if k is None:
            raise ConfigError("y= samples a class, but this model's energy is unconditional (it "
                              "declares no n_classes); sample without y=, or train a conditional "
                              "energy (e.g. the jem plugin's classifier energies)")
        if isinstance(y, bool):
            raise ConfigError(f"y must be a class index or {n} of them, got {y!r}")
        labels, single = _as_classes(y)
        if labels is None:
            raise ConfigError(f"y must be a class index or {n} of them, got {type(y).__name__}")
        if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
            raise ConfigError(f"y holds class indices (integers), got dtype {labels.dtype}")
        labels = labels.reshape(-1).to(torch.int64).cpu()
        if single:
            labels = labels.expand(n).clone()
        if labels.numel() != n:
            raise ConfigError(f"y holds {labels.numel()} classes but n={n} samples were asked "
                              f"for; pass one class per sample, or a single int")
        if labels.numel() and not (int(labels.min()) >= 0 and int(labels.max()) < k):
            bad = int(labels[(labels < 0) | (labels >= k)][0])
            raise ConfigError(f"y = {bad} is not a class of this model: classes are 0 .. {k - 1}")
        return labels

    def class_grid(self, per_class: int = 8, *, classes: Any = None, path: str | Path | None = None,
                   scale: int = 1, **kwargs: Any) -> Tensor:
        """Class-conditional samples as a grid, a row per class: ``[len(classes) * per_class,
        *shape]``, the first ``per_class`` of class ``classes[0]`` and so on (default: every
        class ``0 .. K-1``). With ``path`` (images only) also written as a PNG with one row per
        class. Other keyword arguments go to :meth:`sample` (``steps``, ``seed``, ...)."""
        k = self.n_classes
        if k is None:
            raise ConfigError("a class grid needs a conditional energy (n_classes); this model's "
                              "energy is unconditional: use ebm.sample(n)")
        per_class = operator.index(per_class)
        if per_class < 1:
            raise ConfigError(f"per_class must be >= 1, got {per_class}")
        rows = list(range(k)) if classes is None else [operator.index(c) for c in classes]
        if not rows:
            raise ConfigError("classes is empty: give at least one class")
        y = torch.tensor(rows, dtype=torch.int64).repeat_interleave(per_class)
        x = self.sample(len(y), y=y, **kwargs)
        if path is not None:
            from .images import save_grid

            if x.dim() != 4:
                raise ConfigError(f"a grid PNG needs images [N, C, H, W]; these samples have shape "
                                  f"{list(x.shape[1:])}: leave path unset and plot them yourself")
            save_grid(x, path, nrow=per_class, scale=scale)
        return x

    def _check_x0(self, x0: Any, n: int) -> Tensor:
        """``x0`` as ``sample`` needs it: ``[n, *shape]`` floats (a numpy array is fine)."""
        x0 = as_data(x0, what="x0")
        if not isinstance(x0, Tensor):
            raise ConfigError(f"x0 must be a tensor [n, *shape] of chain starts, got {type(x0).__name__}")
        shape = list(self.shape)
        if tuple(x0.shape[1:]) != self.shape or x0.ndim != len(shape) + 1:
            raise ConfigError(f"x0 has shape {list(x0.shape)}, but this model's examples have shape "
                              f"{shape}; pass x0 of shape [n, {', '.join(map(str, shape))}]")
        if x0.shape[0] != n:
            raise ConfigError(f"x0 holds {x0.shape[0]} chain starts but n={n} samples were asked "
                              f"for; pass one start per sample (n=x0.shape[0] = {x0.shape[0]})")
        return x0

    def _info(self, results: list, k: int) -> SampleInfo:
        t = self.sampler.temperature
        sizes = [r.x.shape[0] for r in results]
        total = sum(sizes)

        def mean(per_chain: str, overall: str) -> float | None:
            parts = [getattr(r, per_chain) for r in results]
            if all(p is not None for p in parts):
                return float(torch.cat([p.float().reshape(-1) for p in parts]).mean())
            scalars = [getattr(r, overall) for r in results]
            if any(s is None for s in scalars):
                return None
            return sum(float(s) * b for s, b in zip(scalars, sizes, strict=True)) / total

        div = [r.divergent for r in results]
        return SampleInfo(
            acceptance=mean("per_chain_accept_rate", "accept_rate"),
            energies=torch.cat([r.energy.detach() for r in results]) * t,
            steps=k,
            grad_norm=mean("per_chain_grad_norm", "grad_norm") or 0.0,
            divergent=torch.cat(div) if all(d is not None for d in div) else None,
        )

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
