"""Benchmark: ebmkit's whole training iteration vs the short-run paper's loop, interleaved.

The baseline is the paper's appendix code (7.3) in plain PyTorch, always fp32: K steps of
``autograd.grad(f(x).sum(), x, retain_graph=True)`` with ``x.data += f' + 0.01 z``, then
``L = f(x+).mean() - f(x-).mean()``, Adam. The ebmkit variants are the real trainer,
``ebmkit.fit`` on the ``quick`` preset with the size overridden (diagnostics, CSV, divergence
guard, the time estimate: everything a user pays) and ``train.precision`` pinned to
``--precision``: fp32 unless asked (the preset's own ``auto`` would pick bf16 on a CPU or GPU
that has it, silently changing what the ratio means). The precision of both sides is printed in
the header and in every ratio line.

Interleaving: every variant runs in its own thread and a baton lets exactly one run at a time,
round robin, one iteration each (the paper loop, then ebmkit fp32, then ebmkit bf16, then the
paper loop again ...), so a noisy shared machine slows all of them alike. Ratios use medians;
on the CPU the CPU time of the process (``time.process_time``; with the baton only one variant
is working) is shown beside the wall time, on CUDA wall time after a synchronize.

Printed per variant: seconds per iteration, the ratio to the paper loop, image-steps per second
(chains x K / s), peak memory during its iterations (CUDA: ``max_memory_allocated``; CPU: the whole
process's peak RSS, reset before each iteration through ``/proc/self/clear_refs``), the achieved
model GFLOP/s and the model-FLOP utilisation (MFU). Model FLOPs are those of one paper iteration
(K input-gradients of a batch, forward and backward of the loss pass on 2 batches), counted with
``torch.utils.flop_counter`` (convolutions; ≈ 280 GFLOP at nf 32, K 40, batch 64). The peak they
are divided by is the matching precision's: on the CPU a 2048 x 2048 matmul (fp32 and bf16)
timed in the same run, interleaved with the training iterations in the same round robin (median
per matmul, at ``--threads``), with both rates per second of the process's CPU time, which other
jobs on a shared machine do not stretch; on CUDA wall-time rates against the data-sheet dense
peak, bf16 for bf16 and TF32 for fp32 since cuDNN convolutions use TF32 by default
(``--peak-tflops`` overrides).

    python tools/bench_training.py                                   # CPU size: nf 32, K 40, batch 64, fp32
    python tools/bench_training.py --precision fp32,bf16             # both ebmkit precisions in one run
    python tools/bench_training.py --nf 128 --k 100 --iters 2        # the paper's size
    python tools/bench_training.py --device cuda --nf 128 --k 100 --iters 10 --precision bf16
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
from torch import nn

#: dense peak TFLOP/s (bf16, tf32) of GPUs by name fragment, from the vendors' data sheets
PEAKS = {"H200": (989.0, 494.0), "H100": (989.0, 494.0), "A100": (312.0, 156.0),
         "L40S": (362.0, 183.0), "A10G": (70.0, 35.0), "4090": (165.0, 82.6)}


PRECISIONS = ("fp32", "bf16")
GEMM_N = 2048  # side of the square matmul that measures the CPU's peak


def paper_energy(n_c: int, n_f: int) -> nn.Module:
    """The appendix's 32-px ConvNet."""
    l = 0.2  # noqa: E741 - the paper's name
    return nn.Sequential(
        nn.Conv2d(n_c, n_f, 3, 1, 1), nn.LeakyReLU(l),
        nn.Conv2d(n_f, n_f * 2, 4, 2, 1), nn.LeakyReLU(l),
        nn.Conv2d(n_f * 2, n_f * 4, 4, 2, 1), nn.LeakyReLU(l),
        nn.Conv2d(n_f * 4, n_f * 8, 4, 2, 1), nn.LeakyReLU(l),
        nn.Conv2d(n_f * 8, 1, 4, 1, 0))


def paper_step(f: nn.Module, optim: torch.optim.Optimizer, data: torch.Tensor, *, k: int, m: int,
               device: str = "cpu") -> None:
    """One iteration of the appendix code (7.3), as written there (fp32)."""
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


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Baton:
    """Round-robin turns between worker threads: one works, the others wait."""

    def __init__(self, names: list[str], device: str):
        self.names, self.device = names, device
        self.live = list(names)
        self.turn = names[0]
        self.cond = threading.Condition()
        self.laps: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names}
        self.t0 = (0.0, 0.0)
        self.error: BaseException | None = None

    def _start(self) -> None:
        _sync(self.device)
        _reset_peak(self.device)
        self.t0 = (time.perf_counter(), time.process_time())

    def wait(self, name: str) -> None:
        with self.cond:
            while self.turn != name:
                self.cond.wait()
            self._start()

    def _pass(self, name: str) -> None:
        i = self.live.index(name)
        nxt = self.live[(i + 1) % len(self.live)]
        self.turn = nxt
        self.cond.notify_all()

    def lap(self, name: str) -> None:
        _sync(self.device)
        wall, cpu = time.perf_counter() - self.t0[0], time.process_time() - self.t0[1]
        self.laps[name].append((wall, cpu, _peak_mib(self.device)))
        with self.cond:
            if len(self.live) > 1:
                self._pass(name)
                while self.turn != name:
                    self.cond.wait()
        self._start()

    def finish(self, name: str) -> None:
        with self.cond:
            if name in self.live:
                if len(self.live) > 1:
                    self._pass(name)
                self.live.remove(name)
            self.cond.notify_all()


