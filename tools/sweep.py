"""Quality against compute: training recipes at fixed CPU budgets, scored on held-out digits.

    python tools/sweep.py --budgets 120,480 --out sweeps/2026-12-07              # all recipes
    python tools/sweep.py --recipes short-run,replay --budgets 60 --n 500 --out sweeps/x

Every recipe is the ``quick`` preset (the main job) with its own overrides, trained on the 4,000
training digits of ``mnist5k`` (``data.heldout = 1000``, seed 0). One run per recipe goes up to the
largest budget (process CPU seconds, the run's ``cpu_total``: all threads, so on the 2-core CPU
with two threads a budget of 480 CPU-s is about 4 wall minutes); when ``cpu_total`` crosses a
budget the run's state is committed as a complete checkpoint (``snapshots/cpu-<budget>``, with the
persistent chains of replay recipes). Each snapshot is then scored against ``n`` of the 1,000
held-out digits, which no recipe trained on:

* FID and KID (ebmkit-fid, Inception pool3 features: ``ebmkit fid weights``), with the floor
  (``n`` training digits against the same held-out digits) and the ceiling (an untrained energy of
  the same architecture, sampler and K) measured in the same run;
* the classifier confidence: the mean max-probability a logistic regression trained on the 4,000
  training digits (scikit-learn) gives the samples, beside the held-out digits' own.

Samples are drawn as ``ebmkit sample`` would draw them from that checkpoint (``n`` samples, seed 0,
the run's sampling K; replay recipes continue their saved chains). Writes ``sweep.json`` (every
number, the command, the machine, the date), ``sweep.csv`` and ``frontier.png`` (FID against
CPU-minutes and against energy-gradient evaluations, one line per recipe), and prints the table.

This is a benchmark, not a test: the numbers go into docs/recipes.md with the command that made
them.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import ebmkit
import torch

#: name: (what it is, the papers, overrides on the quick preset)
RECIPES: dict[str, tuple[str, str, list[str]]] = {
    "short-run": ("noise-initialised K=40 Langevin (today's quick preset)",
                  "Nijkamp et al. 2019", []),
    "short-run-ema": ("short-run, samples from an EMA (0.999) of the weights",
                      "Du & Mordatch 2019; Gao et al. 2021", ["train.ema=0.999"]),
    "replay": ("replay buffer: 10,000 persistent chains, 5 % noise restarts, K=20",
               "Du & Mordatch 2019; Grathwohl et al. 2020",
               ["init.name=persistent", "init.buffer_size=10000", "init.rejuvenation=0.05",
                "sampler.steps=20"]),
    "replay-ema": ("replay buffer (K=20, 5 % restarts) with an EMA (0.999) of the weights",
                   "Du & Mordatch 2019; Grathwohl et al. 2020",
                   ["init.name=persistent", "init.buffer_size=10000", "init.rejuvenation=0.05",
                    "sampler.steps=20", "train.ema=0.999"]),
    "short-run-k20": ("noise-initialised Langevin with half the steps (K=20), twice the updates",
                      "Nijkamp et al. 2019", ["sampler.steps=20"]),
    "short-run-penalty": ("short-run with the energy-magnitude penalty alpha=1 (IGEBM)",
                          "Du & Mordatch 2019", ["objective.name=ml", "objective.alpha=1.0"]),
    "replay-ema-sn": ("replay-ema with spectral normalisation of every layer",
                      "Miyato et al. 2018; Du & Mordatch 2019",
                      ["init.name=persistent", "init.buffer_size=10000", "init.rejuvenation=0.05",
                       "sampler.steps=20", "train.ema=0.999", "energy.spectral_norm=true"]),
    "drl": ("diffusion recovery likelihood: 6 noise levels, K=30 on each recovery conditional, "
            "progressive sampling from N(0, I) (plugin ebmkit-drl)",
            "Gao et al. 2021",
            ["energy.name=drl-convnet32", "energy.nf=32", "sampler.name=drl-progressive",
             "sampler.steps=0", "init.distribution=gaussian", "objective.name=drl",
             "objective.steps=30", "train.sample_steps=30", "train.data_noise=0"]),
}
HELDOUT = 1000


def _machine() -> dict:
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "threads": torch.get_num_threads()}


class Snapshots(ebmkit.Callback):
    """Commit a complete checkpoint of the run (weights, optimizer, chains) into
    ``root/cpu-<budget>`` when the run's ``cpu_total`` crosses each budget."""

    def __init__(self, root: Path, budgets: list[float]):
        self.root, self.pending = root, sorted(budgets)
        self.taken: list[dict] = []

    def on_step_end(self, run, out):
        while self.pending and run.compute["cpu_total"] >= self.pending[0]:
            budget = self.pending.pop(0)
            where = self.root / f"cpu-{int(budget)}"
            shutil.rmtree(where, ignore_errors=True)
            mgr = ebmkit.CheckpointManager(where, keep=1)
            run_toml = run.config.to_toml()
            where.mkdir(parents=True, exist_ok=True)
            (where / "run.toml").write_text(run_toml)
            mgr.save(run)
            self.taken.append({"budget_cpu_sec": budget, "dir": str(where), "step": run.step,
                               **{k: float(v) for k, v in run.compute.items()},
                               "wall_sec": time.perf_counter() - self.t0})

    def on_fit_start(self, run):
        self.t0 = time.perf_counter()


