"""Maximum-likelihood learning of an EBM with MCMC (Algorithm 1 of both papers).

One iteration, top to bottom in :func:`train`:

    data batch x+ (+ sigma noise) -> initializer -> sampler on the *unwrapped* energy -> x-
    -> loss mean U(x+) - mean U(x-) through the (DDP-wrapped) energy -> optimizer
    -> initializer.update(x-) -> diagnostics -> grids / checkpoint

Accelerate handles devices and data parallelism: each process runs its own chains on the
unwrapped module (sampling through DDP deadlocks when the energy has buffers and would cost a
broadcast per step), only the loss forward goes through DDP, diagnostics are averaged across
processes before logging, and only the main process writes files.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import checkpoint as ckpt
from .datastream import _draw, batch_stream
from .diagnostics import CSVLog, plot_diagnostics
from .errors import CheckpointError, ConfigError, DivergenceError
from .images import save_grid
from .params import dumps_toml
from .runconfig import RunSpec, load_toml, resolve

STATE_DIR = "train_state"


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    checkpoint: Path
    last: dict[str, float]


def pick_device(name: str) -> str:
    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"train.device={name} but CUDA is not available; use train.device=cpu")
        return name
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def data_noise_at(cfg, it: int) -> float:
    """sigma for iteration ``it``: constant until ``decay_start``, then linear to the final value."""
    span = cfg.iterations - 1 - cfg.decay_start
    if cfg.data_noise_final is None or it <= cfg.decay_start or span <= 0:
        return cfg.data_noise
    frac = min((it - cfg.decay_start) / span, 1.0)
    return cfg.data_noise + frac * (cfg.data_noise_final - cfg.data_noise)


def make_optimizer(cfg, params):
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_at(cfg, it: int) -> float:
    """The learning rate for iteration ``it`` (a pure function of the step: resume is exact)."""
    t = it - cfg.decay_start
    if cfg.lr_schedule == "constant" or t <= 0:
        return cfg.lr
    if cfg.lr_schedule == "exponential":
        return cfg.lr * cfg.lr_decay ** (t / cfg.lr_decay_every)
    return cfg.lr * cfg.lr_decay ** (t // cfg.lr_decay_every)


def chain_steps(spec: RunSpec, sampler, gen_cpu: torch.Generator) -> int:
    k = sampler.default_steps
    if spec.train.steps_max is None:
        return k
    hi = max(spec.train.steps_max, k)
    return int(torch.randint(k, hi + 1, (1,), generator=gen_cpu))


def step_scale(sampler) -> float:
    """Gradient displacement coefficient a in x <- x - a dU/dx (for r_t = a * v_t)."""
    cfg = sampler.config
    if hasattr(sampler, "a"):
        return float(sampler.a)
    eps = getattr(cfg, "step_size", None)
    return float(eps * eps / 2) if eps else math.nan


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
def train(
    spec: RunSpec,
    out_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    console=None,
    on_iteration: Callable[[int, dict], None] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``spec`` into ``out_dir``. ``resume=True`` continues from the state saved there.

    ``stop_after`` ends the loop after that many iterations of this call (for tests that
    simulate an interrupted run); the final checkpoint is then not written.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    cfg = spec.train
    out_dir = Path(out_dir)
    device = pick_device(cfg.device)
    log_with = _trackers(cfg)
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=cfg.mixed_precision,
                              log_with=log_with, project_dir=str(out_dir) if log_with else None)
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    device = accelerator.device

    # --- components ---------------------------------------------------------------------
    source = spec.data_source()
    dataset = source.open(split="train")
    shape = tuple(source.shape)
    set_seed(cfg.seed)  # identical initial weights on every rank
    energy = spec.energy(shape).to(device)
    sampler = spec.sampler()
    init = spec.initializer(shape)
    optimizer = make_optimizer(cfg, energy.parameters())
    energy_ddp, optimizer = accelerator.prepare(energy, optimizer)
    model = accelerator.unwrap_model(energy_ddp)  # chains run here, never through DDP

    gen_data = torch.Generator().manual_seed(cfg.seed * 7919 + 1 + rank)  # CPU: batches, K
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + 2 + rank)  # chains, noise

    start = 0
    if resume:
        start = _load_state(out_dir, model, optimizer, init, gen, gen_data, rank, world)
    else:
        init.setup(draw_data=lambda n: _draw(dataset, n, gen_data), generator=gen, device=device)
        if main:
            out_dir.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(out_dir / "run.toml", dumps_toml(spec.document()))
    # in-memory sets continue from the restored generator; shard streams seek to (epoch, batch)
    batches = batch_stream(dataset, cfg.batch_size, generator=gen_data, start=start)

    doc = spec.document()
    if log_with:
        flat = {f"{sec}.{k}": (str(v) if isinstance(v, (list, tuple)) or v is None else v)
                for sec, table in doc.items() for k, v in table.items()}
        accelerator.init_trackers("tensorboard", config=flat)
    log = CSVLog(out_dir / "diagnostics.csv", keep_until=start if resume else None) if main else None
    a = step_scale(sampler)
    last: dict[str, float] = {}
    samples_dir = out_dir / "samples"
    model_path = out_dir / "model.safetensors"
    x_neg = None

    bar = _progress(console) if (progress and main) else None
    task = bar.add_task("training", total=cfg.iterations, completed=start, info="") if bar else None
    if bar:
        bar.start()
    step = start
    t_last = time.perf_counter()
    try:
        for it in range(start, cfg.iterations):
            if stop_after is not None and it - start >= stop_after:
                break
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, it)
            # 1. positives: a data batch, smoothed with N(0, sigma^2)
            sigma = data_noise_at(cfg, it)
            x_pos = next(batches).to(device, non_blocking=True)
            if sigma > 0:
                x_pos = x_pos + sigma * torch.randn(x_pos.shape, generator=gen, device=device)
            # 2. negatives: K steps of MCMC from the initializer, on the unwrapped energy
            k = chain_steps(spec, sampler, gen_data)
            x0 = init.sample(cfg.batch_size, data=x_pos, generator=gen, device=device)
            model.eval()
            chain = sampler.run(model, x0, k, generator=gen)
            x_neg = chain.x
            # 3. learning gradient: mean U(x+) - mean U(x-), through DDP
            model.train()
            with accelerator.autocast():
                u = energy_ddp(torch.cat([x_pos, x_neg]))
            u_pos, u_neg = u.float().split([x_pos.shape[0], x_neg.shape[0]])
            loss = u_pos.mean() - u_neg.mean()
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            init.update(x_neg)
            # 4. diagnostics: one host sync per iteration, averaged over processes
            acc = chain.accept_rate if chain.accept_rate is not None else torch.tensor(math.nan, device=device)
            stats = torch.stack([loss.detach(), chain.grad_norm, u_pos.detach().mean(),
                                 u_neg.detach().mean(), acc.float()])
            stats = accelerator.reduce(stats, reduction="mean") if world > 1 else stats
            d_t, v_t, e_pos, e_neg, accept = stats.tolist()
            now = time.perf_counter()
            row = {"iter": it + 1, "d_t": d_t, "v_t": v_t, "r_t": a * v_t, "e_pos": e_pos,
                   "e_neg": e_neg, "accept": None if math.isnan(accept) else accept,
                   "lr": optimizer.param_groups[0]["lr"], "steps": k, "data_noise": sigma,
                   "sec": now - t_last}
            t_last = now
            if not all(math.isfinite(v) for v in (d_t, v_t, e_pos, e_neg)):
                raise DivergenceError(
                    f"training diverged at iteration {it + 1}: non-finite energies or gradients "
                    f"(d_t={d_t:.3g}, v_t={v_t:.3g}). Try a lower train.lr, a larger "
                    "train.data_noise (e.g. 0.1), a smaller sampler step, or a smooth energy "
                    f"activation; the last good checkpoint in {out_dir} is intact"
                )
            last, step = row, it + 1
            if on_iteration:
                on_iteration(it + 1, row)
            if main:
                if (it + 1) % cfg.log_every == 0:
                    log.write(row)
                    log.flush()
                    if log_with:
                        accelerator.log({k: v for k, v in row.items() if v is not None and k != "iter"},
                                        step=it + 1)
                if bar:
                    acc_s = f" acc {accept:.2f}" if not math.isnan(accept) else ""
                    bar.update(task, completed=it + 1,
                               info=f"d_t {d_t:+.3g}  v_t {v_t:.3g}  K {k}{acc_s}")
                if cfg.sample_every and (it + 1) % cfg.sample_every == 0 and len(shape) == 3:
                    save_grid(x_neg[: cfg.grid_size], samples_dir / f"iter_{it + 1:06d}.png")
            if cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0 and it + 1 < cfg.iterations:
                _save_all(accelerator, out_dir, model, optimizer, init, gen, gen_data, doc, it + 1)
    finally:
        if bar:
            bar.stop()
        if log:
            log.close()
    if step >= cfg.iterations:
        _save_all(accelerator, out_dir, model, optimizer, init, gen, gen_data, doc, step)
        if main:
            # sample grids are for images; point data (toys, shape (D,)) gets none
            final = _final_samples(spec, model, sampler, init, gen, device, x_neg) if len(shape) == 3 else None
            if final is not None:
                save_grid(final, samples_dir / "final.png")
            if cfg.plots and (out_dir / "diagnostics.csv").exists() and step > 0:
                plot_diagnostics(out_dir / "diagnostics.csv", out_dir / "plots")
    accelerator.wait_for_everyone()
    if log_with:  # end_training() also destroys the process group: after the last barrier
        accelerator.end_training()
    return TrainResult(out_dir, step, model_path, last)


def _trackers(cfg) -> list[str] | None:
    """TensorBoard through Accelerate's trackers, when asked for or (auto) when installed."""
    if cfg.tensorboard == "off":
        return None
    import importlib.util

    have = importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None
    if cfg.tensorboard == "on" and not have:
        from .errors import MissingDependencyError

        raise MissingDependencyError("train.tensorboard=on", "pip install 'ebmkit-core[tensorboard]'")
    return ["tensorboard"] if have else None


