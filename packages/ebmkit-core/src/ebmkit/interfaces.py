"""The component kinds and their contracts.

Conventions (one everywhere): an energy ``U`` maps a batch ``[B, ...]`` to ``[B]``; lower is
more probable; ``p(x) ∝ exp(-U(x) / T)``. Image data lives in ``[-1, 1]``.

Every registrable class carries ``name`` (its registry key), ``summary`` (one line for
``ebmkit list``) and ``Config`` (a frozen keyword-only dataclass built with
:func:`ebmkit.param`). The kind is read from the base class.

What the trainer, the CLI and the evaluators need from a component is part of its interface
here (a property or method, checked by the conformance kit in ``ebmkit_testing``), never a test
of its name or of private attributes.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .mcmc import (
    MEMORY_FORMATS,
    ChainResult,
    ChainState,
    ChainStats,
    StepInfo,
    chain_grad_norm,
    chain_layout_for,
    energy_and_grad,
    frozen,
    memory_format_of,
    restore_layout,
)

if TYPE_CHECKING:  # pragma: no cover
    from torch.utils.data import Dataset

__all__ = [
    "MEMORY_FORMATS", "ChainResult", "ChainState", "ChainStats", "Component", "DataSource",
    "Energy", "EvalResult", "Evaluator", "Initializer", "KINDS", "Model", "NoParams", "Objective",
    "ObjectiveOutput", "Options", "Prior", "Preset", "PriorInitializer", "RunDocument",
    "SampleMetric", "Sampler", "StepInfo", "classes_of",
]


@dataclass(frozen=True, kw_only=True)
class NoParams:
    """A config with no parameters."""


@runtime_checkable
class RunDocument(Protocol):
    """A run document as the layers below ``runconfig`` see it (:class:`ebmkit.RunConfig`
    implements it): its sections as plain tables and as TOML."""

    def to_dict(self) -> dict[str, Any]: ...

    def to_toml(self) -> str: ...


@runtime_checkable
class Model(Protocol):
    """What an evaluator is given: a trained model (:class:`ebmkit.EBM` implements it).

    Declared here so that ``interfaces`` needs nothing from the layers above it (the layers hold
    at type level too); evaluators use only these members.
    """

    energy: nn.Module
    sampler: Sampler
    initializer: Initializer
    shape: tuple[int, ...]
    steps: int
    config: Any
    registry: Any

    @property
    def device(self) -> torch.device: ...

    @property
    def prior(self) -> Prior: ...

    def __call__(self, x: Tensor) -> Tensor: ...

    def sample(self, n: int, **kwargs: Any) -> Any: ...

    def starts(self, n: int, **kwargs: Any) -> Tensor: ...

    def generate(self, z: Tensor, **kwargs: Any) -> Tensor: ...

    def component(self, kind: str, name: str, config: Any = None) -> Any: ...


class Component:
    """Base of every registrable class."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Config: ClassVar[type] = NoParams

    @classmethod
    def default_config(cls) -> Any:
        from .params import build

        return build(cls.Config, {}, where=cls.kind or "config")