def paper_worker(baton: Baton, name: str, data: torch.Tensor, *, nf: int, k: int, m: int,
                 iters: int, device: str) -> None:
    baton.wait(name)
    data = data.to(device)
    torch.manual_seed(0)
    f = paper_energy(data.shape[1], nf).to(device)
    optim = torch.optim.Adam(f.parameters(), lr=1e-4, betas=(0.9, 0.999))
    for _ in range(iters):
        paper_step(f, optim, data, k=k, m=m, device=device)
        baton.lap(name)


def ebmkit_worker(baton: Baton, name: str, *, nf: int, k: int, m: int, iters: int, limit: int,
                  device: str, precision: str) -> None:
    from ebmkit import LambdaCallback, fit
    from ebmkit.plugins import build_registry
    from ebmkit.runconfig import build_document, resolve

    baton.wait(name)
    reg = build_registry()
    doc = build_document(preset_doc=reg.get("preset", "quick").read(), overrides=[
        f"energy.nf={nf}", f"sampler.steps={k}", f"train.batch_size={m}", f"train.iterations={iters}",
        f"data.limit={limit}", "train.sample_every=0", "train.checkpoint_every=0", "train.plots=false",
        "train.tensorboard=off", f"train.device={device}", f"train.precision={precision}",
        "train.grid_size=16"])
    spec = resolve(doc, reg)
    with tempfile.TemporaryDirectory() as tmp:
        fit(config=spec, out_dir=tmp, force=True, registry=spec.registry,
            callbacks=[LambdaCallback(on_step_end=lambda run, out: baton.lap(name))])


def model_flops(nf: int, k: int, m: int, channels: int, device: str) -> float:
    """FLOPs of one paper iteration (K input-gradients of a batch, the loss pass on 2 batches).

    The chain's ``x`` is a non-leaf (``x0 * 1``): FlopCounterMode's module tracker puts a
    multi-grad hook on module inputs, and autograd.grad() rejects a hook on a leaf input
    (torch 2.15: "A leaf node was passed to _will_engine_execute_node"). The count is the same.
    """
    from torch.utils.flop_counter import FlopCounterMode

    f = paper_energy(channels, nf).to(device)
    x0 = torch.rand(m, channels, 32, 32, device=device, requires_grad=True)
    x = x0 * 1
    with FlopCounterMode(display=False) as fc:
        torch.autograd.grad(f(x).sum(), [x])
    step = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        (f(x.detach()).mean() - f(x.detach()).mean()).backward()
    return float(k * step + fc.get_total_flops())


def gemm_worker(baton: Baton, name: str, *, dtype: torch.dtype, iters: int, device: str, **_) -> None:
    """One ``GEMM_N`` square matmul per turn: the peak the CPU MFU is measured against."""
    baton.wait(name)
    a = torch.randn(GEMM_N, GEMM_N, dtype=dtype, device=device)
    b = torch.randn(GEMM_N, GEMM_N, dtype=dtype, device=device)
    for _ in range(iters):
        torch.mm(a, b)
        baton.lap(name)


def run_worker(baton: Baton, name: str, target, **kw) -> None:
    try:
        target(baton, name, **kw)
    except BaseException as exc:  # report, and let the others go on
        baton.error = exc
        raise
    finally:
        baton.finish(name)


