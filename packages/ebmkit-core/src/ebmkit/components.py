"""The five component kinds and their contracts.

Conventions (one everywhere): an energy ``U`` maps a batch ``[B, ...]`` to ``[B]``; lower is
more probable; ``p(x) ∝ exp(-U(x) / T)``. Image data lives in ``[-1, 1]``.

Every registrable class carries ``name`` (its registry key), ``summary`` (one line for
``ebmkit list``) and ``Config`` (a frozen keyword-only dataclass built with
:func:`ebmkit.config.param`). The kind is read from the base class.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover
    from torch.utils.data import Dataset


@dataclass(frozen=True, kw_only=True)
class NoParams:
    """A config with no parameters."""


class Component:
    """Base of every registrable class."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Config: ClassVar[type] = NoParams

    @classmethod
    def default_config(cls) -> Any:
        from .config import build

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


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Temporarily stop ``module``'s parameters from requiring gradients (no weight-grad work,
    nothing accumulated into ``.grad`` while sampling)."""
    ps = [p for p in module.parameters() if p.requires_grad]
    for p in ps:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in ps:
            p.requires_grad_(True)


def energy_and_grad(
    energy: nn.Module, x: Tensor, *, temperature: float = 1.0, create_graph: bool = False
) -> tuple[Tensor, Tensor]:
    """``(U(x)/T, ∇ₓ U(x)/T)``: one forward and one input-gradient.

    With ``create_graph=False`` both results are detached (the sampling hot path). With
    ``create_graph=True`` both results stay differentiable (second-order autograd), for
    reconstruction and flow densities; if ``x`` does not require grad, a new leaf is made from it
    (``x`` itself is never modified).
    """
    with torch.enable_grad():
        if create_graph:
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
        else:
            xg = x.detach().requires_grad_(True)
        u = energy(xg)
        if temperature != 1.0:
            u = u / temperature
        (g,) = torch.autograd.grad(u.sum(), xg, create_graph=create_graph)
    if create_graph:
        return u, g
    return u.detach(), g


def chain_grad_norm(g: Tensor) -> Tensor:
    """Per-chain ‖g‖₂ over all non-batch dimensions: ``[B, ...] -> [B]``.

    Reduces in place of flattening, so a channels-last gradient is not copied.
    """
    if g.ndim == 1:
        return g.abs()
    return torch.linalg.vector_norm(g, dim=tuple(range(1, g.ndim)))


def chain_sum(t: Tensor) -> Tensor:
    """Per-chain sum over all non-batch dimensions: ``[B, ...] -> [B]``."""
    return t.sum(dim=tuple(range(1, t.ndim))) if t.ndim > 1 else t


def randn_like_on(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """``N(0, I)`` noise shaped and typed like ``x``, drawn from ``generator``.

    The draw is made in the standard (contiguous) layout, so the same seed gives the same noise
    whatever layout the chains run in. A generator on another device than ``x`` (a CPU
    generator for CUDA chains) draws on its own device and the draw is moved.
    """
    dev = generator.device if generator is not None else x.device
    z = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype)
    return z if z.device == x.device else z.to(x.device)


def rand_chains(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """One ``Uniform[0, 1)`` draw per chain (``[B]``), for Metropolis tests."""
    dev = generator.device if generator is not None else x.device
    r = torch.rand(x.shape[0], generator=generator, device=dev, dtype=x.dtype)
    return r.to(x.device)


def _memory_format_of(x: Tensor) -> torch.memory_format:
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


# --------------------------------------------------------------------------------------------
# sampler
# --------------------------------------------------------------------------------------------
@dataclass
class ChainState:
    """What one step needs, cached so nothing is recomputed.

    ``energy`` and ``grad`` are ``U(x)/T`` and its gradient at ``x`` (MALA and HMC reuse them for
    the next proposal). ``extra`` holds sampler-specific tensors (momentum, adapted step size).
    """

    x: Tensor
    energy: Tensor
    grad: Tensor
    extra: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class StepInfo:
    """Per-chain information about one step; producing it needs no host sync."""

    grad_norm: Tensor  # [B] ‖∇U‖₂ at the start of the step (per chain) -> v_t
    energy: Tensor  # [B] energy after the step
    accepted: Tensor | None = None  # [B] bool, MH samplers only
    accept_prob: Tensor | None = None  # [B] min(1, exp(log α)), MH samplers only
    divergent: Tensor | None = None  # [B] bool: non-finite proposal/energy


@dataclass
class ChainResult:
    """A whole chain's outcome: final states plus statistics aggregated over the steps."""

    x: Tensor  # [B, ...] final states
    energy: Tensor  # [B] U(x_K)/T
    grad_norm: Tensor  # scalar: mean over steps and chains of ‖∇U‖₂ (this is v_t)
    accept_rate: Tensor | None  # scalar, MH samplers only (post-warm-up steps when adapting)
    steps: int
    per_step_grad_norm: Tensor | None = None  # [K] when record=True
    per_step_energy: Tensor | None = None  # [K] mean energy per step when record=True
    divergent: Tensor | None = None  # [B] bool, any non-finite step
    per_chain_grad_norm: Tensor | None = None  # [B] mean over steps of ‖∇U‖₂
    per_chain_accept_rate: Tensor | None = None  # [B], MH samplers only
    state: ChainState | None = None  # final state (continue with `step`; adapted step size)