# --------------------------------------------------------------------------------------------
# energy
# --------------------------------------------------------------------------------------------
class Energy(nn.Module, Component):
    """``U(x; θ)``: ``forward(x[B, *shape]) -> [B]``, lower is more probable.

    Constructed as ``cls(config, shape)`` where ``shape`` is one example's shape, e.g.
    ``(3, 32, 32)`` or ``(2,)``. ``shape`` and ``config`` are kept on the module so a checkpoint
    can rebuild it.
    """

    kind = "energy"
    #: The image side length the architecture is built for, if it has one (convnet64: 64). A run
    #: whose document leaves ``data.resolution`` unset resizes the data to it.
    resolution: ClassVar[int | None] = None
    #: A *conditional* energy sets this to its number of classes ``K`` (an int on the instance or
    #: the class) and takes the class as an optional second argument: ``forward(x, y=None)``,
    #: ``y`` an int64 tensor ``[B]`` in ``0 .. K-1`` -> ``U(x, y)`` ``[B]``, and without ``y`` the
    #: marginal ``U(x) = -log sum_y exp(-U(x, y))`` ``[B]`` (so ``p(x, y) ∝ exp(-U(x, y))``).
    #: Samplers never see ``y``: :meth:`ebmkit.EBM.sample` hands them a closure ``x -> U(x, y)``.
    #: ``None``: an unconditional energy, ``forward(x)`` only.
    n_classes: ClassVar[int | None] = None

    def __init__(self, config: Any, shape: tuple[int, ...]):
        nn.Module.__init__(self)
        self.config = config
        self.shape = tuple(int(s) for s in shape)

    def check_shape(self, allowed: str, ok: bool) -> None:
        from .errors import ConfigError

        if not ok:
            raise ConfigError(
                f"energy '{self.name}' expects {allowed}, but the data has shape {self.shape};"
                " choose another energy or change data.resolution / data.channels"
            )





class Sampler(Component):
    """Runs MCMC chains on an energy.

    Contract: ``init(energy, x0) -> ChainState``; ``step(energy, state, generator=) ->
    (ChainState, StepInfo)``; ``run(energy, x0, steps) -> ChainResult``. Samplers never write
    gradients into the energy's parameters, keep no graph between steps (unless
    ``differentiable=True``), honour ``generator``, and keep ``x0``'s device and dtype.
    ``noise=False`` makes the chain deterministic (the short-run generator ``x = M_θ(z)``).

    Optional config fields the shared machinery reads: ``temperature`` (T), ``steps`` (K),
    ``adapt_steps`` (warm-up length; acceptance is reported over the steps after it),
    ``memory_format`` (``auto``/``preserve``/``channels_last``: the layout chains run in) and
    ``step_size`` (ε; ``train.convergent`` rescales the energy by 2/ε² and the learning rate
    by ε²/2, anatomy App. A). The energy's config field ``scale`` (its output multiplier) is
    what ``train.convergent`` rescales.
    """

    kind = "sampler"
    #: Whether the sampler is exact for p (Metropolis-adjusted); unadjusted ones have a bias.
    exact: ClassVar[bool] = False

    def __init__(self, config: Any):
        self.config = config

    # Subclasses implement these two ---------------------------------------------------------
    def init(self, energy: nn.Module, x0: Tensor, *, differentiable: bool = False) -> ChainState:
        u, g = energy_and_grad(energy, x0, temperature=self.temperature,
                               create_graph=differentiable)
        return ChainState(x=x0 if differentiable else x0.detach(), energy=u, grad=g)

    def step(
        self,
        energy: nn.Module,
        state: ChainState,
        *,
        generator: torch.Generator | None = None,
        noise: bool = True,
        differentiable: bool = False,
    ) -> tuple[ChainState, StepInfo]:
        raise NotImplementedError

    # Shared -----------------------------------------------------------------------------------
    @property
    def grad_coef(self) -> float | None:
        """The gradient coefficient ``a`` of one step: the chain moves by ``-a·∇U/T`` plus noise
        (Langevin: ``ε²/2`` or ``grad_coef``; MALA/HMC: the proposal's ``ε²/2``). The trainer
        reports the anatomy paper's ``r_t = a·v_t`` with it; ``None`` when the sampler has no
        such coefficient (``r_t`` is then left empty)."""
        return None

    @property
    def temperature(self) -> float:
        return float(getattr(self.config, "temperature", 1.0))

    def gradient_evals(self, steps: int) -> int:
        """Energy-gradient evaluations per chain of a ``steps``-step :meth:`run`: the trainer's
        compute axis (``grad_evals`` in ``diagnostics.csv``). The default, ``steps + 1``, is one
        at the start (:meth:`init`) and one per step; samplers that take more per step (HMC's
        leapfrogs) or fewer (Langevin's fused loop) say so."""
        return int(steps) + 1

    @property
    def default_steps(self) -> int:
        return int(getattr(self.config, "steps", 100))

    @property
    def warmup_steps(self) -> int:
        return int(getattr(self.config, "adapt_steps", 0) or 0)

    def chain_layout(self, x0: Tensor) -> torch.memory_format:
        """The memory format chains run in (``config.memory_format``; ``auto`` = channels-last
        for 4-D states on the CPU, where oneDNN convolutions are faster in it)."""
        return chain_layout_for(x0, getattr(self.config, "memory_format", "preserve"))

    def prepare(self, x0: Tensor, *, differentiable: bool = False) -> Tensor:
        """The chains' own copy of ``x0`` in the run layout (``x0`` is never written to)."""
        fmt = self.chain_layout(x0)
        if differentiable:
            return x0 if memory_format_of(x0) == fmt else x0.contiguous(memory_format=fmt)
        return x0.detach().clone(memory_format=fmt)

    @staticmethod
    def restore_layout(x: Tensor, like: Tensor) -> Tensor:
        return restore_layout(x, like)

    def run(
        self,
        energy: nn.Module,
        x0: Tensor,
        steps: int | None = None,
        *,
        generator: torch.Generator | None = None,
        noise: bool = True,
        differentiable: bool = False,
        record: bool = False,
    ) -> ChainResult:
        """Run ``steps`` transitions from ``x0`` (default: ``config.steps``).

        Statistics are accumulated on the device; nothing here syncs with the host.
        With ``differentiable=True`` the graph through all steps is kept so the result is
        differentiable w.r.t. ``x0`` (and the energy's parameters are *not* frozen).
        """
        steps = self.default_steps if steps is None else int(steps)
        ctx = contextlib.nullcontext() if differentiable else frozen(energy)
        stats = ChainStats(x0, steps=steps, warmup=self.warmup_steps, record=record)
        with ctx:
            state = self.init(energy, self.prepare(x0, differentiable=differentiable),
                              differentiable=differentiable)
            for _ in range(steps):
                state, info = self.step(energy, state, generator=generator, noise=noise,
                                        differentiable=differentiable)
                stats.add(info)
            if steps == 0:
                stats.add(StepInfo(grad_norm=chain_grad_norm(state.grad.detach()),
                                   energy=state.energy), count=False)
        x = self.restore_layout(state.x if differentiable else state.x.detach(), x0)
        return stats.result(x, state.energy, state=state)