def _final_samples(spec, model, sampler, init, gen, device, x_neg):
    """A grid of fresh samples from the model with the sampling K (sample_steps)."""
    cfg = spec.train
    k = cfg.sample_steps if cfg.sample_steps is not None else sampler.default_steps
    if x_neg is None and k == 0:
        return None
    n = min(cfg.grid_size, 256)
    buffer = getattr(init, "buffer", None)
    if buffer is not None:
        n = min(n, buffer.shape[0])
    x0 = init.sample(n, data=x_neg[:n] if x_neg is not None and x_neg.shape[0] >= n else None,
                     generator=gen, device=device) if spec.classes["init"].name != "data" else x_neg
    if x0 is None:
        return None
    model.eval()
    return sampler.run(model, x0, k, generator=gen).x


def _progress(console):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    class Rate(TextColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            from rich.text import Text

            return Text(f"{speed:.2f} it/s" if speed else "-- it/s", style="cyan")

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(""),
        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=console, transient=False,
    )


# ---------------------------------------------------------------------------------------------
# state: model.safetensors + train_state/ (tensors in safetensors, the rest in JSON)
# ---------------------------------------------------------------------------------------------
def _rng_tensor(g: torch.Generator) -> Tensor:
    return g.get_state().clone()


def _save_all(accelerator, out_dir, model, optimizer, init, gen, gen_data, doc, step):
    rank = accelerator.process_index
    sdir = out_dir / STATE_DIR
    opt_tensors, opt_rest = ckpt.flatten_optimizer(optimizer.state_dict())
    tensors = dict(opt_tensors)
    for k, v in init.state_dict().items():
        tensors[f"init.{k}"] = v
    tensors["rng.chain"] = _rng_tensor(gen)
    tensors["rng.data"] = _rng_tensor(gen_data)
    ckpt.save_state(sdir / f"rank{rank}.safetensors", tensors, step=step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        ckpt.save_energy(out_dir / "model.safetensors", model, doc=doc, step=step)
        info = {"step": step, "world_size": accelerator.num_processes, "optimizer": opt_rest}
        ckpt.atomic_write_text(sdir / "state.json", json.dumps(info))  # written last: the commit
    accelerator.wait_for_everyone()


def _load_state(out_dir, model, optimizer, init, gen, gen_data, rank, world) -> int:
    sdir = out_dir / STATE_DIR
    info_path = sdir / "state.json"
    if not info_path.is_file():
        raise CheckpointError(f"nothing to resume in {out_dir}: {info_path} is missing")
    try:
        info = json.loads(info_path.read_text())
        step = int(info["step"])
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{info_path} is damaged ({exc})") from None
    if int(info.get("world_size", 1)) != world:
        raise CheckpointError(
            f"{out_dir} was saved by {info.get('world_size')} process(es); resume it with the same "
            f"number (got {world}) so each rank gets its own persistent chains back"
        )
    model_path = out_dir / "model.safetensors"
    meta = ckpt.read_metadata(model_path)
    if int(meta.get("step", -1)) != step:
        raise CheckpointError(f"{out_dir}: model.safetensors is at step {meta.get('step')} but the state at {step}")
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(model_path), device=str(model_device(model))))
    tensors = ckpt.load_state(sdir / f"rank{rank}.safetensors", step=step)
    opt_state = ckpt.unflatten_optimizer(tensors, info["optimizer"])
    optimizer.load_state_dict(opt_state)
    init.load_state_dict({k[5:]: v.to(model_device(model)) for k, v in tensors.items() if k.startswith("init.")})
    gen.set_state(tensors["rng.chain"])
    gen_data.set_state(tensors["rng.data"])
    return step


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def load_run(out_dir: Path, registry, overrides: list[str] | None = None) -> RunSpec:
    """The RunSpec saved in ``out_dir/run.toml`` (for ``--resume``), with optional overrides."""
    from .runconfig import apply_overrides

    path = Path(out_dir) / "run.toml"
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path} not found (is {out_dir} an ebmkit run directory?)")
    doc = load_toml(path)
    allowed = {"train.iterations", "train.sample_every", "train.checkpoint_every", "train.log_every",
               "train.plots", "train.grid_size", "train.device", "train.sample_steps"}
    for o in overrides or []:
        key = o.split("=", 1)[0].strip()
        if key not in allowed:
            raise ConfigError(f"--set {key} cannot change on resume; allowed: {', '.join(sorted(allowed))}")
    return resolve(apply_overrides(doc, overrides or []), registry)


def describe_state(out_dir: Path) -> dict[str, Any]:
    info_path = Path(out_dir) / STATE_DIR / "state.json"
    return json.loads(info_path.read_text()) if info_path.is_file() else {}