def train(recipe: str, budgets: list[float], out: Path, threads: int) -> list[dict]:
    _, _, overrides = RECIPES[recipe]
    cfg = ebmkit.RunConfig.from_preset("quick").with_overrides(
        f"data.heldout={HELDOUT}", "train.iterations=1000000", f"train.cpu_budget={max(budgets)}",
        "train.sample_every=0", "train.checkpoint_every=0", f"train.threads={threads}",
        "train.plots=false", "train.tensorboard=off", *overrides)
    snaps = Snapshots(out / recipe / "snapshots", budgets)
    ebmkit.fit(config=cfg, out_dir=out / recipe / "run", callbacks=[snaps], force=True,
               progress=sys.stderr.isatty())
    return snaps.taken


class Scorer:
    """FID/KID against ``n`` held-out digits; classifier confidence."""

    def __init__(self, n: int, feature_extractor: str, kid_subset_size: int):
        from ebmkit_fid import Setup
        from sklearn.linear_model import LogisticRegression

        data = ebmkit.RunConfig.from_preset("quick").with_overrides(
            f"data.heldout={HELDOUT}").data_source()
        tr, ho = data.open(split="train"), data.open(split="heldout")
        g = torch.Generator().manual_seed(0)
        self.reference = ho.tensors[0][torch.randperm(len(ho), generator=g)[:n]]
        self.floor_images = tr.tensors[0][torch.randperm(len(tr), generator=g)[:n]]
        self.n = n
        self.setup = Setup(feature_extractor=feature_extractor, kid_subset_size=kid_subset_size)
        t0 = time.perf_counter()
        self.clf = LogisticRegression(max_iter=300, C=0.05)
        self.clf.fit(tr.tensors[0].flatten(1).numpy(), tr.tensors[1].numpy())
        acc = self.clf.score(ho.tensors[0].flatten(1).numpy(), ho.tensors[1].numpy())
        self.classifier = {"held_out_accuracy": float(acc), "fit_sec": time.perf_counter() - t0,
                           "held_out_confidence": self.confidence(ho.tensors[0])}

    def confidence(self, x: torch.Tensor) -> float:
        p = self.clf.predict_proba(x.clamp(-1, 1).flatten(1).numpy())
        return float(p.max(1).mean())

    def score(self, x: torch.Tensor) -> dict:
        from ebmkit_fid import score

        r = score(x, self.reference, ["fid", "kid"], self.setup)
        return {"fid": float(r["fid"]), "kid_mean": float(r["kid_mean"]),
                "kid_std": float(r["kid_std"]), "confidence": self.confidence(x)}


