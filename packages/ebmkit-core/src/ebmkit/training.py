"""Maximum-likelihood learning of an EBM with MCMC (Algorithm 1 of both papers).

Two pieces:

* :func:`train_step` — one learning iteration, a plain function of the components and one data
  batch, readable top to bottom::

      x+ (+ σ noise) -> initializer -> sampler on the *unwrapped* energy -> x-
      -> objective (default ``ml``: mean U(x+) - mean U(x-)) through the (DDP-wrapped) energy
      -> optimizer -> initializer.update(x-)

* :func:`run_loop` — the loop around it: restore on resume (the run's
  :class:`~ebmkit.checkpoint.CheckpointManager`), learning-rate schedule, σ annealing, random K,
  diagnostics (one host sync per iteration, averaged across processes) sent through
  ``run.log`` and the callbacks (:mod:`ebmkit.callbacks`) that do everything else: progress,
  CSV, trackers, grids, checkpoints, divergence guard. The loop itself writes no file.

Accelerate handles devices and data parallelism: each process runs its own chains on the
unwrapped module (sampling through DDP deadlocks when the energy has buffers and would cost a
broadcast per step), only the loss forward goes through DDP.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from .datastream import batch_stream, draw
from .errors import ConfigError, EbmkitError, PluginError
from .interfaces import Initializer, Objective, Sampler
from .mcmc import ChainResult, randn_like_on
from .model import EBM, eval_mode, sampling_steps

if TYPE_CHECKING:  # pragma: no cover
    from .runconfig import RunConfig, TrainConfig


class LoopCallback(Protocol):
    """What :func:`run_loop` calls (:class:`ebmkit.Callback` implements it; declared here so that
    the loop needs nothing from the ``callbacks`` layer above it)."""

    #: Callbacks that save the run's state run after all others, so their checkpoint holds the
    #: other callbacks' state of the same iteration.
    saves_state: bool

    def on_resume(self, run: Run) -> None: ...

    def on_fit_start(self, run: Run) -> None: ...

    def on_step_end(self, run: Run, out: StepOutput) -> None: ...

    def on_log(self, run: Run, metrics: dict[str, Any], step: int) -> None: ...

    def on_fit_end(self, run: Run) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# ---------------------------------------------------------------------------------------------
# schedules (pure functions of the iteration: resume is exact)
# ---------------------------------------------------------------------------------------------
def data_noise_at(cfg: TrainConfig, it: int) -> float:
    """σ for iteration ``it``: constant until ``decay_start``, then linear to the final value."""
    span = cfg.iterations - 1 - cfg.decay_start
    if cfg.data_noise_final is None or it <= cfg.decay_start or span <= 0:
        return cfg.data_noise
    frac = min((it - cfg.decay_start) / span, 1.0)
    return cfg.data_noise + frac * (cfg.data_noise_final - cfg.data_noise)


def lr_at(cfg: TrainConfig, it: int) -> float:
    """The learning rate for iteration ``it``."""
    t = it - cfg.decay_start
    if cfg.lr_schedule == "constant" or t <= 0:
        return cfg.lr
    if cfg.lr_schedule == "exponential":
        return cfg.lr * cfg.lr_decay ** (t / cfg.lr_decay_every)
    return cfg.lr * cfg.lr_decay ** (t // cfg.lr_decay_every)


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def chain_steps(cfg: TrainConfig, sampler: Sampler, gen_cpu: torch.Generator) -> int:
    """K for one iteration: the sampler's ``steps``, or uniform on ``[steps, steps_max]``."""
    k = sampler.default_steps
    if cfg.steps_max is None:
        return k
    hi = max(cfg.steps_max, k)
    return int(torch.randint(k, hi + 1, (1,), generator=gen_cpu))