# --------------------------------------------------------------------------------------------
# initializer
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prior:
    """The noise distribution ``p₀`` of the short-run generator view ``x = M_θ(z)``, ``z ~ p₀``.

    ``uniform`` on ``[low, high]^D`` (the short-run paper's default, ``[-1, 1]``) or ``gaussian``
    ``N(mean, std² I)``. Interpolation, reconstruction and flow densities use it; standalone chains
    start from it when a run's initializer cannot start chains on its own.
    """

    shape: tuple[int, ...]
    distribution: str = "uniform"
    low: float = -1.0
    high: float = 1.0
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self):
        if self.distribution not in ("uniform", "gaussian"):
            raise ValueError(f"prior distribution must be uniform or gaussian, not {self.distribution!r}")

    @classmethod
    def of(cls, config: Any, shape: tuple[int, ...]) -> Prior:
        """The prior described by a noise-style config (``distribution``, ``low``, ``high``,
        ``mean``, ``std``; missing fields take the defaults)."""
        keys = ("distribution", "low", "high", "mean", "std")
        return cls(tuple(shape), **{k: getattr(config, k) for k in keys if hasattr(config, k)})

    @property
    def bounds(self) -> tuple[float, float] | None:
        """The support ``(low, high)`` per coordinate, or ``None`` when unbounded."""
        return (self.low, self.high) if self.distribution == "uniform" else None

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """``n`` draws ``[n, *shape]``. Drawn on the generator's device and moved to ``device``,
        so a CPU generator gives the same starts on any device."""
        gen_dev = generator.device if generator is not None else device
        size = (n, *self.shape)
        if self.distribution == "uniform":
            x = torch.rand(size, generator=generator, device=gen_dev, dtype=dtype)
            x = x * (self.high - self.low) + self.low
        else:
            x = torch.randn(size, generator=generator, device=gen_dev, dtype=dtype) * self.std + self.mean
        return x if device is None else x.to(device)

    def log_prob(self, z: Tensor) -> Tensor:
        """``log p₀(z)`` per example ``[B]`` (``-inf`` outside a uniform prior's support)."""
        d = math.prod(self.shape)
        flat = z.reshape(z.shape[0], -1).double()
        if self.distribution == "uniform":
            inside = ((flat >= self.low) & (flat <= self.high)).all(dim=1)
            val = torch.full((z.shape[0],), -d * math.log(self.high - self.low), dtype=torch.float64,
                             device=z.device)
            return torch.where(inside, val, torch.full_like(val, -math.inf))
        q = ((flat - self.mean) / self.std).pow(2).sum(dim=1)
        return -0.5 * q - d * (math.log(self.std) + 0.5 * math.log(2 * math.pi))