MEMORY_FORMATS = ("auto", "preserve", "channels_last")


class Sampler(Component):
    """Runs MCMC chains on an energy.

    Contract: ``init(energy, x0) -> ChainState``; ``step(energy, state, generator=) ->
    (ChainState, StepInfo)``; ``run(energy, x0, steps) -> ChainResult``. Samplers never write
    gradients into the energy's parameters, keep no graph between steps (unless
    ``differentiable=True``), honour ``generator``, and keep ``x0``'s device and dtype.
    ``noise=False`` makes the chain deterministic (the short-run generator ``x = M_θ(z)``).

    Optional config fields the shared machinery reads: ``temperature`` (T), ``steps`` (K),
    ``adapt_steps`` (warm-up length; acceptance is reported over the steps after it) and
    ``memory_format`` (``auto``/``preserve``/``channels_last``: the layout chains run in).
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
    def temperature(self) -> float:
        return float(getattr(self.config, "temperature", 1.0))

    @property
    def default_steps(self) -> int:
        return int(getattr(self.config, "steps", 100))

    @property
    def warmup_steps(self) -> int:
        return int(getattr(self.config, "adapt_steps", 0) or 0)

    def chain_layout(self, x0: Tensor) -> torch.memory_format:
        """The memory format chains run in (``config.memory_format``; ``auto`` = channels-last
        for 4-D states on the CPU, where oneDNN convolutions are faster in it)."""
        mf = getattr(self.config, "memory_format", "preserve")
        if x0.ndim != 4 or mf == "preserve":
            return _memory_format_of(x0)
        if mf == "channels_last" or (mf == "auto" and x0.device.type == "cpu"):
            return torch.channels_last
        return _memory_format_of(x0)

    def prepare(self, x0: Tensor, *, differentiable: bool = False) -> Tensor:
        """The chains' own copy of ``x0`` in the run layout (``x0`` is never written to)."""
        fmt = self.chain_layout(x0)
        if differentiable:
            return x0 if _memory_format_of(x0) == fmt else x0.contiguous(memory_format=fmt)
        return x0.detach().clone(memory_format=fmt)

    @staticmethod
    def restore_layout(x: Tensor, like: Tensor) -> Tensor:
        fmt = _memory_format_of(like)
        return x if _memory_format_of(x) == fmt else x.contiguous(memory_format=fmt)

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