def pick_device(name: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; anything else is checked."""
    import re

    name = str(name)
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise ConfigError(f"device '{name}' is not one of auto, cpu, cuda, cuda:N, mps; "
                          "fix --device (or train.device)")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name} was asked for but CUDA is not available; use the CPU "
                          "(device='cpu', --device cpu)")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA "
                          "device(s); use cuda:0 or another index")
    if name == "mps" and not (torch.backends.mps.is_available()):
        raise ConfigError("device mps was asked for but MPS is not available; use the CPU "
                          "(device='cpu', --device cpu)")
    return name


# ---------------------------------------------------------------------------------------------
# precision
# ---------------------------------------------------------------------------------------------
PRECISIONS = ("fp32", "bf16", "auto")


def fast_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` runs bf16 matrix arithmetic natively (faster than fp32): CUDA devices
    of compute capability 8.0 or newer; CPUs with AVX512-BF16 or AMX-BF16 (read from
    ``/proc/cpuinfo``; elsewhere unknown, so False)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available()
                    and torch.cuda.get_device_capability(device)[0] >= 8)
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("flags"):
                        flags = set(line.split(":", 1)[1].split())
                        return bool({"avx512_bf16", "amx_bf16"} & flags)
        except OSError:
            return False
    return False


def resolve_precision(precision: str, device: torch.device | str, sampler: Sampler) -> str:
    """``fp32`` or ``bf16`` for a run: ``auto`` is bf16 where :func:`fast_bf16` holds and the
    sampler is not an exact MH sampler (its Metropolis test needs accurate energy differences),
    otherwise the fp32 reference."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}; fix train.precision")
    if precision != "auto":
        return precision
    return "bf16" if fast_bf16(device) and not sampler.exact else "fp32"


class Autocast(nn.Module):
    """``energy`` evaluated under bf16 autocast, its output returned in fp32.

    What a sampler sees in a bf16 training iteration: the convolutions and matrix products of
    the forward pass and of the input-gradient run in bf16, while the chain state, the gradient
    it receives (autocast's casts are differentiable), the noise and the update stay fp32.
    Parameters are the wrapped module's (``frozen``/``eval_mode`` act on them); attributes the
    wrapper lacks are looked up on the energy.
    """

    def __init__(self, energy: nn.Module, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.inner = energy
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            u = self.inner(x)
        return u.float()

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)


# ---------------------------------------------------------------------------------------------
# one iteration
# ---------------------------------------------------------------------------------------------
@dataclass
class StepOutput:
    """What one :func:`train_step` produced (tensors on the device; nothing synced)."""

    loss: Tensor  # scalar: the objective's loss (ml: mean U(x+) - mean U(x-) = d_t)
    u_pos: Tensor  # [B] U(x+)
    u_neg: Tensor  # [B] U(x-)
    x_pos: Tensor  # the (noised) positives
    x_neg: Tensor  # the chains' end states
    chain: ChainResult
    steps: int
    metrics: dict[str, Any] = field(default_factory=dict)  # the objective's own scalars
    #: energy-gradient evaluations of this step, in examples: the chains' (``n ·
    #: sampler.gradient_evals(K)``) plus the objective's passes (the compute axis)
    grad_evals: int = 0