def plot(rows: list[dict], refs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        mine = sorted((r for r in rows if r["recipe"] == recipe), key=lambda r: r["cpu_total"])
        axes[0].plot([r["cpu_total"] / 60 for r in mine], [r["fid"] for r in mine], "o-", label=recipe)
        axes[1].plot([r["grad_evals"] for r in mine], [r["fid"] for r in mine], "o-", label=recipe)
    for ax in axes:
        ax.axhline(refs["floor"]["fid"], color="k", ls=":", lw=1, label="floor (real digits)")
        ax.axhline(refs["ceiling"]["fid"], color="gray", ls="--", lw=1, label="ceiling (untrained)")
        ax.set_ylabel(f"FID vs {refs['n']} held-out digits")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_xlabel("CPU minutes (process CPU time, all threads)")
    axes[1].set_xlabel("energy-gradient evaluations (examples)")
    axes[1].set_xscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle("mnist5k 32 px: sample quality against compute")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", default="all", help=f"comma list of: {', '.join(RECIPES)} (or all)")
    ap.add_argument("--budgets", default="120,480", help="CPU-second budgets, comma-separated")
    ap.add_argument("--n", type=int, default=500, help="samples and held-out digits per FID")
    ap.add_argument("--kid-subset-size", type=int, default=250)
    ap.add_argument("--feature-extractor", default="inception-v3-compat",
                    help="ebmkit-fid feature extractor ('ebmkit-pixels' for a weight-free smoke run)")
    ap.add_argument("--threads", type=int, default=2, help="train.threads of every run")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--score-only", action="store_true", help="score the snapshots already in --out")
    a = ap.parse_args(argv)
    recipes = list(RECIPES) if a.recipes == "all" else a.recipes.split(",")
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        ap.error(f"unknown recipe(s) {', '.join(unknown)}; known: {', '.join(RECIPES)}")
    budgets = sorted(float(b) for b in a.budgets.split(","))
    a.out.mkdir(parents=True, exist_ok=True)
    started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    snaps: dict[str, list[dict]] = {}
    for recipe in recipes:
        if a.score_only:
            snaps[recipe] = json.loads((a.out / recipe / "snapshots.json").read_text())
            continue
        print(f"[sweep] training {recipe} to {max(budgets):g} CPU-s ...", flush=True)
        snaps[recipe] = train(recipe, budgets, a.out, a.threads)
        (a.out / recipe / "snapshots.json").write_text(json.dumps(snaps[recipe], indent=1))

    torch.set_num_threads(a.threads)
    scorer = Scorer(a.n, a.feature_extractor, a.kid_subset_size)
    first = ebmkit.load(snaps[recipes[0]][0]["dir"])
    torch.manual_seed(0)
    untrained = ebmkit.model_from(first.config.energy(first.shape), first.sampler,
                                  "noise", steps=first.steps)
    refs = {"n": a.n, "floor": scorer.score(scorer.floor_images),
            "ceiling": scorer.score(untrained.sample(a.n, seed=0)),
            "classifier": scorer.classifier}
    rows = []
    for recipe in recipes:
        for s in snaps[recipe]:
            model = ebmkit.load(s["dir"])
            t0 = time.perf_counter()
            x = model.sample(a.n, seed=0)
            row = {"recipe": recipe, **s, "sample_sec": time.perf_counter() - t0,
                   "sampling_k": model.steps, **scorer.score(x)}
            rows.append(row)
            print(f"[sweep] {recipe:18s} {s['budget_cpu_sec']:>6.0f} CPU-s  step {s['step']:>5d}  "
                  f"FID {row['fid']:7.1f}  KID {row['kid_mean']:.4f}  conf {row['confidence']:.3f}",
                  flush=True)
    doc = {"command": "python tools/sweep.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "started": started, "machine": _machine(), "budgets_cpu_sec": budgets,
           "recipes": {r: {"what": RECIPES[r][0], "papers": RECIPES[r][1], "overrides": RECIPES[r][2]}
                       for r in recipes},
           "references": refs, "rows": rows}
    (a.out / "sweep.json").write_text(json.dumps(doc, indent=1))
    keys = ["recipe", "budget_cpu_sec", "step", "cpu_total", "wall_sec", "grad_evals",
            "image_steps", "fid", "kid_mean", "kid_std", "confidence"]
    with open(a.out / "sweep.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    plot(rows, refs, a.out / "frontier.png")
    print(f"floor FID {refs['floor']['fid']:.1f}, ceiling FID {refs['ceiling']['fid']:.1f}, "
          f"held-out confidence {refs['classifier']['held_out_confidence']:.3f} "
          f"(classifier accuracy {refs['classifier']['held_out_accuracy']:.3f})")
    print(f"wrote {a.out / 'sweep.json'}, {a.out / 'sweep.csv'}, {a.out / 'frontier.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