class ChainStats:
    """Accumulates :class:`StepInfo` records on the device (no host sync) into a
    :class:`ChainResult`. Samplers with their own fused loop use it too."""

    def __init__(self, x0: Tensor, *, steps: int, warmup: int = 0, record: bool = False):
        b, dev = x0.shape[0], x0.device
        self.steps, self.record = steps, record
        # acceptance counts after the warm-up (all steps when the warm-up covers the run)
        self.accept_from = warmup if steps > warmup else 0
        self.i = 0
        self.gsum = torch.zeros(b, device=dev, dtype=torch.float32)
        self.asum: Tensor | None = None
        self.div = torch.zeros(b, device=dev, dtype=torch.bool)
        self.rec_g: list[Tensor] = []
        self.rec_u: list[Tensor] = []

    def add(self, info: StepInfo, *, count: bool = True) -> None:
        gn = info.grad_norm.detach().float()
        self.gsum += gn
        if info.accepted is not None and self.i >= self.accept_from:
            a = info.accepted.detach().float()
            self.asum = a if self.asum is None else self.asum + a
        if info.divergent is not None:
            self.div |= info.divergent
        if self.record and count:
            self.rec_g.append(gn.mean())
            self.rec_u.append(info.energy.detach().float().mean())
        self.i += 1

    def result(self, x: Tensor, energy: Tensor, *, state: ChainState | None = None) -> ChainResult:
        n = max(self.i, 1)
        per_chain_g = self.gsum / n
        n_acc = max(self.i - self.accept_from, 1)
        per_chain_a = None if self.asum is None else self.asum / n_acc
        return ChainResult(
            x=x,
            energy=energy,
            grad_norm=per_chain_g.mean(),
            accept_rate=None if per_chain_a is None else per_chain_a.mean(),
            steps=self.steps,
            per_step_grad_norm=torch.stack(self.rec_g) if self.rec_g else None,
            per_step_energy=torch.stack(self.rec_u) if self.rec_u else None,
            divergent=self.div,
            per_chain_grad_norm=per_chain_g,
            per_chain_accept_rate=per_chain_a,
            state=state,
        )


# --------------------------------------------------------------------------------------------
# initializer
# --------------------------------------------------------------------------------------------
class Initializer(Component):
    """Where chains start. ``cls(config, shape)``; ``sample(n, data=, generator=, device=)``.

    ``data`` is the current positive batch (for CD / data-initialised buffers). ``update`` gets
    the chains' end states (persistent initialisers write them back). ``state_dict`` holds
    tensors only, so it can be stored with safetensors.
    """

    kind = "initializer"

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

    def open(self, *, split: str = "train") -> Dataset:
        raise NotImplementedError

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
class EBM:
    """A trained model as evaluators see it: the energy plus how to sample from it."""

    energy: Energy
    sampler: Sampler
    initializer: Initializer
    steps: int  # K used for sampling
    meta: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def sample(self, n: int, *, steps: int | None = None, generator: torch.Generator | None = None,
               noise: bool = True, batch_size: int = 256) -> Tensor:
        device = next(self.energy.parameters()).device
        outs = []
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            x0 = self.initializer.sample(m, generator=generator, device=device)
            res = self.sampler.run(self.energy, x0, self.steps if steps is None else steps,
                                   generator=generator, noise=noise)
            outs.append(res.x)
        return torch.cat(outs)


@dataclass
class EvalResult:
    metrics: dict[str, float] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)


class Evaluator(Component):
    """Turns a model (and data) into numbers and pictures: ``evaluate(model, data, out_dir)``."""

    kind = "evaluator"

    def __init__(self, config: Any):
        self.config = config

    def evaluate(self, model: EBM, data: DataSource | None, out_dir: Path) -> EvalResult:
        raise NotImplementedError


KINDS: dict[str, type[Component]] = {
    "energy": Energy,
    "sampler": Sampler,
    "initializer": Initializer,
    "evaluator": Evaluator,
    "dataset": DataSource,
}
