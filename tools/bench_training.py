"""Benchmark: ebmkit's whole training iteration vs the short-run paper's loop, interleaved.

The baseline is the paper's appendix code (7.3) in plain PyTorch, fp32: K steps of
``autograd.grad(f(x).sum(), x, retain_graph=True)`` with ``x.data += f' + 0.01 z``, then
``L = f(x+).mean() - f(x-).mean()``, Adam. The ebmkit variants are the real trainer,
``ebmkit.fit`` on the ``quick`` preset with the size overridden (diagnostics, CSV, divergence
guard, the time estimate: everything a user pays), at ``train.precision`` fp32 and bf16.

Interleaving: every variant runs in its own thread and a baton lets exactly one run at a time,
round robin, one iteration each (the paper loop, then ebmkit fp32, then ebmkit bf16, then the
paper loop again ...), so a noisy shared machine slows all of them alike. Ratios use medians;
on the CPU the CPU time of the process (``time.process_time``; with the baton only one variant
is working) is shown beside the wall time, on CUDA wall time after a synchronize.

Printed per variant: seconds per iteration, the ratio to the paper loop, image-steps per second
(chains x K / s), peak memory during its iterations (CUDA: ``max_memory_allocated``; CPU: the whole
process's peak RSS, reset before each iteration through ``/proc/self/clear_refs``) and, on CUDA,
the model-FLOP utilisation (model FLOPs of one paper iteration, counted with
``torch.utils.flop_counter``, divided by the time and by the device's peak: bf16 dense for bf16,
TF32 for fp32 since cuDNN convolutions use TF32 by default; ``--peak-tflops`` overrides).

    python tools/bench_training.py                                   # CPU size: nf 32, K 40, batch 64
    python tools/bench_training.py --nf 128 --k 100 --iters 2        # the paper's size
    python tools/bench_training.py --device cuda --nf 128 --k 100 --iters 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_train_step import paper_energy, paper_step  # noqa: E402  (the same baseline)

#: dense peak TFLOP/s (bf16, tf32) of GPUs by name fragment, from the vendors' data sheets
PEAKS = {"H200": (989.0, 494.0), "H100": (989.0, 494.0), "A100": (312.0, 156.0),
         "L40S": (362.0, 183.0), "A10G": (70.0, 35.0), "4090": (165.0, 82.6)}


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
    """FLOPs of one paper iteration (K input-gradients of a batch, the loss pass on 2 batches)."""
    from torch.utils.flop_counter import FlopCounterMode

    f = paper_energy(channels, nf).to(device)
    x = torch.rand(m, channels, 32, 32, device=device, requires_grad=True)
    with FlopCounterMode(display=False) as fc:
        torch.autograd.grad(f(x).sum(), [x])
    step = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        (f(x.detach()).mean() - f(x.detach()).mean()).backward()
    return float(k * step + fc.get_total_flops())


def run_worker(baton: Baton, name: str, target, **kw) -> None:
    try:
        target(baton, name, **kw)
    except BaseException as exc:  # report, and let the others go on
        baton.error = exc
        raise
    finally:
        baton.finish(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nf", type=int, default=32)
    ap.add_argument("--k", type=int, default=40)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=8, help="timed iterations per variant")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first iterations per variant")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (every variant runs there)")
    ap.add_argument("--precisions", default="fp32,bf16", help="ebmkit variants (train.precision)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="device peak for the MFU (default: from the GPU's name)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = args.device

    from ebmkit.builtin.datasets import ImageConfig, MNIST5k

    data = MNIST5k(ImageConfig(resolution=32, channels=1, limit=1000)).open().tensors[0]
    n = args.warmup + args.iters
    variants = {"paper loop (fp32)": (paper_worker, dict(data=data))}
    for p in args.precisions.split(","):
        variants[f"ebmkit.fit {p}"] = (ebmkit_worker, dict(limit=1000, precision=p))
    baton = Baton(list(variants), device)
    threads = [threading.Thread(target=run_worker, args=(baton, name, fn),
                                kwargs=dict(nf=args.nf, k=args.k, m=args.batch, iters=n, device=device, **kw))
               for name, (fn, kw) in variants.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if baton.error is not None:
        raise SystemExit(f"a variant failed: {baton.error!r}")

    flops = peak = None
    if device.startswith("cuda"):
        flops = model_flops(args.nf, args.k, args.batch, data.shape[1], device)
        gpu = torch.cuda.get_device_name()
        peak = next((v for key, v in PEAKS.items() if key in gpu), None)
    cuda = device.startswith("cuda")
    print(f"convnet32 nf={args.nf} K={args.k} batch={args.batch} device={device} threads={args.threads} "
          f"torch {torch.__version__} timed iterations={args.iters} (+{args.warmup} warm-up) each, interleaved"
          + (f" gpu={torch.cuda.get_device_name()}" if cuda else f" cpus={os.cpu_count()}"))
    base = None
    head = f"{'variant':22s} {'s/iter':>8s} {'ratio':>7s} {'CPU s':>7s} {'ratio':>7s} {'img-steps/s':>12s} {'peak MiB':>9s}"
    print(head + ("  MFU" if flops else ""))
    for name, laps in baton.laps.items():
        laps = laps[args.warmup:]
        wall = statistics.median(x[0] for x in laps)
        cpu = statistics.median(x[1] for x in laps)
        mem = max(x[2] for x in laps)
        if base is None:
            base = (wall, cpu)
        line = (f"{name:22s} {wall:8.3f} {wall / base[0]:6.3f}x {cpu:7.3f} {cpu / base[1]:6.3f}x "
                f"{args.batch * args.k / wall:12.0f} {mem:9.0f}")
        if flops:
            pk = args.peak_tflops or (peak[0] if peak and "bf16" in name else peak[1] if peak else None)
            line += f"  {flops / wall / (pk * 1e12):.1%} of {pk:g} TFLOP/s" if pk else "  (peak unknown)"
        print(line)
    if flops:
        print(f"model FLOPs per iteration: {flops / 1e9:.1f} GFLOP")


if __name__ == "__main__":
    main()
