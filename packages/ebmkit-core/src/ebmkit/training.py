"""Maximum-likelihood learning of an EBM with MCMC (Algorithm 1 of both papers).

Two pieces:

* :func:`train_step` — one learning iteration, a plain function of the components and one data
  batch, readable top to bottom::

      x+ (+ σ noise) -> initializer -> sampler on the *unwrapped* energy -> x-
      -> loss mean U(x+) - mean U(x-) through the (DDP-wrapped) energy -> optimizer
      -> initializer.update(x-)

* :func:`run_loop` — the loop around it: learning-rate schedule, σ annealing, random K,
  diagnostics (one host sync per iteration, averaged across processes) and the callbacks
  (:mod:`ebmkit.callbacks`) that do everything else: progress, CSV, grids, checkpoints,
  TensorBoard, divergence guard. The loop itself writes no file.

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
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .datastream import batch_stream, draw
from .errors import ConfigError, EbmkitError
from .interfaces import Initializer, Sampler
from .mcmc import ChainResult, randn_like_on
from .model import EBM, eval_mode, sampling_steps

if TYPE_CHECKING:  # pragma: no cover
    from .callbacks import Callback
    from .runconfig import RunConfig, TrainConfig


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
        raise ConfigError(f"device {name} was asked for but CUDA is not available; use --device cpu")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA "
                          "device(s); use cuda:0 or another index")
    if name == "mps" and not (torch.backends.mps.is_available()):
        raise ConfigError("device mps was asked for but MPS is not available; use --device cpu")
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

    loss: Tensor  # scalar: mean U(x+) - mean U(x-) = d_t
    u_pos: Tensor  # [B] U(x+)
    u_neg: Tensor  # [B] U(x-)
    x_pos: Tensor  # the (noised) positives
    x_neg: Tensor  # the chains' end states
    chain: ChainResult
    steps: int


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
) -> StepOutput:
    """One learning iteration of MCMC-based maximum likelihood (anatomy eq. 8).

    1. positives: ``x+ = x_pos + σ·z`` (``σ = data_noise``);
    2. negatives: ``n_chains`` (default: the batch size) starts from ``initializer`` (given the
       positives, for CD), ``steps`` MCMC steps of ``sampler`` on ``energy`` itself — never
       through a DDP wrapper;
    3. loss ``L = mean U(x+) − mean U(x-)`` through ``forward`` (the DDP-wrapped energy;
       default ``energy``), ``backward(L)`` (default ``L.backward()``; Accelerate's under DDP),
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
    with autocast if autocast is not None else contextlib.nullcontext():
        u = fwd(torch.cat([x_pos, x_neg]))
    u_pos, u_neg = u.float().split([x_pos.shape[0], x_neg.shape[0]])
    loss = u_pos.mean() - u_neg.mean()
    optimizer.zero_grad(set_to_none=True)
    if backward is not None:
        backward(loss)
    else:
        loss.backward()
    optimizer.step()
    initializer.update(x_neg)
    return StepOutput(loss=loss.detach(), u_pos=u_pos.detach(), u_neg=u_neg.detach(),
                      x_pos=x_pos, x_neg=x_neg, chain=chain,
                      steps=chain.steps if steps is None else int(steps))


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
    x_neg: Tensor | None = None
    stop: bool = False
    completed: bool = False
    setup_done: bool = False
    interrupted: int = 0  # the signal (SIGINT 2, SIGTERM 15) that stopped the run, if any
    saved: Path | None = None  # the last checkpoint a callback committed
    precision: str = "fp32"  # what train.precision resolved to on this device (set by run_loop)
    say: Callable[[str], None] = field(default=lambda msg: None, repr=False)  # one-line notices

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
        """The model as trained so far (shares the energy; standalone chain starts)."""
        return EBM(self.energy, self.sampler, self.initializer, shape=self.shape,
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


def run_loop(run: Run, callbacks: Sequence[Callback], *, energy_ddp: nn.Module | None = None,
             stop_after: int | None = None, handle_signals: bool = True) -> Run:
    """Train ``run`` from ``run.step`` to ``train.iterations``, calling the callbacks.

    With ``handle_signals`` (the default; main thread only), the first SIGINT (Ctrl-C) or
    SIGTERM lets the current iteration finish, then the loop stops with ``run.interrupted`` set
    to the signal number and the callbacks' ``on_fit_end`` run (the checkpoint callback saves).
    A second signal stops at once (KeyboardInterrupt / the default SIGTERM action); a checkpoint
    being written is then abandoned, the previous one stays complete.

    ``stop_after`` ends the loop after that many iterations of this call (tests use it to
    simulate an interrupted run); the run is then not ``completed`` (no final checkpoint).
    """
    cfg = run.train
    acc = run.accelerator
    device = acc.device
    fwd = energy_ddp if energy_ddp is not None else run.energy
    run.precision = resolve_precision(cfg.precision, device, run.sampler)
    if run.resume:
        for cb in callbacks:
            cb.on_resume(run)
        if run.resume and not run.setup_done:
            raise ConfigError("nothing restored the run's state: resume needs the checkpoint "
                              "callback (an out_dir)")
    for cb in callbacks:
        cb.on_fit_start(run)
    if not run.setup_done:  # a fresh run: fill the initializer (a persistent buffer) once
        run.initializer.setup(draw_data=run.draw_data, generator=run.generator, device=device)
        run.setup_done = True
    run.start_step = run.step
    # in-memory sets continue from the restored generator; shard streams seek to (epoch, batch)
    batches = batch_stream(run.dataset, cfg.batch_size, generator=run.data_generator, start=run.step)
    grad_coef = run.sampler.grad_coef
    precision = run.precision
    with StopOnSignal(enabled=handle_signals) as signals:
        try:
            t_last = time.perf_counter()
            for it in range(run.step, cfg.iterations):
                if stop_after is not None and it - run.start_step >= stop_after:
                    break
                lr = lr_at(cfg, it)
                for group in run.optimizer.param_groups:
                    group["lr"] = lr
                sigma = data_noise_at(cfg, it)
                x_pos = next(batches).to(device, non_blocking=True)
                k = chain_steps(cfg, run.sampler, run.data_generator)
                out = train_step(run.energy, x_pos, sampler=run.sampler, initializer=run.initializer,
                                 optimizer=run.optimizer, steps=k, data_noise=sigma,
                                 generator=run.generator, n_chains=cfg.batch_size, forward=fwd,
                                 backward=acc.backward, autocast=acc.autocast(),
                                 precision=precision)
                # diagnostics: one host sync per iteration, averaged over processes; the signal
                # flag rides along so every rank stops after the same iteration
                a = out.chain.accept_rate
                a = a.float() if a is not None else torch.tensor(math.nan, device=device)
                stats = torch.stack([out.loss, out.chain.grad_norm.float(), out.u_pos.mean(),
                                     out.u_neg.mean(), a,
                                     torch.tensor(float(signals.signum), device=device)])
                if run.world_size > 1:
                    stats = acc.reduce(stats, reduction="mean")
                d_t, v_t, e_pos, e_neg, accept, sig = stats.tolist()
                now = time.perf_counter()
                run.row = {"iter": it + 1, "d_t": d_t, "v_t": v_t,
                           "r_t": grad_coef * v_t if grad_coef is not None else None,
                           "e_pos": e_pos, "e_neg": e_neg,
                           "accept": None if math.isnan(accept) else accept, "lr": lr, "steps": k,
                           "data_noise": sigma, "sec": now - t_last}
                t_last = now
                run.x_neg = out.x_neg
                run.step = it + 1
                for cb in callbacks:
                    cb.on_step_end(run, out)
                if sig > 0 or (run.world_size == 1 and signals.signum):
                    run.interrupted = signals.signum or _SIGINT
                    break
                if run.stop:
                    break
            run.completed = run.step >= cfg.iterations and not run.interrupted
        finally:
            for cb in callbacks:
                try:
                    cb.on_fit_end(run)
                except EbmkitError:
                    raise
                except Exception:
                    if run.completed:
                        raise
                    # the run already failed: closing the other callbacks must not mask its error
    acc.wait_for_everyone()
    return run
