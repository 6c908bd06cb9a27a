"""Mixing per gradient of the ebmkit-likelihood samplers against the built-in baselines.

A benchmark, not a test: it prints two tables, with every ratio taken against a baseline
measured in the same run, on the same machine, with one intra-op thread.

(a) **Mode hopping on the 8-mode ring** (``gmm2d``'s defaults: 8 Gaussians, sd 0.15, on the unit
    circle; adjacent modes are ~3.3 nats of barrier apart). ``parallel-tempering`` (MALA base)
    against ``mala`` alone, at an equal gradient budget per chain after the same warm-up: the
    rate of mode changes per gradient evaluation. A chain changes mode when it enters the core
    (within 2 sd) of another mode than the last one it was in (hysteresis: crossing and
    re-crossing a saddle does not count). Also: the swap acceptance per adjacent pair and the
    β = 1 chains' occupancy of the 8 modes (total variation from uniform; 0 is exact).

(b) **ESS per gradient on an ill-conditioned Gaussian** (16-D, variances log-spaced over
    [0.01, 1]: condition number 100; identity mass for both samplers, so diagonal loses no
    generality). ``nuts`` (dual averaging to 0.8) against the built-in ``hmc`` (dual averaging to
    0.65) at a few fixed trajectory lengths L, each also with the step jittered by ±20 %
    (``step_jitter``, which breaks the resonances a fixed εL hits on a Gaussian). ESS from :func:`ebmkit.mixing.ess` (split,
    multi-chain; a small local Geyer estimator if that module is missing) over the
    post-warm-up transitions, for every coordinate and its square; per gradient = divided by
    the gradients all chains spent after the warm-up. NUTS's gradients are counted twice: the
    leapfrog steps of its trees (Stan's count) and the rows the energy actually evaluated
    (the batch carries chains whose trees died inside a subtree until that subtree's half is
    done); ESS/grad uses the evaluated rows.

    uv run --package ebmkit-likelihood --group test python tools/bench_mixing.py
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time

import torch
from ebmkit.params import build
from ebmkit.plugins import build_registry
from torch import Tensor, nn


# --------------------------------------------------------------------------------------------
class Counting(nn.Module):
    """Counts the rows it evaluates (one energy evaluation per gradient in every sampler here)."""

    def __init__(self, energy: nn.Module):
        super().__init__()
        self.energy = energy
        self.rows = 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += x.shape[0]
        return self.energy(x)


class Ring(nn.Module):
    """``U(x) = −log Σ_k (1/K) N(x; μ_k, sd² I)``."""

    def __init__(self, means: Tensor, sd: float):
        super().__init__()
        self.register_buffer("means", means.float())
        self.sd = float(sd)

    def forward(self, x: Tensor) -> Tensor:
        d2 = (x[:, None, :] - self.means[None]).square().sum(-1)
        return -torch.logsumexp(-d2 / (2 * self.sd**2), dim=1) + math.log(self.means.shape[0])


class Gaussian(nn.Module):
    def __init__(self, variances: Tensor):
        super().__init__()
        self.register_buffer("variances", variances)

    def forward(self, x: Tensor) -> Tensor:
        return (x.square() / (2 * self.variances)).sum(1)


def ess(draws: Tensor) -> Tensor:
    """Multi-chain ESS per coordinate of ``[T, C, D]`` draws."""
    try:
        from ebmkit.mixing import ess as core_ess
    except ImportError:  # pragma: no cover - the core module predates this tool
        return _local_ess(draws)
    return core_ess(draws)


def _local_ess(draws: Tensor) -> Tensor:
    """Geyer's initial positive sequence on the chains' pooled autocorrelation (no split)."""
    x = draws.double()
    t, c = x.shape[:2]
    x = x - x.mean(0, keepdim=True)
    f = torch.fft.rfft(x, n=2 * t, dim=0)
    acov = torch.fft.irfft(f * f.conj(), n=2 * t, dim=0)[:t] / t  # [T, C, D]
    w = acov[0].mean(0)
    var = w * (t - 1) / t + draws.double().mean(0).var(0) if c > 1 else w
    rho = 1 - (w - acov.mean(1)) / var
    out = []
    for d in range(rho.shape[1]):
        tau, k = -1.0, 0
        while 2 * k + 1 < t:
            p = float(rho[2 * k, d] + rho[2 * k + 1, d])
            if p <= 0:
                break
            tau += 2 * p
            k += 1
        out.append(t * c / tau)
    return torch.tensor(out)


def sampler(name: str, **values):
    reg = build_registry()
    return reg.create("sampler", name, values)


# --------------------------------------------------------------------------------------------
# (a) mode hopping
# --------------------------------------------------------------------------------------------
def ring_means(reg) -> tuple[Tensor, float]:
    cls = reg.get("dataset", "gmm2d")
    src = cls(build(cls.Config, {}))
    return src.means.float(), float(src.config.sd)


def mode_hops(s, energy: Counting, x0: Tensor, warmup: int, steps: int, means: Tensor, sd: float,
              seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = s.init(energy, x0)
    for _ in range(warmup):
        state, _ = s.step(energy, state, generator=g)
    core = 2 * sd
    d = torch.cdist(state.x.float(), means)
    mode = d.argmin(1)
    hops = torch.zeros(x0.shape[0], dtype=torch.int64)
    occupancy = torch.zeros(means.shape[0])
    rows0 = energy.rows
    t0 = time.process_time()
    for _ in range(steps):
        state, _ = s.step(energy, state, generator=g)
        d = torch.cdist(state.x.float(), means)
        near = d.argmin(1)
        inside = d.gather(1, near[:, None])[:, 0] < core
        changed = inside & (near != mode)
        hops += changed.long()
        mode = torch.where(inside, near, mode)
        occupancy += torch.bincount(near, minlength=means.shape[0]).float()
    cpu = time.process_time() - t0
    grads = (energy.rows - rows0) / x0.shape[0]
    occupancy /= occupancy.sum()
    tv = 0.5 * float((occupancy - 1 / means.shape[0]).abs().sum())
    return dict(grads=grads, hops=float(hops.float().mean()), rate=float(hops.sum()) / (
        energy.rows - rows0), tv=tv, cpu=cpu, state=state)


def bench_ring(args) -> None:
    reg = build_registry()
    means, sd = ring_means(reg)
    ring = Ring(means, sd)
    c = args.chains
    x0 = means[0].expand(c, 2).clone()  # every chain starts in mode 0
    budget = args.budget
    warm = args.warmup
    rows = []
    mala = reg.create("sampler", "mala", {"step_size": 0.1, "adapt_steps": warm})
    e = Counting(ring)
    rows.append(("mala (adapted, 0.574)", mode_hops(mala, e, x0, warm, budget, means, sd, 1),
                 None))
    for r, bmin in ((4, 0.1), (6, 0.05), (8, 0.02)):
        steps = budget // r
        pt = reg.create("sampler", "parallel-tempering", {
            "replicas": r, "beta_min": bmin,
            "base_config": [f"adapt_steps={warm}", "step_size=0.1"]})
        e = Counting(ring)
        res = mode_hops(pt, e, x0, warm, steps, means, sd, 1)
        from ebmkit_likelihood.tempering import ParallelTempering

        swaps = ParallelTempering.swap_acceptance(res["state"]).tolist()
        rows.append((f"parallel-tempering R={r} β_min={bmin}", res, swaps))
    base = rows[0][1]["rate"]
    print(f"\n(a) 8-mode ring (gmm2d: radius 1, sd {sd}), {c} chains from one mode, warm-up {warm} "
          f"steps (step sizes adapted), then {budget} gradients per chain")
    print(f"{'sampler':38s} {'grads/chain':>11s} {'hops/chain':>10s} {'hops/1k grad':>12s} "
          f"{'vs mala':>8s} {'occup. TV':>9s} {'cpu s':>6s}  swap acceptance per pair")
    for name, res, swaps in rows:
        sw = "" if swaps is None else "[" + ", ".join(f"{v:.2f}" for v in swaps) + "]"
        print(f"{name:38s} {res['grads']:11.0f} {res['hops']:10.2f} {1000 * res['rate']:12.3f} "
              f"{res['rate'] / base if base > 0 else math.inf:8.2f} {res['tv']:9.3f} "
              f"{res['cpu']:6.1f}  {sw}")


# --------------------------------------------------------------------------------------------
# (b) ESS per gradient
# --------------------------------------------------------------------------------------------
def ess_run(s, energy: Counting, x0: Tensor, warmup: int, steps: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = s.init(energy, x0)
    for _ in range(warmup):
        state, _ = s.step(energy, state, generator=g)
    rows0 = energy.rows
    draws, leap, acc = [], 0, []
    t0 = time.process_time()
    for _ in range(steps):
        state, info = s.step(energy, state, generator=g)
        draws.append(state.x.detach().clone())
        if getattr(info, "n_leapfrog", None) is not None:
            leap += int(info.n_leapfrog.sum())
        acc.append(float(info.accept_prob.mean()))
    cpu = time.process_time() - t0
    d = torch.stack(draws)  # [T, C, D]
    e1, e2 = ess(d), ess(d.square())
    evaluated = energy.rows - rows0
    eps = state.extra.get("step_size")
    return dict(evaluated=evaluated, leapfrog=leap or evaluated, ess_min=float(e1.min()),
                ess_mean=float(e1.mean()), ess2_min=float(e2.min()), cpu=cpu,
                eps=float(eps) if eps is not None else float(s.config.step_size),
                acc=sum(acc) / len(acc), state=state)


def bench_gaussian(args) -> None:
    dim = args.dim
    var = torch.logspace(-2, 0, dim)
    e_raw = Gaussian(var)
    c, warm, steps = args.gauss_chains, args.gauss_warmup, args.gauss_steps
    x0 = torch.randn(c, dim, generator=torch.Generator().manual_seed(0)) * var.sqrt()
    rows = []
    for L in args.leapfrog:
        for j in (0.0, args.jitter):
            s = sampler("hmc", step_size=0.05, leapfrog_steps=L, adapt_steps=warm, step_jitter=j)
            name = f"hmc L={L}" + (f" j={j:g}" if j else "")
            rows.append((name, ess_run(s, Counting(e_raw), x0, warm, steps, 2)))
            if not args.jitter:
                break
    s = sampler("nuts", step_size=0.05, adapt_steps=warm)
    nuts = ess_run(s, Counting(e_raw), x0, warm, steps, 2)
    depth = float(nuts["state"].extra["tree_depth"].float().mean())
    rows.append(("nuts", nuts))
    hmc = rows[:-1]
    best = max(hmc, key=lambda r: r[1]["ess_min"] / r[1]["evaluated"])
    best2 = max(hmc, key=lambda r: r[1]["ess2_min"] / r[1]["evaluated"])
    base = best[1]["ess_min"] / best[1]["evaluated"]
    base2 = best2[1]["ess2_min"] / best2[1]["evaluated"]
    print(f"\n(b) Gaussian, {dim}-D, variances log-spaced over [0.01, 1] (condition number 100), "
          f"{c} chains, warm-up {warm} transitions (dual averaging), then {steps} transitions")
    print("ESS: minimum over the 16 coordinates of x (and of x²), all chains; per 1k gradients "
          "evaluated after the warm-up; ratios against the best hmc row for that column")
    print(f"{'sampler':16s} {'eps':>6s} {'accept':>6s} {'grads/trans':>11s} {'ESS x':>7s} "
          f"{'ESS x²':>7s} {'x /1k grad':>10s} {'vs best':>7s} {'x² /1k grad':>11s} "
          f"{'vs best':>7s} {'cpu s':>6s}")
    for name, r in rows:
        per, per2 = r["ess_min"] / r["evaluated"], r["ess2_min"] / r["evaluated"]
        gpt = r["evaluated"] / (c * steps)
        print(f"{name:16s} {r['eps']:6.3f} {r['acc']:6.3f} {gpt:11.1f} {r['ess_min']:7.0f} "
              f"{r['ess2_min']:7.0f} {1000 * per:10.2f} {per / base:7.2f} {1000 * per2:11.2f} "
              f"{per2 / base2:7.2f} {r['cpu']:6.1f}")
    print(f"nuts: mean tree depth {depth:.2f}, leapfrog steps {nuts['leapfrog'] / (c * steps):.1f}"
          f" per transition, energy rows evaluated per leapfrog step "
          f"{nuts['evaluated'] / nuts['leapfrog']:.3f}; best hmc: {best[0]} (x), {best2[0]} (x²)")


# --------------------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{platform.node()} {platform.system()} {platform.release()} {platform.machine()}, "
            f"{cpu}, {os.cpu_count()} logical CPUs; python {platform.python_version()}, "
            f"torch {torch.__version__}, intra-op threads {torch.get_num_threads()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chains", type=int, default=64, help="(a) chains")
    ap.add_argument("--warmup", type=int, default=300, help="(a) warm-up steps (step adaptation)")
    ap.add_argument("--budget", type=int, default=4800, help="(a) gradients per chain measured")
    ap.add_argument("--dim", type=int, default=16, help="(b) dimension")
    ap.add_argument("--gauss-chains", type=int, default=16)
    ap.add_argument("--gauss-warmup", type=int, default=300)
    ap.add_argument("--gauss-steps", type=int, default=1000)
    ap.add_argument("--leapfrog", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--jitter", type=float, default=0.2,
                    help="(b) also run each L with this hmc step_jitter (0 = only unjittered)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", choices=("ring", "gaussian"), default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    print("date:   ", datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
    print("machine:", machine())
    if args.only in (None, "ring"):
        bench_ring(args)
    if args.only in (None, "gaussian"):
        bench_gaussian(args)


if __name__ == "__main__":
    main()