def parse_precisions(text: str) -> list[str]:
    out = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in out if p not in PRECISIONS]
    if not out or bad:
        raise SystemExit(f"--precision: expected fp32, bf16 or fp32,bf16, got {text!r}")
    return list(dict.fromkeys(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nf", type=int, default=32)
    ap.add_argument("--k", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=8, help="timed iterations per variant")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed first iterations per variant (>= 1: the first holds ebmkit's setup)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (every variant runs there)")
    ap.add_argument("--precision", default="fp32",
                    help="train.precision of the ebmkit variant(s): fp32 (default), bf16, or fp32,bf16 "
                         "for both; the paper loop is always fp32")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="CUDA device peak for the MFU (default: from the GPU's name)")
    args = ap.parse_args()
    if args.warmup < 1 or args.iters < 1:
        raise SystemExit("--warmup and --iters must be at least 1")
    precisions = parse_precisions(args.precision)
    torch.set_num_threads(args.threads)
    device = args.device
    cuda = device.startswith("cuda")

    from ebmkit.builtin.datasets import MNIST5k

    data = MNIST5k(MNIST5k.Config(resolution=32, channels=1, limit=1000)).open().tensors[0]
    n = args.warmup + args.iters
    base_name = "paper loop (fp32)"
    variants = {base_name: ("fp32", paper_worker, dict(data=data))}
    for p in precisions:
        variants[f"ebmkit.fit ({p})"] = (p, ebmkit_worker, dict(limit=1000, precision=p))
    gemms = {} if cuda else {f"matmul ({p})": (p, gemm_worker, dict(dtype=dt))
                             for p, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    everything = {**variants, **gemms}
    baton = Baton(list(everything), device)
    threads = [threading.Thread(target=run_worker, args=(baton, name, fn),
                                kwargs=dict(nf=args.nf, k=args.k, m=args.batch, iters=n, device=device, **kw))
               for name, (_, fn, kw) in everything.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if baton.error is not None:
        raise SystemExit(f"a variant failed: {baton.error!r}")

    def median(name: str, i: int) -> float:
        return statistics.median(x[i] for x in baton.laps[name][args.warmup:])

    flops = model_flops(args.nf, args.k, args.batch, data.shape[1], device)
    # rates on the CPU per CPU second: another job on a shared core stretches the wall time of a
    # matmul and of a training iteration alike only on average; the process's CPU time not at all
    clock, clock_name = (0, "wall time") if cuda else (1, "CPU time")
    peaks: dict[str, float] = {}  # GFLOP/s by precision
    if cuda:
        gpu = torch.cuda.get_device_name()
        sheet = next((v for key, v in PEAKS.items() if key in gpu), None)
        for i, p in enumerate(("bf16", "fp32")):
            if args.peak_tflops or sheet:
                peaks[p] = (args.peak_tflops or sheet[i]) * 1e3
        peak_what = {"bf16": "bf16 dense (data sheet)", "fp32": "TF32 dense (data sheet)"}
        if args.peak_tflops:
            peak_what = {p: "--peak-tflops" for p in peak_what}
    else:
        for name, (p, _, _) in gemms.items():
            peaks[p] = 2 * GEMM_N**3 / median(name, clock) / 1e9
        peak_what = {p: f"{GEMM_N}x{GEMM_N} {p} matmul, this run" for p in PRECISIONS}

    print(f"convnet32 nf={args.nf} K={args.k} batch={args.batch} device={device} threads={args.threads} "
          f"torch {torch.__version__} timed iterations={args.iters} (+{args.warmup} warm-up) each, interleaved"
          + (f" gpu={torch.cuda.get_device_name()}" if cuda else f" cpus={os.cpu_count()}"))
    print(f"precision: paper loop fp32 (baseline, always); ebmkit.fit train.precision="
          f"{', '.join(precisions)} (pinned; the quick preset's 'auto' is overridden)")
    print(f"model FLOPs per iteration: {flops / 1e9:.1f} GFLOP (torch.utils.flop_counter)")
    if not cuda:
        print(f"GEMM peak (median {clock_name} of the interleaved matmuls): "
              + ", ".join(f"{p} {peaks[p]:.1f} GFLOP/s" for p in PRECISIONS))
    head = (f"{'variant':18s} {'s/iter':>8s} {'ratio':>7s} {'CPU s':>7s} {'ratio':>7s} "
            f"{'img-steps/s':>12s} {'peak MiB':>9s} {'GFLOP/s':>8s} {'MFU':>6s}")
    print(head)
    bw, bc = median(base_name, 0), median(base_name, 1)
    for name, (p, _, _) in variants.items():
        wall, cpu = median(name, 0), median(name, 1)
        mem = max(x[2] for x in baton.laps[name][args.warmup:])
        rate = flops / median(name, clock) / 1e9
        mfu = f"{rate / peaks[p]:6.1%}" if p in peaks else f"{'?':>6s}"
        print(f"{name:18s} {wall:8.3f} {wall / bw:6.3f}x {cpu:7.3f} {cpu / bc:6.3f}x "
              f"{args.batch * args.k / wall:12.0f} {mem:9.0f} {rate:8.1f} {mfu}")
    for name in variants:
        if name != base_name:
            print(f"ratio {name} / {base_name}: {median(name, 0) / bw:.3f}x wall, "
                  f"{median(name, 1) / bc:.3f}x CPU time")
    for name, (p, _, _) in variants.items():
        if p in peaks:
            rate = flops / median(name, clock) / 1e9
            print(f"MFU {name}: {rate:.1f} GFLOP/s ({clock_name}) = {rate / peaks[p]:.1%} of "
                  f"{peaks[p]:.1f} GFLOP/s ({peak_what[p]})")
        else:
            print(f"MFU {name}: peak unknown for this GPU; pass --peak-tflops")


if __name__ == "__main__":
    main()
