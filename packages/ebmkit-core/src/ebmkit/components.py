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
    ``create_graph=True`` ``x`` must already be part of a graph (or require grad) and both
    results stay differentiable (second-order autograd), for reconstruction and flow densities.
    """
    with torch.enable_grad():
        if create_graph:
            xg = x if x.requires_grad else x.requires_grad_(True)
        else:
            xg = x.detach().requires_grad_(True)
        u = energy(xg)
        if temperature != 1.0:
            u = u / temperature
        (g,) = torch.autograd.grad(u.sum(), xg, create_graph=create_graph)
    if create_graph:
        return u, g
    return u.detach(), g


# --------------------------------------------------------------------------------------------
# sampler
# --------------------------------------------------------------------------------------------
@dataclass
class ChainState:
    """What one step needs, cached so nothing is recomputed.

    ``energy`` and ``grad`` are ``U(x)/T`` and its gradient at ``x`` (MALA and HMC reuse them for
    the next proposal). ``extra`` holds sampler-specific tensors (momentum, per-chain step).
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
    accept_rate: Tensor | None  # scalar, MH samplers only
    steps: int
    per_step_grad_norm: Tensor | None = None  # [K] when record=True
    per_step_energy: Tensor | None = None  # [K] mean energy per step when record=True
    divergent: Tensor | None = None  # [B] bool, any non-finite step


class Sampler(Component):
    """Runs MCMC chains on an energy.

    Contract: ``init(energy, x0) -> ChainState``; ``step(energy, state, generator=) ->
    (ChainState, StepInfo)``; ``run(energy, x0, steps) -> ChainResult``. Samplers never write
    gradients into the energy's parameters, keep no graph between steps (unless
    ``differentiable=True``), honour ``generator``, and keep ``x0``'s device and dtype.
    ``noise=False`` makes the chain deterministic (the short-run generator ``x = M_θ(z)``).
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
        with ctx:
            state = self.init(energy, x0, differentiable=differentiable)
            gsum = torch.zeros((), device=x0.device, dtype=torch.float32)
            asum = None
            div = torch.zeros(x0.shape[0], device=x0.device, dtype=torch.bool)
            rec_g, rec_u = [], []
            for _ in range(steps):
                state, info = self.step(energy, state, generator=generator, noise=noise,
                                        differentiable=differentiable)
                gm = info.grad_norm.detach().float().mean()
                gsum = gsum + gm
                if info.accepted is not None:
                    a = info.accepted.float().mean()
                    asum = a if asum is None else asum + a
                if info.divergent is not None:
                    div = div | info.divergent
                if record:
                    rec_g.append(gm)
                    rec_u.append(info.energy.detach().float().mean())
        n = max(steps, 1)
        grad_norm = gsum / n if steps else chain_grad_norm(state.grad).float().mean()
        return ChainResult(
            x=state.x if differentiable else state.x.detach(),
            energy=state.energy,
            grad_norm=grad_norm,
            accept_rate=None if asum is None else asum / n,
            steps=steps,
            per_step_grad_norm=torch.stack(rec_g) if rec_g else None,
            per_step_energy=torch.stack(rec_u) if rec_u else None,
            divergent=div,
        )


def chain_grad_norm(g: Tensor) -> Tensor:
    """Per-chain ‖g‖₂ over all non-batch dimensions: ``[B, ...] -> [B]``."""
    return g.flatten(1).norm(dim=1)


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