def train_step(
    energy: nn.Module,
    x_pos: Tensor,
    *,
    sampler: Sampler,
    initializer: Initializer,
    optimizer: torch.optim.Optimizer,
    steps: int | None = None,
    data_noise: float = 0.0,
    generator: torch.Generator | None = None,
    n_chains: int | None = None,
    forward: Callable[[Tensor], Tensor] | None = None,
    backward: Callable[[Tensor], None] | None = None,
    autocast: Any = None,
    precision: str = "fp32",
    objective: Objective | None = None,
    labels: Tensor | None = None,
) -> StepOutput:
    """One learning iteration of MCMC-based maximum likelihood (anatomy eq. 8).

    1. positives: ``x+ = x_pos + σ·z`` (``σ = data_noise``);
    2. negatives: ``n_chains`` (default: the batch size) starts from ``initializer`` (given the
       positives, for CD), ``steps`` MCMC steps of ``sampler`` on ``energy`` itself — never
       through a DDP wrapper;
    3. the ``objective``'s loss (default ``ml``: ``L = mean U(x+) − mean U(x-)``) through
       ``forward`` (the DDP-wrapped energy; default ``energy``), with ``labels`` when the
       objective needs them, ``backward(L)`` (default ``L.backward()``; Accelerate's under DDP),
       one ``optimizer`` step — so the energy of the data goes down and that of the samples up;
    4. ``initializer.update(x-)`` (a persistent buffer keeps the end states).

    ``precision="bf16"`` runs the chain on :class:`Autocast` ``(energy)`` and the loss pass
    under bf16 autocast (``autocast``, Accelerate's context for the legacy
    ``mixed_precision``, is then not used); states, energies, the loss and the optimizer stay
    fp32.
    """
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"train_step: precision must be fp32 or bf16, not {precision!r} "
                          "(resolve 'auto' with resolve_precision)")
    bf16 = precision == "bf16"
    if data_noise > 0:
        x_pos = x_pos + data_noise * randn_like_on(x_pos, generator)
    n = x_pos.shape[0] if n_chains is None else int(n_chains)
    x0 = initializer.sample(n, data=x_pos, generator=generator, device=x_pos.device)
    with eval_mode(energy):
        chain = sampler.run(Autocast(energy) if bf16 else energy, x0, steps, generator=generator)
    x_neg = chain.x
    fwd = forward if forward is not None else energy
    if bf16:
        autocast = torch.autocast(x_pos.device.type, dtype=torch.bfloat16)
    if objective is None:
        objective = default_objective()
    with autocast if autocast is not None else contextlib.nullcontext():
        res = objective(fwd, x_pos, x_neg, labels=labels if objective.needs_labels else None)
    loss = res.loss.float()
    u_pos, u_neg = res.u_pos.float(), res.u_neg.float()
    optimizer.zero_grad(set_to_none=True)
    if backward is not None:
        backward(loss)
    else:
        loss.backward()
    optimizer.step()
    initializer.update(x_neg)
    metrics = {k: (v.detach() if isinstance(v, Tensor) else v) for k, v in res.metrics.items()}
    k = chain.steps if steps is None else int(steps)
    loss_evals = res.grad_evals if res.grad_evals is not None else x_pos.shape[0] + x_neg.shape[0]
    return StepOutput(loss=loss.detach(), u_pos=u_pos.detach(), u_neg=u_neg.detach(),
                      x_pos=x_pos, x_neg=x_neg, chain=chain, steps=k, metrics=metrics,
                      grad_evals=n * sampler.gradient_evals(k) + int(loss_evals))


def default_objective() -> Objective:
    """The papers' loss (the built-in ``ml`` objective with its defaults)."""
    from .builtin.objectives import MaximumLikelihood

    return MaximumLikelihood(MaximumLikelihood.default_config())


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
@dataclass
class Run:
    """The state of a training run, as callbacks see it.

    Callbacks read it (``step``, ``row``, ``x_neg``, ``config`` …) and may set ``stop = True``
    to end the loop after the current iteration. ``energy`` is the unwrapped module (sample on
    it); ``accelerator`` is Accelerate's (``is_main``, ``world_size``, collectives).
    """

    config: RunConfig
    energy: nn.Module
    sampler: Sampler
    initializer: Initializer
    optimizer: torch.optim.Optimizer
    accelerator: Any
    dataset: Any
    shape: tuple[int, ...]
    out_dir: Path | None
    generator: torch.Generator  # chains and data noise (on the device)
    data_generator: torch.Generator  # CPU: batch order and random K
    resume: bool = False
    step: int = 0  # iterations completed
    start_step: int = 0
    row: dict[str, Any] = field(default_factory=dict)  # the last iteration's diagnostics
    #: the compute spent so far, over all processes (saved in each checkpoint): energy-gradient
    #: evaluations in examples, chain steps times chains, process CPU seconds
    compute: dict[str, float] = field(
        default_factory=lambda: {"grad_evals": 0, "image_steps": 0, "cpu_total": 0.0})
    x_neg: Tensor | None = None
    stop: bool = False
    completed: bool = False
    setup_done: bool = False
    interrupted: int = 0  # the signal (SIGINT 2, SIGTERM 15) that stopped the run, if any
    saved: Path | None = None  # the last checkpoint a callback committed
    precision: str = "fp32"  # what train.precision resolved to on this device (set by run_loop)
    budget_reached: bool = False  # train.time_budget / cpu_budget ended the run (it is completed)
    #: the moving average of the energy's weights (``train.ema > 0``), else ``None``
    ema: nn.Module | None = None
    say: Callable[[str], None] = field(default=lambda msg: None, repr=False)  # one-line notices
    objective: Objective | None = None  # the loss (None: the built-in ml)
    checkpoints: Any = None  # the run directory's CheckpointManager (None: in memory)
    callbacks: list[Any] = field(default_factory=list, repr=False)  # set by run_loop
    failed: BaseException | None = None  # the error a callback raised (training stopped)
    origins: dict[int, str] = field(default_factory=dict, repr=False)  # id(callback) -> plugin
    labels: bool = False  # the batch stream yields (x, y): the objective needs labels

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """The one way a metric leaves the loop: every callback's ``on_log`` receives
        ``metrics`` (``{name: number}``; ``group/name`` keys for metrics other than the
        per-iteration diagnostics) at ``step`` (default: ``run.step``). Call it on every process
        (sinks write on the main one only)."""
        step = self.step if step is None else int(step)
        for cb in self.callbacks:
            _call(self, cb, "on_log", self, metrics, step)

    @property
    def train(self) -> TrainConfig:
        return self.config.train

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def model(self) -> EBM:
        """The model as trained so far (shares the energy — its moving average when
        ``train.ema`` is on —; standalone chain starts)."""
        return EBM(self.ema if self.ema is not None else self.energy, self.sampler, self.initializer, shape=self.shape,
                   steps=sampling_steps(self.sampler, self.config.sample_steps),
                   config=self.config, step=self.step, registry=self.config.registry)

    def draw_data(self, n: int) -> Tensor:
        """``n`` training examples (consumes the data generator)."""
        return draw(self.dataset, n, self.data_generator)


