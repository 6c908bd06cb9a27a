"""Parallel tempering (replica exchange) around any registered sampler.

Each chain of the batch ``[B, ...]`` gets R replicas at inverse temperatures
``β_1 = 1 > β_2 > … > β_R > 0``; replica r samples ``π_r(x) ∝ exp(−β_r U(x)/T)`` with the *base*
transition (``mala`` by default, any registered sampler with a ``temperature`` parameter). Every
``swap_every`` base steps, adjacent replicas ``(r, r+1)`` of the same chain propose to exchange
their states, the even pairs (1-2, 3-4, …) and the odd pairs (2-3, 4-5, …) in alternate rounds,
accepted per chain with the Metropolis probability

    min(1, exp((β_r − β_{r+1})(U(x_r) − U(x_{r+1})) / T)),

which leaves the product ``Π_r π_r`` invariant (hot replicas cross energy barriers; swaps carry
what they found down to β = 1). Only the β = 1 replica is the sample: ``run(energy, x0[B, ...])``
returns B states, and ``ChainState.x`` / ``.energy`` / ``.grad`` are the β = 1 replica's; the
whole ensemble (B·R chains, replica-major: rows ``r·B … r·B + B − 1`` are replica r) lives in
``ChainState.extra`` under ``pt.*`` keys, replica r's base-sampler extras under ``base{r}.*``
(:meth:`ParallelTempering.replica_states` gives all replicas' states in x).

**How the base runs the replicas.** One base sampler instance steps each replica's B chains
(R calls of ``base.step`` per step, each with its own base state, so a base that adapts its step
size adapts one per replica), at the run's temperature T, on the replica's *tempered* energy
``W_r(y) = β_r·U(y / √β_r)`` of the coordinates ``y = √β_r·x`` (``rescale = true``, the
default) or ``W_r(x) = β_r·U(x)`` (``rescale = false``). Either way the replica's law in x is
``π_r``. The rescaling is a constant-Jacobian change of variables: one base step of size ε
moves replica r by ε/√β_r — the natural scale of ``exp(−β U/T)``, which is √(1/β) times wider
than the target — so the hot replicas need no step sizes of their own. Each ``W_r`` is an
ordinary, row-independent energy (a single ``[B·R]`` call with per-row β would break any base
that evaluates a subset of its chains, as ``nuts`` does). Gradients: the base's, for each of
the R replicas; swaps use the cached energies and cost none
(:meth:`ParallelTempering.gradient_evals`). A swap exchanges the replicas' states — position,
cached energy and gradient converted to the other β, and the base's per-chain extras such as a
momentum (``[B, ...]`` tensors every replica has); per-replica scalars (an adapted step size)
stay with their replica.

**Which base.** The sampler's constructor gets only its config (``cls(config)``, as every
component), so ``base`` names a registered sampler that is looked up in a registry built then
(:func:`ebmkit.build_registry`: built-ins and installed plugins), the way :meth:`ebmkit.EBM.component`
builds components. Code that already holds a registry passes it (``registry=``), and code that
holds a configured sampler wraps it directly with :meth:`ParallelTempering.around` — no registry
involved, and any :class:`~ebmkit.Sampler` (a plugin's, a subclass) can be the base.

**Ladder.** Geometric by default (``β_r = beta_min^((r−1)/(R−1))``), or given (``betas``). With
``adapt_steps > 0`` the interior β move during the first ``adapt_steps`` base steps toward equal
swap acceptance between adjacent pairs: the log-gaps ``log β_r − log β_{r+1}`` are
``−log β_R · softmax(θ)`` (β_1 = 1 and β_R stay fixed, the order is kept), and after each swap
round ``θ_r += κ_t · a_r`` for the pairs tried, ``a_r`` their mean swap acceptance probability
over the chains and ``κ_t = (1 + t)^−0.6`` (Robbins–Monro; adding the same value to every θ_r
changes nothing, so the fixed point is equal acceptance). Exactness holds from the end of the
warm-up on.

**Reports.** ``StepInfo.accepted`` / ``accept_prob`` / ``grad_norm`` are the base step's for the
β = 1 replica; ``divergent`` is OR-ed over a chain's replicas. Swap statistics per adjacent pair
(after the ladder's warm-up): :meth:`ParallelTempering.swap_acceptance` (fraction of proposed
swaps accepted, ``[R−1]``) from a :class:`~ebmkit.ChainResult` or :class:`~ebmkit.ChainState`;
the ladder in use: :meth:`ParallelTempering.ladder`. ``run(..., record=True)`` also gives
``ChainResult.mixing``: ESS and split-R̂ of the β = 1 chains' energies over the second half of
the run (:mod:`ebmkit.mixing`), as ``longrun`` reports them.

**Exactness.** Replica exchange is exact for the product law: the β = 1 replica of a chain whose
replicas are all at their tempered laws stays at ``exp(−U/T)``, and any start converges to it —
provided the base is exact (``mala``, ``hmc``, ``nuts``); an unadjusted base (``langevin``,
``underdamped``) brings its discretisation bias. The replicas start where the chain starts (all
at ``x0``), so a short run from exact draws of the target is not exact draws of it until the hot
replicas have spread out to their laws: with the ladders suited to a barrier, the first few
dozen steps are a warm-up. :meth:`ParallelTempering.init_replicas` starts each replica where
you choose (at draws of its law, or where an earlier run left it). ``noise=False`` runs the base's deterministic map with no swaps (the
β = 1 replica is then exactly the base's noise-free chain).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from ebmkit.errors import ConfigError
from ebmkit.interfaces import Sampler
from ebmkit.mcmc import MEMORY_FORMATS, ChainResult, ChainState, StepInfo
from ebmkit.params import param, params, parse_override
from torch import Tensor, nn

_MEMORY_HELP = (
    "Memory layout the chains run in. auto = channels-last for image batches on the CPU "
    "(faster oneDNN convolutions), otherwise the input's; preserve = the input's layout; "
    "channels_last = always for 4-D states. Results come back in the input's layout."
)
#: Robbins–Monro gain exponent of the ladder adaptation: κ_t = (1 + t)^−0.6.
LADDER_GAIN_EXPONENT = 0.6


@dataclass(frozen=True, kw_only=True)
class ParallelTemperingConfig:
    steps: int = param(100, "Base steps K per chain (each replica takes every one; swaps cost no "
                            "gradients).", min=0)
    replicas: int = param(4, "Replicas R per chain (inverse temperatures in the ladder); the "
                             "state holds B x R chains.", min=1)
    beta_min: float = param(0.1, "Smallest inverse temperature beta_R of the geometric ladder "
                                 "beta_r = beta_min^((r-1)/(R-1)).",
                            min=0.0, max=1.0, min_exclusive=True)
    betas: tuple[float, ...] | None = param(
        None, "The ladder itself (1 = beta_1 > beta_2 > ... > 0); overrides replicas and "
              "beta_min.", min=0.0, max=1.0, min_exclusive=True)
    swap_every: int = param(1, "Propose swaps between adjacent replicas every swap_every base "
                               "steps (even pairs and odd pairs in alternate rounds).", min=1)
    base: str = param("mala", "Registered sampler run in every replica (one with a temperature "
                              "parameter: mala, hmc, nuts, ...).")
    base_config: tuple[str, ...] = param(
        (), "KEY=VALUE parameters of the base sampler, e.g. [step_size=0.1, adapt_steps=50]; its "
            "defaults otherwise. Its temperature is this sampler's.")
    step_size: float | None = param(
        None, "Shortcut for the base's step_size (base_config must not set it too); None = the "
              "base's own.", min=0.0, min_exclusive=True)
    rescale: bool = param(True, "Run replica r in coordinates sqrt(beta_r)*x, so a base step of "
                                "size eps moves it by eps/sqrt(beta_r) (the scale of "
                                "exp(-beta U/T)); false = the same step in every replica.")
    adapt_steps: int = param(0, "Warm-up base steps during which the interior betas move toward "
                                "equal swap acceptance between adjacent pairs (beta_1 = 1 and "
                                "beta_R fixed); 0 = a fixed ladder.", min=0)
    temperature: float = param(1.0, "Temperature T: the beta = 1 replica samples "
                                    "p(x) ∝ exp(-U(x)/T), replica r exp(-beta_r U(x)/T).",
                               min=0.0, min_exclusive=True)
    memory_format: str = param("auto", _MEMORY_HELP, choices=MEMORY_FORMATS)

    def __post_init__(self):
        if self.betas is not None:
            b = self.betas
            if len(b) < 1 or b[0] != 1.0:
                raise ValueError(f"betas must start at 1 (the target); got {list(b)}")
            if any(b[i] <= b[i + 1] for i in range(len(b) - 1)):
                raise ValueError(f"betas must decrease strictly; got {list(b)}")
        for text in self.base_config:
            if "=" not in text:
                raise ValueError(f"base_config entries are KEY=VALUE; got {text!r}")

    @property
    def ladder(self) -> list[float]:
        """The configured inverse temperatures ``[β_1 = 1, …, β_R]``."""
        if self.betas is not None:
            return [float(b) for b in self.betas]
        return geometric_ladder(self.replicas, self.beta_min)


def geometric_ladder(replicas: int, beta_min: float) -> list[float]:
    """``β_r = beta_min^((r − 1)/(R − 1))``, r = 1..R: equal ratios between neighbours (``[1]``
    for one replica)."""
    if replicas == 1:
        return [1.0]
    return [beta_min ** (r / (replicas - 1)) for r in range(replicas)]


def swap_log_ratio(beta_i: Tensor | float, beta_j: Tensor | float, u_i: Tensor | float,
                   u_j: Tensor | float, temperature: float = 1.0) -> Tensor:
    """Log Metropolis ratio of exchanging the states of replicas i and j (energies ``U_i``,
    ``U_j``, unscaled): ``(β_i − β_j)(U_i − U_j) / T``."""
    out = (torch.as_tensor(beta_i) - torch.as_tensor(beta_j)) * (
        torch.as_tensor(u_i) - torch.as_tensor(u_j)) / temperature
    return out


class _Tempered(nn.Module):
    """A replica's energy for the base: ``β·U(y·s)`` (``s = 1/√β``, or 1 without rescaling).
    Row-independent, like any energy: a base may evaluate any subset of its chains."""

    def __init__(self, energy: nn.Module, beta: Tensor, scale: Tensor | None):
        super().__init__()
        self.energy = energy
        self.beta, self.scale = beta, scale

    def forward(self, y: Tensor) -> Tensor:
        x = y if self.scale is None else y * self.scale.to(y.dtype)
        u = self.energy(x)
        return u * self.beta.to(u.dtype)


class ParallelTempering(Sampler):
    """Replica exchange over a ladder of inverse temperatures around a base sampler."""

    name = "parallel-tempering"
    summary = ("Parallel tempering (replica exchange) over a ladder of inverse temperatures, "
               "any registered base sampler; returns the beta = 1 chains.")
    Config = ParallelTemperingConfig
    exact = True
    #: The β = 1 replica's move is exact only *jointly* with hot replicas that are already at
    #: their tempered laws; one transition from fresh replicas (all at x) does not leave the
    #: target invariant. So it cannot be a stateless kernel inside AIS (which refuses it): on
    #: the 8-mode ring it put log Z 0.26 nats (12 standard errors) too high at T = 100.
    invariant_alone = False

    def __init__(self, config: ParallelTemperingConfig, *, base: Sampler | None = None,
                 registry: Any = None):
        super().__init__(config)
        if base is None:
            base = self._make_base(config, registry)
        elif isinstance(base, ParallelTempering):
            raise ConfigError("parallel-tempering: the base cannot itself be parallel-tempering")
        elif not math.isclose(base.temperature, float(config.temperature)):
            raise ConfigError(f"parallel-tempering: the base runs at temperature "
                              f"{base.temperature}, the ladder at {config.temperature}; give "
                              "them the same T")
        self.base = base
        self.betas = config.ladder

    # --- construction ------------------------------------------------------------------------
    @classmethod
    def around(cls, base: Sampler, **options: Any) -> ParallelTempering:
        """Parallel tempering around a configured sampler instance, without a registry::

            pt = ParallelTempering.around(mala, replicas=6, beta_min=0.05)

        ``options`` are this sampler's config keys (validated as a run file's); ``base`` and
        ``temperature`` are taken from the instance (``base_config`` and ``step_size`` do not
        apply: the instance is configured)."""
        from ebmkit.params import build

        for key in ("base", "base_config", "step_size", "temperature"):
            if key in options:
                raise ConfigError(f"parallel-tempering.around: '{key}' comes from the base "
                                  "sampler instance")
        values = {**options, "base": base.name or type(base).__name__,
                  "temperature": base.temperature}
        return cls(build(cls.Config, values, where="sampler"), base=base)

    @staticmethod
    def _make_base(config: ParallelTemperingConfig, registry: Any) -> Sampler:
        if config.base == ParallelTempering.name:
            raise ConfigError("sampler.base: parallel-tempering cannot be its own base")
        if registry is None:
            from ebmkit.plugins import build_registry

            registry = build_registry()
        cls = registry.get("sampler", config.base)
        names = {p.name for p in params(cls.Config)}
        values: dict[str, Any] = {}
        for text in config.base_config:
            _, key, value = parse_override(text, section="base_config", flag="sampler.base_config")
            values[key] = value
        if "temperature" not in names:
            raise ConfigError(f"sampler.base: '{config.base}' has no temperature parameter, so "
                              "it cannot run the replicas of a temperature ladder")
        if "temperature" in values:
            raise ConfigError("sampler.base_config: the base's temperature is the ladder's "
                              "(set sampler.temperature)")
        if config.step_size is not None:
            if "step_size" in values:
                raise ConfigError("sampler: set step_size or base_config step_size=..., not both")
            if "step_size" not in names:
                raise ConfigError(f"sampler.step_size: the base '{config.base}' has no step_size")
            values["step_size"] = config.step_size
        values["temperature"] = config.temperature
        if "memory_format" in names:
            values["memory_format"] = "preserve"  # the layout is chosen once, by this sampler
        return registry.create("sampler", config.base, values)

    # --- interface ---------------------------------------------------------------------------
    @property
    def replicas(self) -> int:
        return len(self.betas)

    @property
    def grad_coef(self) -> float | None:
        """The base's (the β = 1 replica moves as the base's chain does)."""
        return self.base.grad_coef

    @property
    def warmup_steps(self) -> int:
        """The longer of the ladder's warm-up and the base's own step-size warm-up."""
        return max(int(self.config.adapt_steps), int(self.base.warmup_steps))

    def gradient_evals(self, steps: int) -> int:
        """R times the base's: every replica takes every base step (swaps cost none)."""
        return self.replicas * int(self.base.gradient_evals(steps))

    @staticmethod
    def swap_acceptance(result: ChainResult | ChainState) -> Tensor:
        """Fraction of the proposed swaps accepted per adjacent pair ``(β_r, β_{r+1})``,
        ``[R − 1]``, over the swap rounds after the ladder's warm-up (NaN for a pair never
        tried)."""
        state = result.state if isinstance(result, ChainResult) else result
        if state is None:
            raise ValueError("swap_acceptance needs the run's final state (result.state)")
        acc, tried = state.extra["pt.swap_accepted"], state.extra["pt.swap_tried"]
        return torch.where(tried > 0, acc / tried.clamp(min=1), torch.full_like(acc, math.nan))

    @staticmethod
    def ladder(result: ChainResult | ChainState) -> Tensor:
        """The inverse temperatures in use ``[R]`` (after any adaptation)."""
        state = result.state if isinstance(result, ChainResult) else result
        if state is None:
            raise ValueError("ladder needs the run's final state (result.state)")
        return state.extra["pt.beta"]

    # --- pieces ------------------------------------------------------------------------------
    def _scales(self, beta: Tensor) -> Tensor | None:
        """``s_r``: x = y·s_r (``1/√β_r``), or ``None`` without rescaling."""
        return beta.rsqrt() if self.config.rescale else None

    def _tempered(self, energy: nn.Module, beta: Tensor, r: int) -> _Tempered:
        s = self._scales(beta)
        return _Tempered(energy, beta[r], None if s is None else s[r])

    def _retarget(self, y: Tensor, u: Tensor, g: Tensor, beta_from: Tensor, beta_to: Tensor
                  ) -> tuple[Tensor, Tensor, Tensor]:
        """Replica states (coordinates, cached ``W/T``, its gradient) moved, at the same x, from
        inverse temperature ``beta_from`` to ``beta_to`` (per row)."""
        ratio = beta_to / beta_from
        view = (-1,) + (1,) * (y.ndim - 1)
        if self.config.rescale:  # y = √β x, W = β U, ∇_y W = √β ∇U
            c = ratio.sqrt().to(y.dtype).view(view)
            return y * c, u * ratio.to(u.dtype), g * c
        return y, u * ratio.to(u.dtype), g * ratio.to(g.dtype).view(view)

    @staticmethod
    def _uniform(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
        """Uniforms drawn on the generator's device, then moved (the RNG rules of ebmkit.mcmc)."""
        dev = generator.device if generator is not None else like.device
        r = torch.rand(shape, generator=generator, device=dev, dtype=like.dtype)
        return r if r.device == like.device else r.to(like.device)

    # --- chains ------------------------------------------------------------------------------
    def init(self, energy: nn.Module, x0: Tensor, *, differentiable: bool = False) -> ChainState:
        """Every replica of chain b starts at ``x0[b]``."""
        return self.init_replicas(energy, x0.unsqueeze(0).expand(self.replicas, *x0.shape),
                                  differentiable=differentiable)

    def init_replicas(self, energy: nn.Module, xs: Tensor, *,
                      differentiable: bool = False) -> ChainState:
        """Start replica r of chain b at ``xs[r, b]`` (``[R, B, ...]``): e.g. at draws of the
        tempered laws, or where an earlier run left them (:meth:`replica_states`)."""
        r = self.replicas
        if xs.ndim < 2 or xs.shape[0] != r:
            raise ValueError(f"init_replicas: expected [R={r}, B, ...] states; got {tuple(xs.shape)}")
        dev = xs.device
        beta = torch.tensor(self.betas, dtype=xs.dtype, device=dev)
        s = self._scales(beta)
        starts = [xs[i] if s is None else xs[i] / s[i] for i in range(r)]
        states = [self.base.init(self._tempered(energy, beta, i), starts[i],
                                 differentiable=differentiable) for i in range(r)]
        cpu = torch.device("cpu")
        extra = {
            "pt.beta": beta,
            "pt.steps": torch.zeros((), dtype=torch.int64, device=cpu),  # host-side counters:
            "pt.rounds": torch.zeros((), dtype=torch.int64, device=cpu),  # no device syncs
            "pt.swap_accepted": torch.zeros(max(r - 1, 0), dtype=torch.float32, device=dev),
            "pt.swap_tried": torch.zeros(max(r - 1, 0), dtype=torch.float32, device=dev),
        }
        if int(self.config.adapt_steps) > 0 and r > 2:
            gaps = -torch.diff(beta.double().log())
            extra["pt.theta"] = gaps.log().to(device=dev, dtype=torch.float32)
        return self._pack(states, extra)

    def replica_states(self, state: ChainState) -> Tensor:
        """Every replica's state in the target's coordinates, ``[R, B, ...]`` (row 0 is
        ``state.x``)."""
        beta, y = state.extra["pt.beta"], state.extra["pt.y"]
        r = beta.shape[0]
        s = self._scales(beta)
        xs = y.reshape(r, y.shape[0] // r, *y.shape[1:])
        return xs if s is None else xs * s.view((-1,) + (1,) * (xs.ndim - 1)).to(xs.dtype)

    @staticmethod
    def _pack(states: list[ChainState], extra: dict[str, Tensor]) -> ChainState:
        """One chain state from the replicas' base states: ``pt.y/u/g`` replica-major, the
        replicas' own extras under ``base{r}.*``; x, energy, grad are the β = 1 replica's (there
        y = x: β_1 = 1, s_1 = 1)."""
        out = dict(extra)
        out["pt.y"] = torch.cat([st.x for st in states])
        out["pt.u"] = torch.cat([st.energy for st in states])
        out["pt.g"] = torch.cat([st.grad for st in states])
        for i, st in enumerate(states):
            out.update({f"base{i}.{k}": v for k, v in st.extra.items()})
        b = states[0].x.shape[0]
        return ChainState(x=out["pt.y"][:b], energy=out["pt.u"][:b], grad=out["pt.g"][:b],
                          extra=out)

    @staticmethod
    def _unpack(state: ChainState) -> tuple[list[ChainState], dict[str, Tensor]]:
        ex = state.extra
        r = ex["pt.beta"].shape[0]
        y, u, g = ex["pt.y"], ex["pt.u"], ex["pt.g"]
        b = y.shape[0] // r
        states = []
        for i in range(r):
            pre = f"base{i}."
            sl = slice(i * b, (i + 1) * b)
            states.append(ChainState(x=y[sl], energy=u[sl], grad=g[sl], extra={
                k[len(pre):]: v for k, v in ex.items() if k.startswith(pre)}))
        extra = {k: v for k, v in ex.items()
                 if k.startswith("pt.") and k not in ("pt.y", "pt.u", "pt.g")}
        return states, extra

    def step(self, energy: nn.Module, state: ChainState, *, generator=None, noise=True,
             differentiable=False):
        states, extra = self._unpack(state)
        beta = extra["pt.beta"]
        r = len(states)
        infos = []
        for i in range(r):
            states[i], info = self.base.step(self._tempered(energy, beta, i), states[i],
                                             generator=generator, noise=noise,
                                             differentiable=differentiable)
            infos.append(info)
        k = int(extra["pt.steps"]) + 1
        extra["pt.steps"] = torch.tensor(k, dtype=torch.int64)
        adapt = int(self.config.adapt_steps)
        if noise and r > 1 and k % int(self.config.swap_every) == 0:
            states, extra = self._swap_round(states, extra, generator, adapting=k <= adapt)
        if k == adapt:  # swap statistics cover the steps after the ladder's warm-up
            extra["pt.swap_accepted"] = torch.zeros_like(extra["pt.swap_accepted"])
            extra["pt.swap_tried"] = torch.zeros_like(extra["pt.swap_tried"])
        out = self._pack(states, extra)
        div = [i.divergent for i in infos]
        divergent = None if any(d is None for d in div) else torch.stack(div).any(0)
        first = infos[0]
        return out, StepInfo(grad_norm=first.grad_norm, energy=out.energy,
                             accepted=first.accepted, accept_prob=first.accept_prob,
                             divergent=divergent)

    def _swap_round(self, states: list[ChainState], extra: dict[str, Tensor],
                    generator: torch.Generator | None, adapting: bool
                    ) -> tuple[list[ChainState], dict[str, Tensor]]:
        """Propose exchanges between the pairs (r, r+1) of this round's parity, per chain."""
        beta = extra["pt.beta"]
        r, b = len(states), states[0].x.shape[0]
        rounds = int(extra["pt.rounds"])
        extra["pt.rounds"] = torch.tensor(rounds + 1, dtype=torch.int64)
        dev = states[0].x.device
        lo = torch.arange(rounds % 2, r - 1, 2, device=dev)
        if lo.numel() == 0:
            return states, extra
        y = torch.cat([st.x for st in states])
        u = torch.cat([st.energy for st in states])
        g = torch.cat([st.grad for st in states])
        beta_rows = beta.repeat_interleave(b)
        big_u = (u / beta_rows.to(u.dtype)).detach().view(r, b)  # U/T of every replica
        log_a = swap_log_ratio(beta[lo, None], beta[lo + 1, None], big_u[lo], big_u[lo + 1])
        prob = torch.nan_to_num(log_a.clamp(max=0.0).exp(), nan=0.0)  # [pairs, B]
        acc = self._uniform(tuple(prob.shape), y, generator) < prob
        perm = torch.arange(r, device=dev).repeat_interleave(b).view(r, b).clone()
        perm[lo] = torch.where(acc, lo[:, None] + 1, lo[:, None])
        perm[lo + 1] = torch.where(acc, lo[:, None], lo[:, None] + 1)
        src = (perm * b + torch.arange(b, device=dev)).reshape(-1)  # the row each row receives
        y, u, g = self._retarget(y.index_select(0, src), u.index_select(0, src),
                                 g.index_select(0, src), beta_rows.index_select(0, src), beta_rows)
        extras = self._swap_extras([st.extra for st in states], src, b)
        extra["pt.swap_accepted"] = extra["pt.swap_accepted"].index_add(
            0, lo, acc.float().mean(1))
        extra["pt.swap_tried"] = extra["pt.swap_tried"].index_add(
            0, lo, torch.ones(lo.shape, dtype=torch.float32, device=dev))
        if adapting and "pt.theta" in extra:
            y, u, g, extra = self._adapt_ladder(y, u, g, extra, b, lo, prob.float().mean(1),
                                                rounds)
        states = [ChainState(x=y[i * b:(i + 1) * b], energy=u[i * b:(i + 1) * b],
                             grad=g[i * b:(i + 1) * b], extra=extras[i]) for i in range(r)]
        return states, extra

    @staticmethod
    def _swap_extras(extras: list[dict[str, Tensor]], src: Tensor, b: int
                     ) -> list[dict[str, Tensor]]:
        """The base's per-chain extras (tensors ``[B, ...]`` every replica has, e.g. a momentum)
        travel with the states; the rest (a replica's step size, its adaptation) stays."""
        r = len(extras)
        out = [dict(e) for e in extras]
        for key, v in extras[0].items():
            vs = [e.get(key) for e in extras]
            if any(t is None or t.ndim == 0 or t.shape[0] != b or t.shape != v.shape for t in vs):
                continue
            moved = torch.cat(vs).index_select(0, src)
            for i in range(r):
                out[i][key] = moved[i * b:(i + 1) * b]
        return out

    def _adapt_ladder(self, y: Tensor, u: Tensor, g: Tensor, extra: dict[str, Tensor], b: int,
                      lo: Tensor, a: Tensor, t: int
                      ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """One Robbins–Monro step on the ladder's log-gaps (β_1 and β_R fixed)."""
        beta = extra["pt.beta"]
        theta = extra["pt.theta"].index_add(0, lo, a * (1.0 + t) ** -LADDER_GAIN_EXPONENT)
        span = -beta[-1].double().log()
        gaps = span * torch.softmax(theta.double(), 0)
        log_beta = torch.cat([gaps.new_zeros(1), -torch.cumsum(gaps, 0)])
        new_beta = log_beta.exp().to(beta.dtype)
        new_beta[0], new_beta[-1] = 1.0, beta[-1]
        y, u, g = self._retarget(y, u, g, beta.repeat_interleave(b), new_beta.repeat_interleave(b))
        extra["pt.theta"], extra["pt.beta"] = theta, new_beta
        return y, u, g, extra