class Initializer(Component):
    """Where chains start. ``cls(config, shape)``; ``sample(n, data=, generator=, device=)``.

    ``data`` is the current positive batch (for CD / data-initialised buffers). ``update`` gets
    the chains' end states (persistent initialisers write them back). ``state_dict`` holds
    tensors only, so it can be stored with safetensors.

    What the trainer, the loader and the evaluators ask of an initializer (checked by
    ``ebmkit_testing.InitializerConformance``):

    * :attr:`needs_data` — ``sample`` needs the data batch (contrastive divergence);
    * :attr:`prior` — the noise distribution ``p₀`` it draws fresh chains from, if any;
    * :attr:`capacity` — the most chains one ``sample`` call can return (``None``: unlimited);
    * :meth:`standalone` — the one policy for chains of a *trained* model (``ebmkit sample``,
      ``ebmkit eval``, ``ebmkit.load``, sample grids): chains start where this initializer starts
      them when it can do so without data, and from its prior otherwise.
    """

    kind = "initializer"
    #: Whether ``sample`` needs the current data batch (``data=``) to start chains.
    needs_data: ClassVar[bool] = False

    def __init__(self, config: Any, shape: tuple[int, ...]):
        self.config = config
        self.shape = tuple(shape)

    def sample(
        self,
        n: int,
        *,
        data: Tensor | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        raise NotImplementedError

    def setup(self, *, draw_data: Any = None, generator: torch.Generator | None = None,
              device: torch.device | str | None = None) -> None:
        """Called once before training; ``draw_data(n)`` returns ``n`` data examples.

        Stateful initialisers (a persistent buffer) fill themselves here; others need nothing.
        """

    def update(self, x_final: Tensor) -> None:
        """Receive the end states of the chains started by the last ``sample`` call."""

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(f"initializer '{self.name}' has no state to load")

    @property
    def prior(self) -> Prior | None:
        """The noise distribution fresh chains are drawn from (``None`` if it draws none)."""
        return None

    @property
    def capacity(self) -> int | None:
        """The most chains one ``sample`` call can return (``None``: any number)."""
        return None

    def standalone(self) -> Initializer:
        """Chain starts for sampling a trained model, with no data batch at hand.

        The default: this initializer itself when it can start chains without data, otherwise
        fresh draws from its :attr:`prior` (uniform on ``[-1, 1]`` when it has none).
        """
        if not self.needs_data:
            return self
        return PriorInitializer(self.prior or Prior(self.shape))


class PriorInitializer(Initializer):
    """Chains start from a :class:`Prior` (standalone sampling; not registered)."""

    name = "prior"
    summary = "Fresh chains from a prior p0."

    def __init__(self, prior: Prior):
        super().__init__(None, prior.shape)
        self._prior = prior

    @property
    def prior(self) -> Prior:
        return self._prior

    def sample(self, n, *, data=None, generator=None, device=None):
        return self._prior.sample(n, generator=generator, device=device)


# --------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------
class DataSource(Component):
    """Yields images in ``[-1, 1]`` (``[C, H, W]``) or points (``[D]``).

    ``cls(config)``; ``open(split=...)`` returns a ``torch.utils.data.Dataset`` (map-style, items
    are tensors or ``(tensor, label)``) or an ``IterableDataset``. ``shape`` is one example's
    shape and is known after construction. Sources with a known density (toys) implement
    ``log_density``.
    """

    kind = "dataset"

    def __init__(self, config: Any):
        self.config = config

    @property
    def shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def n_classes(self) -> int | None:
        """How many classes the labels of a labelled source take (``0 .. n_classes - 1``;
        ``open`` then yields ``(x, y)`` items), ``None`` for unlabelled data (or unknown)."""
        return None

    def open(self, *, split: str = "train") -> Dataset:
        raise NotImplementedError

    #: A box ``(low, high)`` per coordinate holding practically all of the data's mass (toy
    #: sources: the evaluators' grid), or ``None``.
    bounds: ClassVar[tuple[float, float] | None] = None

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` fresh draws from the data distribution (sources with a generative model, such
        as the toys), independent of the training set."""
        raise NotImplementedError(f"dataset '{self.name}' cannot draw fresh samples")

    @property
    def has_sampler(self) -> bool:
        return type(self).sample is not DataSource.sample

    def log_density(self, x: Tensor) -> Tensor:
        """Exact normalised log-density ``[B]`` (toy sources only)."""
        raise NotImplementedError(f"dataset '{self.name}' has no known density")

    @property
    def has_density(self) -> bool:
        return type(self).log_density is not DataSource.log_density



# --------------------------------------------------------------------------------------------
# evaluator
# --------------------------------------------------------------------------------------------
@dataclass
class EvalResult:
    metrics: dict[str, float] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)


class Evaluator(Component):
    """Turns a model (and data) into numbers and pictures: ``evaluate(model, data, out_dir)``."""

    kind = "evaluator"

    def __init__(self, config: Any):
        self.config = config

    def evaluate(self, model: Model, data: DataSource | None, out_dir: Path | None) -> EvalResult:
        """Numbers in ``metrics``; with an ``out_dir``, JSON and PNGs written there (and listed in
        ``figures``). ``out_dir=None`` (``ebmkit.evaluate(..., out_dir=None)``): compute in
        memory and write no file."""
        raise NotImplementedError


class SampleMetric:
    """A score of a batch of samples against a reference batch (FID, KID, precision/recall).

    ``score(samples, reference) -> {metric: value}``: both ``[N, *shape]`` tensors in the data's
    range. Evaluators that also implement this interface are found by it (the ``transition``
    evaluator and the training-time metric callback use every installed one the user names),
    never by their registry names. ``metric_names`` lists the keys ``score`` returns.
    """

    metric_names: ClassVar[tuple[str, ...]] = ()

    def score(self, samples: Tensor, reference: Tensor) -> dict[str, float]:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# objective
# --------------------------------------------------------------------------------------------
@dataclass
class ObjectiveOutput:
    """What an objective returns for one iteration (tensors on the device, nothing synced).

    ``loss`` is the scalar the optimizer minimises; ``u_pos`` / ``u_neg`` the energies ``[B]`` of
    the positives and negatives (the trainer's ``e_pos``/``e_neg`` and the divergence guard read
    them); ``metrics`` any further scalars (0-d tensors or floats) to log each iteration under
    their names (e.g. ``{"ce": ..., "acc": ...}``).
    """

    loss: Tensor
    u_pos: Tensor
    u_neg: Tensor
    metrics: dict[str, Any] = field(default_factory=dict)
    #: Examples passed forward and backward through the energy by the objective (the compute
    #: axis); ``None``: one pass over ``x_pos`` and ``x_neg`` (``len(x_pos) + len(x_neg)``).
    grad_evals: int | None = None


class Objective(Component):
    """The loss of one learning iteration: ``objective(energy, x_pos, x_neg, labels=) ->
    ObjectiveOutput``.

    ``energy`` is the function to differentiate (the DDP-wrapped energy during training: call it
    once on everything it needs, e.g. ``energy(torch.cat([x_pos, x_neg]))``, so DDP reduces
    gradients once), ``x_pos`` the (noised) data batch, ``x_neg`` the chains' end states,
    ``labels`` the batch's labels when the objective :attr:`needs_labels` (else ``None``).
    ``train_step`` calls ``backward(output.loss)`` and steps the optimizer; an objective never
    does either. The built-in ``ml`` is the papers' ``mean U(x+) − mean U(x−)``.
    """

    kind = "objective"
    #: Whether the objective needs the data's labels (the trainer refuses unlabelled data).
    needs_labels: ClassVar[bool] = False

    def __init__(self, config: Any):
        self.config = config

    def __call__(self, energy: Any, x_pos: Tensor, x_neg: Tensor, *,
                 labels: Tensor | None = None) -> ObjectiveOutput:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# plugin options
# --------------------------------------------------------------------------------------------
class Options(Component):
    """A plugin's own per-run settings: the ``[plugins.<name>]`` table of the run document.

    Register a subclass with ``name`` (the table's name, usually the plugin's) and ``Config`` (a
    frozen keyword-only dataclass built with :func:`ebmkit.param`). The run document then has
    ``[plugins.<name>]``; ``--set plugins.<name>.KEY=VALUE``, ``run.toml``, ``describe``,
    :class:`~ebmkit.RunConfig` and resume treat it like ``[train]``. The plugin reads its values
    from ``config.plugin(name)`` (a ``Config`` instance) in its hooks and callbacks.
    ``resumable`` names the keys a resumed run may change (e.g. how often a metric is logged).
    """

    kind = "options"
    resumable: ClassVar[frozenset[str]] = frozenset()


@dataclass(frozen=True)
class Preset:
    """A named run configuration (a TOML document) shipped by a plugin."""

    name: str
    summary: str
    path: Path

    kind = "preset"

    @classmethod
    def from_dir(cls, directory: Path) -> list[Preset]:
        """The presets of ``directory/*.toml``, sorted by name; each file's first line
        ``# <summary>`` is its summary. Plugins ship theirs this way."""
        out = []
        for path in sorted(Path(directory).glob("*.toml")):
            first = path.read_text().splitlines()[:1]
            summary = first[0].lstrip("#").strip() if first and first[0].startswith("#") else ""
            out.append(cls(path.stem, summary, path))
        return out

    def read(self) -> dict[str, dict[str, Any]]:
        import tomllib

        with open(self.path, "rb") as f:
            return tomllib.load(f)


def classes_of(energy: Any) -> int | None:
    """The number of classes of a conditional energy (its ``n_classes``: it takes
    ``forward(x, y=None)``), ``None`` for an unconditional one. Any ``nn.Module`` may declare it;
    ``DistributedDataParallel`` (the function an objective is given in training) is looked
    through to the module it wraps."""
    if isinstance(energy, torch.nn.parallel.DistributedDataParallel):
        energy = energy.module
    k = getattr(energy, "n_classes", None)
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise TypeError(f"an energy's n_classes must be a positive int, got {k!r}")
    return int(k)


KINDS: dict[str, type[Component]] = {
    "energy": Energy,
    "sampler": Sampler,
    "initializer": Initializer,
    "evaluator": Evaluator,
    "dataset": DataSource,
    "objective": Objective,
    "options": Options,
}
