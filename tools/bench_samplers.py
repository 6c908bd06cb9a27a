"""Cost of K sampler steps relative to the short-run paper's plain PyTorch loop.

Baseline (short-run paper, App. 7.3, measured in the same run on the same module)::

    x = Variable(x0, requires_grad=True)
    for k in range(K):
        g = autograd.grad(f(x).sum(), [x], retain_graph=True)[0]
        x.data += g + 1e-2 * randn_like(x)

Rows: ``langevin`` (grad_coef 1, noise_std 0.01: the same chain), ``langevin`` with
``memory_format=preserve`` (the fp32 contiguous reference layout), ``langevin`` with
``precision=bf16`` (autocast; not the reference, shown for scale), ``mala`` (K steps), and
``hmc`` with L leapfrog steps for K/L transitions (the same number of gradients). Variants are
interleaved, each repeated ``--reps`` times. On the CPU, ratios use the median *CPU time* of the
process (``time.process_time``), which other processes on a shared machine barely disturb; the
median wall time is shown beside it. On CUDA both are wall time.

Targets (samplers issue): langevin ≤ 0.9× baseline; mala ≤ 1.1× langevin; hmc per gradient
≤ 1.1× langevin.

    .venv/bin/python tools/bench_samplers.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from ebmkit.builtin.samplers import HMC, MALA, Langevin
from ebmkit.params import build
from ebmkit.plugins import build_registry


def baseline(f, x0, k):
    x_k = x0.clone().requires_grad_(True)
    for _ in range(k):
        f_prime = torch.autograd.grad(f(x_k).sum(), [x_k], retain_graph=True)[0]
        x_k.data += f_prime + 1e-2 * torch.randn_like(x_k)
    return x_k.detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nf", type=int, default=32, help="ConvNet width (paper: 32, 64, 128)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--k", type=int, default=20, help="gradient evaluations per chain run")
    ap.add_argument("--leapfrog", type=int, default=5, help="HMC leapfrog steps L (divides k)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)

    cls = build_registry().get("energy", "convnet32")
    torch.manual_seed(0)
    f = cls(build(cls.Config, {"nf": args.nf}), (3, 32, 32)).to(dev).eval()
    x0 = torch.rand(args.batch, 3, 32, 32, device=dev) * 2 - 1
    k, L = args.k, args.leapfrog

    def sampler(c, **cfg):
        return c(build(c.Config, cfg, where="sampler"))

    ula = sampler(Langevin, grad_coef=1.0, noise_std=0.01)
    ula_ref = sampler(Langevin, grad_coef=1.0, noise_std=0.01, memory_format="preserve")
    ula_bf16 = sampler(Langevin, grad_coef=1.0, noise_std=0.01, precision="bf16")
    mala = sampler(MALA, step_size=0.01)
    hmc = sampler(HMC, step_size=0.01, leapfrog_steps=L)
    gen = torch.Generator(device=dev).manual_seed(0)
    variants = {
        "baseline (paper loop)": (lambda: baseline(f, x0, k), k),
        "langevin": (lambda: ula.run(f, x0, k, generator=gen), k),
        "langevin, preserve layout": (lambda: ula_ref.run(f, x0, k, generator=gen), k),
        "langevin, bf16 autocast": (lambda: ula_bf16.run(f, x0, k, generator=gen), k),
        "mala": (lambda: mala.run(f, x0, k, generator=gen), k + 1),
        f"hmc (L={L})": (lambda: hmc.run(f, x0, k // L, generator=gen), (k // L) * L + 1),
    }

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for fn, _ in variants.values():  # warm-up
        fn()
    cpu_clock = time.process_time if dev.type == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {n: [] for n in variants}
    walls: dict[str, list[float]] = {n: [] for n in variants}
    names = list(variants)
    for r in range(args.reps):
        for n in names[r % len(names):] + names[: r % len(names)]:  # rotate the order
            sync()
            t, w = cpu_clock(), time.perf_counter()
            variants[n][0]()
            sync()
            times[n].append(cpu_clock() - t)
            walls[n].append(time.perf_counter() - w)

    med = {n: statistics.median(v) for n, v in walls.items()}
    best = {n: statistics.median(v) for n, v in times.items()}
    per_grad = {n: best[n] / variants[n][1] for n in variants}
    base = best["baseline (paper loop)"]
    print(f"convnet32 nf={args.nf}, batch {args.batch}, K={k} gradients, {args.reps} reps, "
          f"torch {torch.__version__}, {args.threads} thread(s), device {dev}")
    print(f"{'variant':<28}{'cpu s':>8}{'wall s':>10}{'grads':>7}{'vs baseline':>13}"
          f"{'(wall)':>10}{'per grad vs langevin':>22}")
    for n in variants:
        print(f"{n:<28}{best[n]:>8.3f}{med[n]:>10.3f}{variants[n][1]:>7}"
              f"{best[n] / base:>12.2f}x{med[n] / med['baseline (paper loop)']:>9.2f}x"
              f"{per_grad[n] / per_grad['langevin']:>21.2f}x")
    lv = best["langevin"] / base
    ma = best["mala"] / best["langevin"]
    hm = per_grad[f"hmc (L={L})"] / (best["langevin"] / k)
    print(f"targets: langevin/baseline {lv:.2f} (<= 0.9: {'yes' if lv <= 0.9 else 'NO'}); "
          f"mala/langevin {ma:.2f} (<= 1.1: {'yes' if ma <= 1.1 else 'NO'}); "
          f"hmc per gradient / langevin per gradient {hm:.2f} (<= 1.1: {'yes' if hm <= 1.1 else 'NO'})")


if __name__ == "__main__":
    main()