_SIGINT = 2


class StopOnSignal:
    """Turn the first SIGINT/SIGTERM into a flag (``signum``) the loop checks after each
    iteration; the second one acts at once. Installs nothing outside the main thread, and leaves
    a signal alone that the process ignores (e.g. SIGINT of a background job)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        import signal
        import threading

        if not self.enabled or threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGINT, signal.SIGTERM):
            old = signal.getsignal(sig)
            if old is signal.SIG_IGN or old is None:
                continue
            self._old[sig] = old
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        import signal

        if self.signum:  # the second signal: stop now
            self.__exit__(None, None, None)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self.signum = signum

    def __exit__(self, *exc) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


class CallbackError(PluginError):
    """A callback raised: training stopped after the iteration it failed in, with a checkpoint
    at that iteration when the run has a directory. ``__cause__`` is the original error."""


def _describe_callback(run: Run, cb: Any) -> str:
    plugin = run.origins.get(id(cb))
    cls = type(cb)
    name = repr(cb) if cls.__repr__ is not object.__repr__ else f"'{cls.__qualname__}'"
    if plugin:
        return f"callback {name} from plugin '{plugin}'"
    return f"callback {name} ({cls.__module__})"


def _call(run: Run, cb: Any, method: str, *args: Any) -> None:
    """``cb.method(*args)``; an exception (not an ebmkit user error, not already attributed)
    becomes one :class:`CallbackError` line naming the callback, its plugin and the method."""
    fn = getattr(cb, method, None)
    if fn is None:
        return
    try:
        fn(*args)
    except (EbmkitError, KeyboardInterrupt):
        raise
    except Exception as exc:
        from .plugins import describe_exception

        where = f" at iteration {run.step}" if run.step else ""
        raise CallbackError(f"{_describe_callback(run, cb)} failed in {method}{where}: "
                            f"{describe_exception(exc)}") from exc


@torch.no_grad()
def update_ema(ema: nn.Module, energy: nn.Module, decay: float, it: int) -> None:
    """``ema ← d·ema + (1 − d)·energy`` for the parameters (buffers copied), with the warm-up
    ``d = min(decay, (1 + it)/(10 + it))`` so the average forgets the initial weights."""
    d = min(decay, (1 + it) / (10 + it))
    for a, p in zip(ema.parameters(), energy.parameters(), strict=True):
        a.lerp_(p.detach(), 1.0 - d)
    for a, b in zip(ema.buffers(), energy.buffers(), strict=True):
        a.copy_(b)


def _over_budget(cfg: Any, run: Run, wall: float) -> bool:
    """``train.time_budget`` (wall seconds of this call) / ``train.cpu_budget`` (the run's
    cumulative CPU seconds, resumes included) reached: the same on every process (the CPU total
    is the main process's, times the world size, kept in step by the reduced row)."""
    if cfg.time_budget and wall >= cfg.time_budget:
        return True
    return bool(cfg.cpu_budget and run.compute["cpu_total"] >= cfg.cpu_budget)


def run_loop(run: Run, callbacks: Sequence[LoopCallback], *, energy_ddp: nn.Module | None = None,
             stop_after: int | None = None, handle_signals: bool = True) -> Run:
    """Train ``run`` from ``run.step`` to ``train.iterations``, calling the callbacks.

    A resumed run (``run.resume``) is first restored from the newest complete checkpoint of
    ``run.checkpoints`` (weights, optimizer, initializer, RNG, ``run.step``, callback states).

    With ``handle_signals`` (the default; main thread only), the first SIGINT (Ctrl-C) or
    SIGTERM lets the current iteration finish, then the loop stops with ``run.interrupted`` set
    to the signal number and the callbacks' ``on_fit_end`` run (the checkpoint callback saves).
    A second signal stops at once (KeyboardInterrupt / the default SIGTERM action); a checkpoint
    being written is then abandoned, the previous one stays complete.

    A callback that raises in ``on_step_end`` or ``on_log`` stops the loop the same way: the
    iteration is complete, so ``on_fit_end`` runs (a checkpoint at that iteration) and the
    error is raised as one :class:`CallbackError` line naming the callback and its plugin.

    ``stop_after`` ends the loop after that many iterations of this call (tests use it to
    simulate an interrupted run); the run is then not ``completed`` (no final checkpoint).
    """
    cfg = run.train
    acc = run.accelerator
    device = acc.device
    fwd = energy_ddp if energy_ddp is not None else run.energy
    # callbacks that save (ordered last, as Lightning does with ModelCheckpoint) see every other
    # callback's state of the same iteration, whatever order the user listed them in
    run.callbacks = sorted(callbacks, key=lambda cb: bool(cb.saves_state))
    run.precision = resolve_precision(cfg.precision, device, run.sampler)
    if run.resume:
        mgr = run.checkpoints
        if mgr is None:
            raise ConfigError("resume needs the run directory (out_dir) to restore from")
        if run.is_main:
            mgr.clean()
        acc.wait_for_everyone()
        found = mgr.restore(run)
        if found is None:  # killed before the first checkpoint: start again from iteration 0
            run.say(f"no complete checkpoint in {mgr.out_dir}; starting again from iteration 0 "
                    "with its run.toml")
            run.resume = False
        else:
            run.setup_done = True
            run.say(f"resuming from {found[1]} (iteration {found[0]})")
            for cb in run.callbacks:
                _call(run, cb, "on_resume", run)
    for cb in run.callbacks:
        _call(run, cb, "on_fit_start", run)
    if not run.setup_done:  # a fresh run: fill the initializer (a persistent buffer) once
        run.initializer.setup(draw_data=run.draw_data, generator=run.generator, device=device)
        run.setup_done = True
    run.start_step = run.step
    # in-memory sets continue from the restored generator; shard streams seek to (epoch, batch)
    batches = batch_stream(run.dataset, cfg.batch_size, generator=run.data_generator, start=run.step,
                           labels=run.labels)
    grad_coef = run.sampler.grad_coef
    precision = run.precision
    with StopOnSignal(enabled=handle_signals) as signals:
        try:
            t_start = t_last = time.perf_counter()
            cpu_last = time.process_time()
            over = False  # this process reached train.time_budget / cpu_budget
            for it in range(run.step, cfg.iterations):
                if stop_after is not None and it - run.start_step >= stop_after:
                    break
                lr = lr_at(cfg, it)
                for group in run.optimizer.param_groups:
                    group["lr"] = lr
                sigma = data_noise_at(cfg, it)
                batch = next(batches)
                x_pos, y = batch if run.labels else (batch, None)
                x_pos = x_pos.to(device, non_blocking=True)
                if y is not None:
                    y = y.to(device, non_blocking=True)
                k = chain_steps(cfg, run.sampler, run.data_generator)
                out = train_step(run.energy, x_pos, sampler=run.sampler, initializer=run.initializer,
                                 optimizer=run.optimizer, steps=k, data_noise=sigma,
                                 generator=run.generator, n_chains=cfg.batch_size, forward=fwd,
                                 backward=acc.backward, autocast=acc.autocast(),
                                 precision=precision, objective=run.objective, labels=y)
                if run.ema is not None:
                    update_ema(run.ema, run.energy, cfg.ema, it)
                # diagnostics: one host sync per iteration, averaged over processes; the signal
                # flag rides along so every rank stops after the same iteration
                a = out.chain.accept_rate
                a = a.float() if a is not None else torch.tensor(math.nan, device=device)
                extra = sorted(out.metrics)
                vals = [out.u_pos.mean() - out.u_neg.mean(), out.chain.grad_norm.float(),
                        out.u_pos.mean(), out.u_neg.mean(), a,
                        torch.tensor(float(signals.signum), device=device),
                        torch.tensor(float(over), device=device)]
                vals += [torch.as_tensor(out.metrics[key], device=device).float().reshape(())
                         for key in extra]
                stats = torch.stack(vals)
                if run.world_size > 1:
                    stats = acc.reduce(stats, reduction="mean")
                d_t, v_t, e_pos, e_neg, accept, sig, budget, *more = stats.tolist()
                now, cpu_now = time.perf_counter(), time.process_time()
                cpu = (cpu_now - cpu_last) * run.world_size  # the main process's, for all
                cpu_last = cpu_now
                total = run.compute
                total["grad_evals"] += out.grad_evals * run.world_size
                total["image_steps"] += cfg.batch_size * k * run.world_size
                total["cpu_total"] += cpu
                run.row = {"iter": it + 1, "d_t": d_t, "v_t": v_t,
                           "r_t": grad_coef * v_t if grad_coef is not None else None,
                           "e_pos": e_pos, "e_neg": e_neg,
                           "accept": None if math.isnan(accept) else accept, "lr": lr, "steps": k,
                           "data_noise": sigma, "sec": now - t_last, "cpu_sec": cpu,
                           "grad_evals": int(total["grad_evals"]),
                           "image_steps": int(total["image_steps"]),
                           "cpu_total": total["cpu_total"], **dict(zip(extra, more, strict=True))}
                t_last = now
                run.x_neg = out.x_neg
                run.step = it + 1
                try:  # the iteration's row first: a callback that fails below cannot lose it
                    if run.step % cfg.log_every == 0 or run.step == cfg.iterations:
                        run.log(run.row, run.step)
                    for cb in run.callbacks:
                        _call(run, cb, "on_step_end", run, out)
                except CallbackError as exc:  # the iteration is complete: stop with a checkpoint
                    run.failed = exc
                    break
                if sig > 0 or (run.world_size == 1 and signals.signum):
                    run.interrupted = signals.signum or _SIGINT
                    break
                if run.stop:
                    break
                # a budget ends the run; with several processes, one iteration after any of
                # them reached it (its flag rides along the next reduced row), so all stop together
                over = _over_budget(cfg, run, now - t_start)
                if over if run.world_size == 1 else budget > 0:
                    run.budget_reached = True
                    break
            run.completed = ((run.step >= cfg.iterations or run.budget_reached)
                             and not run.interrupted and run.failed is None)
        finally:
            for cb in run.callbacks:
                try:
                    _call(run, cb, "on_fit_end", run)
                except EbmkitError:
                    if run.completed:
                        raise
                    if run.failed is None and not run.interrupted:
                        raise
                    # the run already failed: closing the other callbacks must not mask its error
                except Exception:
                    if run.completed:
                        raise
    acc.wait_for_everyone()
    if run.failed is not None:
        where = (f"; a checkpoint of iteration {run.step} is in {run.saved.parent.parent} "
                 f"(continue with: ebmkit run --resume {run.saved.parent.parent})"
                 if run.saved is not None and run.saved.name == f"step-{run.step:06d}" else "")
        raise CallbackError(f"{run.failed}{where}") from run.failed.__cause__
    return run
