"""Benchmark: one ebmkit training iteration vs the short-run paper's own training step.

The baseline is the paper's appendix code (7.3) written out in plain PyTorch: K steps of
``autograd.grad(f(x).sum(), x, retain_graph=True)`` with ``x.data += f' + 0.01 z``, then
``L = f(x+).mean() - f(x-).mean()``, Adam. ebmkit runs the same iteration through
``ebmkit.fit`` (the real trainer, with diagnostics, CSV logging and the persistent-free
noise initializer), so the ratio includes every overhead a user pays. Both run in the same
process, interleaved, on the same data, and the script prints medians and the ratio.

    python tools/bench_train_step.py                       # convnet32 nf=32, K=40, batch 64
    python tools/bench_train_step.py --nf 64 --k 100 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch import nn


def paper_energy(n_c: int, n_f: int) -> nn.Module:
    l = 0.2  # noqa: E741 - the paper's name
    return nn.Sequential(
        nn.Conv2d(n_c, n_f, 3, 1, 1), nn.LeakyReLU(l),
        nn.Conv2d(n_f, n_f * 2, 4, 2, 1), nn.LeakyReLU(l),
        nn.Conv2d(n_f * 2, n_f * 4, 4, 2, 1), nn.LeakyReLU(l),
        nn.Conv2d(n_f * 4, n_f * 8, 4, 2, 1), nn.LeakyReLU(l),
        nn.Conv2d(n_f * 8, 1, 4, 1, 0))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def paper_step(f: nn.Module, optim: torch.optim.Optimizer, data: torch.Tensor, *, k: int, m: int,
               device: str = "cpu") -> None:
    """One iteration of the appendix code (7.3), as written there."""
    x_p_d = data[torch.randint(0, len(data), (m,), device=device)] + 0.1 * torch.randn(m, *data.shape[1:], device=device)
    x_k = torch.autograd.Variable(torch.rand(m, *data.shape[1:], device=device) * 2 - 1, requires_grad=True)
    for _ in range(k):
        f_prime = torch.autograd.grad(f(x_k).sum(), [x_k], retain_graph=True)[0]
        x_k.data += f_prime + 1e-2 * torch.randn_like(x_k)
    x_q = x_k.detach()
    loss = f(x_p_d).mean() - f(x_q).mean()
    optim.zero_grad()
    (-loss).backward()
    optim.step()


def paper_iterations(data: torch.Tensor, *, nf: int, k: int, m: int, iters: int,
                     device: str = "cpu") -> list[float]:
    """The appendix loop, timed per iteration."""
    data = data.to(device)
    f = paper_energy(data.shape[1], nf).to(device)
    optim = torch.optim.Adam(f.parameters(), lr=1e-4, betas=(0.9, 0.999))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        paper_step(f, optim, data, k=k, m=m, device=device)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def ebmkit_iterations(*, nf: int, k: int, m: int, iters: int, limit: int,
                      device: str = "cpu") -> list[float]:
    from ebmkit import LambdaCallback, fit
    from ebmkit.plugins import build_registry
    from ebmkit.runconfig import build_document, resolve

    times: list[float] = []
    doc = build_document(preset_doc=build_registry().get("preset", "quick").read(), overrides=[
        f"energy.nf={nf}", f"sampler.steps={k}", f"train.batch_size={m}", f"train.iterations={iters}",
        f"data.limit={limit}", "train.sample_every=0", "train.checkpoint_every=0", "train.plots=false",
        "train.tensorboard=off", f"train.device={device}"])
    spec = resolve(doc, build_registry())
    with tempfile.TemporaryDirectory() as tmp:
        fit(config=spec, out_dir=tmp, force=True, registry=spec.registry,
            callbacks=[LambdaCallback(on_step_end=lambda run, out: times.append(run.row["sec"]))])
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nf", type=int, default=32)
    ap.add_argument("--k", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=6, help="timed iterations per round (first one dropped)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (both loops run there)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from ebmkit.builtin.datasets import ImageConfig, MNIST5k

    data = MNIST5k(ImageConfig(resolution=32, channels=1, limit=1000)).open().tensors[0]
    base, ours = [], []
    for _ in range(args.rounds):
        base += paper_iterations(data, nf=args.nf, k=args.k, m=args.batch, iters=args.iters,
                                 device=args.device)[1:]
        ours += ebmkit_iterations(nf=args.nf, k=args.k, m=args.batch, iters=args.iters, limit=1000,
                                  device=args.device)[1:]
    b, o = statistics.median(base), statistics.median(ours)
    print(f"convnet32 nf={args.nf} K={args.k} batch={args.batch} device={args.device} "
          f"threads={args.threads} torch {torch.__version__}")
    print(f"paper appendix loop : {b * 1000:8.1f} ms / iteration (median of {len(base)})")
    print(f"ebmkit.fit          : {o * 1000:8.1f} ms / iteration (median of {len(ours)})")
    print(f"ratio ebmkit / paper: {o / b:.3f}x")


if __name__ == "__main__":
    main()
