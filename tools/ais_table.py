"""AIS against ground truth: log Ẑ (forward, from p₀) and the reverse bound (from exact samples)
versus the number of annealing steps T, for every target of ``ebmkit_likelihood.targets``.

Columns: the truth (closed form; the 2-D toys also by grid integration, shown when they differ),
forward ``log Ẑ = log mean w`` ± its delta-method SE and the weights' ESS, the single-chain
lower bound ``mean log w``, the reverse estimate ``−log mean w_rev`` ± SE from exact samples
(a stochastic upper bound) with its single-chain bound ``−mean log w_rev``, ``truth − fwd``
(forward AIS is low in expectation) and the BDMC gap ``rev − fwd``. MALA transitions, one per
temperature, step sizes from the pilot pass, sigmoid schedule.

    OMP_NUM_THREADS=1 uv run --package ebmkit-likelihood python tools/ais_table.py
    ... tools/ais_table.py --temperatures 10 100 1000 --chains 512 --transition hmc
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from ebmkit import build_registry
from ebmkit_likelihood.ais import ais_log_z, reverse_ais_log_z
from ebmkit_likelihood.targets import (
    TruncatedGaussianTarget,
    gaussian_target,
    grid_log_z,
    mixture_1d,
    ring8,
    rings,
)


def targets():
    yield gaussian_target(2, 10.0), None
    yield gaussian_target(16, 30.0), None
    yield gaussian_target(64, 100.0), None
    yield TruncatedGaussianTarget(torch.tensor([0.6, -0.4, 0.9]), torch.tensor([0.5, 0.8, 0.3]),
                                  offset=0.3), None
    yield mixture_1d(), ((-6.0, 7.0), 1, 8001)
    yield ring8(), ((-2.5, 2.5), 2, 801)
    yield rings(), ((-5.5, 5.5), 2, 1201)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--temperatures", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--chains", type=int, default=512)
    ap.add_argument("--transition", default="mala")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reg = build_registry()
    head = (f"{'target':<22} {'D':>3} {'T':>5} {'truth':>9} {'fwd log Z':>17} {'ESS':>6} "
            f"{'mean lw':>9} {'rev log Z':>17} {'-mean lw_r':>10} {'truth-fwd':>9} "
            f"{'rev-fwd':>8} {'sec':>5}")
    print(f"{args.transition}, {args.chains} chains each way, seed {args.seed}; "
          "fwd/rev ± delta-method SE")
    print(head)
    print("-" * len(head))
    for target, grid in targets():
        truth = target.log_z
        note = ""
        if grid is not None:
            bounds, dim, points = grid
            g_truth = grid_log_z(target, bounds, dim=dim, points=points)
            note = f"  (grid {g_truth:.6f})" if abs(g_truth - truth) > 1e-6 else "  (grid agrees)"
        for T in args.temperatures:
            g = torch.Generator().manual_seed(args.seed + T)
            t0 = time.perf_counter()
            fwd = ais_log_z(target, target.prior, temperatures=T, n_chains=args.chains,
                            transition=args.transition, generator=g, registry=reg, progress=False)
            x = target.sample(args.chains, generator=g)
            rev = reverse_ais_log_z(target, target.prior, x, temperatures=T,
                                    step_sizes=fwd.step_sizes, transition=args.transition,
                                    generator=g, registry=reg, progress=False)
            sec = time.perf_counter() - t0
            print(f"{target.name:<22} {target.dim:>3} {T:>5} {truth:>9.4f} "
                  f"{fwd.log_z:>9.4f} ±{fwd.log_z_se:>6.4f} {fwd.ess:>6.1f} "
                  f"{fwd.log_z_single:>9.4f} {rev.log_z:>9.4f} ±{_se(rev.log_z_se)} "
                  f"{rev.log_z_single:>10.4f} {truth - fwd.log_z:>+9.4f} "
                  f"{rev.log_z - fwd.log_z:>+8.4f} {sec:>5.1f}"
                  + (note if args.temperatures[0] == T else ""), flush=True)


def _se(v: float) -> str:
    return f"{v:>6.4f}" if math.isfinite(v) else f"{'inf':>6}"


if __name__ == "__main__":
    main()
