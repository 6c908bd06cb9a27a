"""The anatomy claim as a number: held-out log-likelihood of a convergent vs a non-convergent EBM.

The anatomy paper (Nijkamp et al., AAAI 2020) says convergent ML (persistent chains, long
Langevin runs) learns a valid density, while non-convergent ML (short-run chains from noise)
learns a good short-run *generator* whose energy is not a density of the data. On ``gmm2d``
(8 Gaussians, sd 0.15, exact log-density) this tool trains both regimes from the presets
``toy-gmm-convergent`` and ``toy-gmm-nonconvergent``; the convergent one with **reduced
iterations** (default 1,200 instead of the preset's 4,000: measured 234 ms/iteration on one
loaded CPU thread, so ≈ 5 minutes), the non-convergent one with its preset's 6,000 (23
ms/iteration, ≈ 2.5 minutes), then estimates on fresh held-out draws (another seed than the training set):

* forward AIS ``log Ẑ`` ± SE and the weights' ESS; the held-out log-likelihood
  ``mean(−U(x)) − log Ẑ`` (a stochastic *upper* bound);
* reverse AIS from the held-out points: ``log Z_rev`` (heuristic upper bound on log Z), the
  conservative held-out log-likelihood ``mean(−U(x)) − log Z_rev`` and RAISE's lower bound;
* the model's ``log Z`` by grid integration (2-D: a check on AIS), on two boxes (a growing
  value means mass far from the data: an MLP energy need not be normalisable on ℝ²);
* the true density's held-out log-likelihood (``gmm2d.log_density``);
* ``longrun``'s mixing numbers (ESS and split-R̂ of the energy), when cheap.

The annealing starts from N(0, I) (``base="gaussian"``) for both models: the convergent
preset's uniform prior box [−1, 1]² leaves out much of the data (radius 1 ± 0.15), and the
non-convergent preset's prior is N(0, I) already. So Z is over ℝ² for both.

    cd /work/main && OMP_NUM_THREADS=1 MPLBACKEND=Agg uv run --package ebmkit-likelihood \
        --group test --with matplotlib python tools/likelihood_anatomy.py
    ... tools/likelihood_anatomy.py --conv-iters 4000 --nonconv-iters 6000   # the full presets
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

# Written down BEFORE the first full run (docs/likelihood.md, "Expectation"):
EXPECTATION = {
    # convergent: forward-AIS held-out LL within this many nats of the true density's
    "convergent_ll_within_nats": 0.5,
    # convergent: sandwich (reverse − forward log Z) narrower than this
    "convergent_gap_below_nats": 0.3,
    # non-convergent: forward-AIS held-out LL at least this many nats BELOW the truth,
    # or its sandwich |reverse − forward| wider than `nonconvergent_gap_above_nats`
    "nonconvergent_ll_below_nats": 2.0,
    "nonconvergent_gap_above_nats": 1.0,
}


def grid_log_z(energy, half: float, points: int) -> float:
    """log ∫ exp(−U) over [−half, half]² by the midpoint rule on ``points``² cells."""
    h = 2 * half / points
    t = -half + h * (torch.arange(points, dtype=torch.float64) + 0.5)
    xx, yy = torch.meshgrid(t, t, indexing="xy")
    x = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1).float()
    with torch.no_grad():
        u = torch.cat([energy(x[i:i + 65536]).double() for i in range(0, x.shape[0], 65536)])
    return float(torch.logsumexp(-u, 0) + 2 * math.log(h))


def energy_grid(energy, half: float, points: int):
    t = torch.linspace(-half, half, points)
    xx, yy = torch.meshgrid(t, t, indexing="xy")
    x = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    with torch.no_grad():
        u = energy(x).double().reshape(points, points)
    return t, u


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conv-iters", type=int, default=1200)
    ap.add_argument("--nonconv-iters", type=int, default=6000)
    ap.add_argument("--temperatures", type=int, default=1000)
    ap.add_argument("--chains", type=int, default=512)
    ap.add_argument("--heldout", type=int, default=512, help="held-out points (reverse chains)")
    ap.add_argument("--vs-t", type=int, nargs="*", default=[10, 100, 1000],
                    help="T values for the estimate-vs-T figure (convergent model)")
    ap.add_argument("--longrun-steps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figures", default="docs/figures")
    ap.add_argument("--json", default=None, help="write all numbers here")
    ap.add_argument("--time-only", type=int, default=0,
                    help="train each regime this many iterations, print s/iteration, exit")
    args = ap.parse_args()
    torch.set_num_threads(1)

    import ebmkit
    from ebmkit import build_registry
    from ebmkit_likelihood.ais import ais_log_z, base_distribution, reverse_ais_log_z

    reg = build_registry()
    regimes = {"convergent": ("toy-gmm-convergent", args.conv_iters),
               "non-convergent": ("toy-gmm-nonconvergent", args.nonconv_iters)}

    if args.time_only:
        for name, (preset, _) in regimes.items():
            t0 = time.perf_counter()
            ebmkit.fit(preset=preset, train={"iterations": args.time_only}, registry=reg)
            dt = time.perf_counter() - t0
            print(f"{name}: {args.time_only} iterations in {dt:.1f} s = "
                  f"{1000 * dt / args.time_only:.1f} ms/iteration", flush=True)
        return

    source = reg.create("dataset", "gmm2d", {"seed": 1000})  # not the training seed 0 / test 1
    g = torch.Generator().manual_seed(12345)
    x_held = source.sample(args.heldout, generator=g)
    true_ll = float(source.log_density(x_held).double().mean())
    true_ll_se = float(source.log_density(x_held).double().std() / math.sqrt(args.heldout))
    print(f"held-out: {args.heldout} fresh gmm2d draws; true density's held-out LL "
          f"{true_ll:.4f} ± {true_ll_se:.4f} nats", flush=True)

    results: dict = {"expectation": EXPECTATION, "true_ll": true_ll, "true_ll_se": true_ll_se,
                     "args": vars(args), "models": {}}
    models = {}
    for name, (preset, iters) in regimes.items():
        torch.manual_seed(args.seed)
        t0 = time.perf_counter()
        ebm = ebmkit.fit(preset=preset, train={"iterations": iters}, registry=reg)
        train_s = time.perf_counter() - t0
        models[name] = ebm
        energy = ebm.energy
        energy.eval()
        prior = base_distribution(ebm.prior, "gaussian", 1.0)
        gen = torch.Generator().manual_seed(args.seed)
        t0 = time.perf_counter()
        fwd = ais_log_z(energy, prior, temperatures=args.temperatures, transition="mala",
                        n_chains=args.chains, generator=gen, data=x_held, registry=reg,
                        progress=False)
        rev = reverse_ais_log_z(energy, prior, x_held, temperatures=args.temperatures,
                                step_sizes=fwd.step_sizes, transition="mala", generator=gen,
                                registry=reg, progress=False)
        ais_s = time.perf_counter() - t0
        with torch.no_grad():
            mean_neg_u = float(-energy(x_held).double().mean())
        gz = {f"grid_log_z_{h:g}": grid_log_z(energy, h, 800) for h in (2.5, 5.0)}
        gz["grid_log_z_2.5_fine"] = grid_log_z(energy, 2.5, 1600)
        m = {
            "preset": preset, "iterations": iters, "train_seconds": train_s,
            "ais_seconds": ais_s, "temperatures": args.temperatures, "chains": args.chains,
            "log_z": fwd.log_z, "log_z_se": fwd.log_z_se, "ess": fwd.ess,
            "log_z_single": fwd.log_z_single, "accept_mean": fwd.accept_mean,
            "log_z_reverse": rev.log_z, "log_z_reverse_se": rev.log_z_se, "ess_reverse": rev.ess,
            "log_z_gap": rev.log_z - fwd.log_z,
            "ll_nats": fwd.heldout["ll_nats"], "ll_nats_se": fwd.heldout["ll_nats_se"],
            "ll_nats_reverse": rev.heldout["ll_nats"],
            "ll_raise_nats": rev.heldout["ll_raise_nats"],
            "ll_raise_nats_se": rev.heldout["ll_raise_nats_se"],
            "mean_neg_u": mean_neg_u, **gz,
            "ll_grid_nats": mean_neg_u - gz["grid_log_z_5"],
            "log_w": fwd.log_w.tolist(),
        }
        if args.longrun_steps:
            try:
                t0 = time.perf_counter()
                lr = ebmkit.evaluate(ebm, "longrun", out_dir=None, registry=reg,
                                     config={"n": 64, "steps": args.longrun_steps})
                m["longrun_seconds"] = time.perf_counter() - t0
                for k in ("ess_energy", "rhat_energy", "ess_per_draw", "ess_proj_min",
                          "rhat_proj_max", "energy_data", "energy_short", "energy_long"):
                    if k in lr.metrics:
                        m[f"longrun_{k}"] = float(lr.metrics[k])
                m["longrun_metrics"] = {k: float(v) for k, v in lr.metrics.items()
                                        if isinstance(v, (int, float))}
            except Exception as err:  # noqa: BLE001 - report, do not lose the AIS numbers
                m["longrun_error"] = f"{type(err).__name__}: {err}"
        results["models"][name] = m
        print(f"\n[{name}] {preset}, {iters} iterations: trained in {train_s:.1f} s, "
              f"AIS fwd+rev in {ais_s:.1f} s", flush=True)
        print(f"  log Z  fwd {fwd.log_z:.4f} ± {fwd.log_z_se:.4f} (ESS {fwd.ess:.1f}/{args.chains}, "
              f"mean log w {fwd.log_z_single:.4f})   rev {rev.log_z:.4f} ± {rev.log_z_se:.4f} "
              f"(ESS {rev.ess:.1f})   gap {rev.log_z - fwd.log_z:+.4f}", flush=True)
        print(f"  grid log Z [-2.5,2.5]² {gz['grid_log_z_2.5']:.4f} (fine {gz['grid_log_z_2.5_fine']:.4f})"
              f"   [-5,5]² {gz['grid_log_z_5']:.4f}", flush=True)
        print(f"  held-out LL: fwd (upper) {m['ll_nats']:.4f} ± {m['ll_nats_se']:.4f}   "
              f"rev (lower) {m['ll_nats_reverse']:.4f}   RAISE {m['ll_raise_nats']:.4f} ± "
              f"{m['ll_raise_nats_se']:.4f}   grid {m['ll_grid_nats']:.4f}   truth {true_ll:.4f}",
              flush=True)
        if "longrun_ess_energy" in m or "longrun_error" in m:
            print("  longrun: " + (m.get("longrun_error") or
                  f"ess_energy {m.get('longrun_ess_energy', float('nan')):.1f}  rhat_energy "
                  f"{m.get('longrun_rhat_energy', float('nan')):.3f}  ess_proj_min "
                  f"{m.get('longrun_ess_proj_min', float('nan')):.1f}  rhat_proj_max "
                  f"{m.get('longrun_rhat_proj_max', float('nan')):.3f}  "
                  f"({m['longrun_seconds']:.1f} s)"), flush=True)

    # estimate vs T on the convergent model (grid truth)
    vs_t = []
    conv = models["convergent"]
    truth_c = results["models"]["convergent"]["grid_log_z_5"]
    for T in args.vs_t:
        gen = torch.Generator().manual_seed(args.seed + T)
        prior = base_distribution(conv.prior, "gaussian", 1.0)
        f = ais_log_z(conv.energy, prior, temperatures=T, n_chains=args.chains, generator=gen,
                      registry=reg, progress=False)
        r = reverse_ais_log_z(conv.energy, prior, x_held, temperatures=T, step_sizes=f.step_sizes,
                              generator=gen, registry=reg, progress=False)
        vs_t.append({"T": T, "fwd": f.log_z, "fwd_se": f.log_z_se, "rev": r.log_z,
                     "rev_se": r.log_z_se, "ess": f.ess})
    results["vs_t_convergent"] = {"grid_log_z": truth_c, "rows": vs_t}
    print(f"\nconvergent model, estimate vs T (grid log Z over [-5,5]² = {truth_c:.4f}):")
    for row in vs_t:
        print(f"  T={row['T']:>5}  fwd {row['fwd']:.4f} ± {row['fwd_se']:.4f} (ESS {row['ess']:.1f})"
              f"  rev(data) {row['rev']:.4f} ± {row['rev_se']:.4f}", flush=True)

    # the verdict against the expectation
    c, n = results["models"]["convergent"], results["models"]["non-convergent"]
    e = EXPECTATION
    conv_ok = (abs(c["ll_nats"] - true_ll) <= e["convergent_ll_within_nats"]
               and c["log_z_gap"] <= e["convergent_gap_below_nats"])
    non_ok = (n["ll_nats"] <= true_ll - e["nonconvergent_ll_below_nats"]
              or abs(n["log_z_gap"]) >= e["nonconvergent_gap_above_nats"])
    results["verdict"] = {"convergent_held": conv_ok, "nonconvergent_held": non_ok}
    print(f"\nexpectation {e}\n  convergent: |LL − truth| = {abs(c['ll_nats'] - true_ll):.3f}, "
          f"gap {c['log_z_gap']:.3f} -> {'HELD' if conv_ok else 'DID NOT HOLD'}\n"
          f"  non-convergent: truth − LL = {true_ll - n['ll_nats']:.3f}, gap {n['log_z_gap']:.3f}"
          f" -> {'HELD' if non_ok else 'DID NOT HOLD'}", flush=True)

    _figures(Path(args.figures), results, models, source, x_held)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def _figures(out: Path, results, models, source, x_held) -> None:
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    true_ll = results["true_ll"]
    # 1. densities: truth and the two models, normalised with their grid log Z
    fig, ax = plt.subplots(1, 3, figsize=(11, 3.6))
    t = torch.linspace(-2, 2, 200)
    xx, yy = torch.meshgrid(t, t, indexing="xy")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    panels = [("true gmm2d density", source.log_density(pts).double().reshape(200, 200))]
    for name, ebm in models.items():
        with torch.no_grad():
            u = ebm.energy(pts).double().reshape(200, 200)
        panels.append((f"{name}: exp(−U)/Z (grid Z)", -u - results["models"][name]["grid_log_z_5"]))
    for a, (title, logp) in zip(ax, panels, strict=True):
        im = a.imshow(logp.exp().numpy(), origin="lower", extent=(-2, 2, -2, 2), cmap="viridis")
        a.set_title(title, fontsize=9)
        fig.colorbar(im, ax=a, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out / "likelihood-anatomy-densities.png", dpi=110)
    plt.close(fig)

    # 2. the sandwich: held-out LL per model, both bounds, RAISE, grid, truth
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (name, m) in enumerate(results["models"].items()):
        a = ax[i]
        vals = [("fwd AIS (upper)", m["ll_nats"]), ("rev AIS (lower)", m["ll_nats_reverse"]),
                ("RAISE", m["ll_raise_nats"]), ("grid", m["ll_grid_nats"])]
        for j, (lab, v) in enumerate(vals):
            a.plot([j], [v], "o", label=f"{lab}: {v:.2f}")
        a.axhline(true_ll, color="k", ls="--", lw=1, label=f"true density: {true_ll:.2f}")
        a.set_xticks(range(len(vals)), [v[0] for v in vals], fontsize=7)
        a.set_ylabel("held-out log-likelihood (nats)")
        a.set_title(f"{name} ({m['iterations']} it.)", fontsize=9)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "likelihood-anatomy-sandwich.png", dpi=110)
    plt.close(fig)

    # 3. AIS log-weight distributions
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.4))
    for a, (name, m) in zip(ax, results["models"].items(), strict=True):
        lw = torch.tensor(m["log_w"])
        a.hist(lw.numpy(), bins=40)
        a.axvline(m["log_z"], color="r", lw=1, label=f"log mean w = {m['log_z']:.2f}")
        a.axvline(m["grid_log_z_5"], color="k", ls="--", lw=1,
                  label=f"grid log Z = {m['grid_log_z_5']:.2f}")
        a.set_title(f"{name}: forward log w (T={m['temperatures']}, ESS {m['ess']:.0f}/{m['chains']})",
                    fontsize=9)
        a.set_xlabel("log w")
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "likelihood-anatomy-logw.png", dpi=110)
    plt.close(fig)

    # 4. estimate vs T (convergent model)
    v = results["vs_t_convergent"]
    if v["rows"]:
        fig, a = plt.subplots(figsize=(5, 3.4))
        T = [r["T"] for r in v["rows"]]
        a.errorbar(T, [r["fwd"] for r in v["rows"]], [r["fwd_se"] for r in v["rows"]],
                   marker="o", label="forward AIS")
        a.errorbar(T, [r["rev"] for r in v["rows"]], [r["rev_se"] for r in v["rows"]],
                   marker="s", label="reverse AIS (held-out data)")
        a.axhline(v["grid_log_z"], color="k", ls="--", lw=1, label="grid log Z")
        a.set_xscale("log")
        a.set_xlabel("annealing steps T")
        a.set_ylabel("log Z")
        a.set_title("convergent gmm2d model: estimate vs T", fontsize=9)
        a.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "likelihood-ais-vs-T.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    main()
