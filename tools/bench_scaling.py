"""Data-parallel scaling of `ebmkit run` from shards: 1 vs 2 processes (CPU, gloo), or 1 GPU.

Each configuration launches the real trainer under torchrun on the same shard set, with a fixed
batch per process (weak scaling: 2 processes do twice the work per update). Reported per run:

* iterations/s (parameter updates per second, after warm-up iterations),
* images sampled/s = processes x batch x iterations/s (negatives x- produced per second),
* Langevin image-steps/s = images sampled/s x K,
* weak-scaling efficiency = (images/s with P processes) / (P x images/s with 1 process).

The baseline is the 1-process run measured in the same invocation. Every process uses one
intra-op thread (torch.set_num_threads(1)), so the CPU numbers compare processes, not threads;
on a machine with fewer free cores than processes the efficiency says so.

    python tools/bench_scaling.py                      # CPU: 1 and 2 processes
    python tools/bench_scaling.py --device cuda --procs 1 --nf 64 --batch 64   # one GPU
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def worker(args) -> None:
    import torch

    torch.set_num_threads(1)
    from ebmkit import LambdaCallback, fit
    from ebmkit.plugins import build_registry
    from ebmkit.runconfig import build_document, resolve

    doc = build_document(
        names={"energy": "convnet32", "sampler": "langevin", "init": "noise", "data": "shards"},
        overrides=[f"data.path={args.pattern}", f"energy.nf={args.nf}", f"sampler.steps={args.steps}",
                   f"train.batch_size={args.batch}", f"train.iterations={args.warmup + args.iters}",
                   f"train.device={args.device}", "train.sample_every=0", "train.checkpoint_every=0",
                   "train.plots=false", f"train.mixed_precision={args.precision}"])
    spec = resolve(doc, build_registry())
    stamps: list[float] = []

    def tick(it, row):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    fit(config=spec, out_dir=Path(args.out) / "run", force=True, registry=spec.registry,
        callbacks=[LambdaCallback(on_step_end=lambda run, out: tick(run.step, run.row))])
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    if rank == 0:
        timed = stamps[args.warmup - 1:]  # intervals after warm-up
        its = (len(timed) - 1) / (timed[-1] - timed[0])
        Path(args.out, "result.json").write_text(json.dumps({"world": world, "it_per_s": its}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_shards(root: Path, n: int, shard_size: int) -> str:
    from ebmkit.builtin.datasets import MNIST5k
    from ebmkit.params import build
    from ebmkit.shards import write_shards

    ds = MNIST5k(build(MNIST5k.Config, {"limit": n})).open()
    m = write_shards(zip(ds.tensors[0], ds.tensors[1].tolist(), strict=True), root, shard_size=shard_size)
    return str(root / m["pattern"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--nf", type=int, default=16, help="ConvNet width")
    p.add_argument("--steps", type=int, default=10, help="Langevin steps K")
    p.add_argument("--batch", type=int, default=32, help="batch (= chains) per process")
    p.add_argument("--iters", type=int, default=20, help="timed iterations")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", default="no", choices=("no", "bf16", "fp16"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pattern", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    tmp = Path(tempfile.mkdtemp(prefix="ebmkit-scaling-"))
    pattern = make_shards(tmp / "shards", 2048, 64)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    rows = []
    for procs in args.procs:
        out = tmp / f"p{procs}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), __file__, "--worker",
               "--pattern", pattern, "--out", str(out)]
        for k in ("device", "nf", "steps", "batch", "iters", "warmup", "precision"):
            cmd += [f"--{k}", str(getattr(args, k))]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(proc.stderr[-4000:])
        res = json.loads((out / "result.json").read_text())
        assert res["world"] == procs, f"asked for {procs} processes, the trainer saw {res['world']}"
        img = procs * args.batch * res["it_per_s"]
        rows.append((procs, res["it_per_s"], img, img * args.steps))
    base = rows[0][2] / rows[0][0]
    print(f"device={args.device} convnet32 nf={args.nf} K={args.steps} batch/process={args.batch} "
          f"timed iterations={args.iters} precision={args.precision} cpus={os.cpu_count()}")
    print("| processes | iterations/s | images sampled/s | Langevin image-steps/s | weak-scaling efficiency |")
    print("|---:|---:|---:|---:|---:|")
    for procs, its, img, steps in rows:
        print(f"| {procs} | {its:.2f} | {img:.1f} | {steps:.0f} | {img / (procs * base):.2f} |")


if __name__ == "__main__":
    main()
