"""JEM against a plain classifier of the same architecture, same data, same wall time.

    OMP_NUM_THREADS=1 uv run --package ebmkit-jem python tools/jem_compare.py --minutes 60 \
        --out runs/jem-compare

Both models are the ``jem-cnn`` network of the ``jem-mnist5k`` preset, trained on mnist5k's
training part (4,000 digits; 1,000 held out by the preset's seeded split) for ``--minutes`` of
wall-clock training each, one thread: JEM by ``ebmkit.fit(preset="jem-mnist5k")`` with
``train.time_budget``, the classifier by cross-entropy alone (``ebmkit_jem.train_classifier``,
no chains). Both are then scored on the held-out digits by the plugin's evaluators (accuracy,
calibration, ood, class-samples), the results checked against TARGETS (written before any full
run) and written to ``OUT/compare.json`` with the figures under ``OUT/{jem,plain}/eval``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

#: The targets of issue 26, fixed before the full runs.
TARGETS = {
    "accuracy_gap_max_points": 1.5,      # JEM accuracy >= plain accuracy - 1.5 points
    "ece_lower_than_plain": True,        # JEM ECE < plain ECE
    "logpx_auroc_min": 0.9,              # JEM log p(x) AUROC vs noise and vs inverted digits
    "class_samples_accuracy_min": 0.80,  # JEM conditional samples judged as their class
}
PRESET = "jem-mnist5k"


def check(res: dict) -> dict[str, dict]:
    j, p = res["jem"]["metrics"], res["plain"]["metrics"]
    gap = 100 * (p["accuracy"]["accuracy"] - j["accuracy"]["accuracy"])
    out = {
        "accuracy_within_1.5_points": {
            "value": gap, "target": f"plain - jem <= {TARGETS['accuracy_gap_max_points']} points",
            "ok": gap <= TARGETS["accuracy_gap_max_points"]},
        "ece_lower_than_plain": {
            "value": [j["calibration"]["ece"], p["calibration"]["ece"]], "target": "jem < plain",
            "ok": j["calibration"]["ece"] < p["calibration"]["ece"]},
    }
    for ood in ("noise", "inverted"):
        v = j["ood"][f"logpx/{ood}"]
        out[f"logpx_auroc_{ood}"] = {"value": v, "target": f">= {TARGETS['logpx_auroc_min']}",
                                     "ok": v >= TARGETS["logpx_auroc_min"]}
    v = j["class-samples"]["accuracy"]
    out["class_samples_accuracy"] = {"value": v, "target": f">= {TARGETS['class_samples_accuracy_min']}",
                                     "ok": v >= TARGETS["class_samples_accuracy_min"]}
    return out


def evaluate(ebmkit, model, data, out_dir: Path, args, *, init: str) -> dict:
    cfgs = {"accuracy": {}, "calibration": {},
            "ood": {"n": args.eval_n},
            "class-samples": {"per_class": args.per_class, "steps": args.sample_steps, "init": init}}
    metrics, seconds = {}, {}
    for name, cfg in cfgs.items():
        t = time.perf_counter()
        res = ebmkit.evaluate(model, name, data=data, out_dir=out_dir, config=cfg)
        seconds[name] = time.perf_counter() - t
        metrics[name] = res.metrics
    return {"metrics": metrics, "eval_seconds": seconds}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0, help="training wall time per model")
    ap.add_argument("--out", type=Path, default=Path("runs/jem-compare"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-n", type=int, default=1000, help="in-distribution examples of the ood evaluator")
    ap.add_argument("--per-class", type=int, default=100, help="conditional samples per class judged")
    ap.add_argument("--sample-steps", type=int, default=100, help="SGLD steps of each conditional chain")
    ap.add_argument("--only", choices=("jem", "plain"), help="train and score one model only")
    ap.add_argument("--score-only", action="store_true",
                    help="JEM: score the run already in OUT/jem again (no training; its training "
                         "numbers are read from its diagnostics.csv)")
    args = ap.parse_args(argv)

    import ebmkit
    import torch
    from ebmkit.params import build
    from ebmkit.plugins import build_registry
    from ebmkit_jem import JEMConvNet, train_classifier

    torch.set_num_threads(1)
    reg = build_registry()
    doc = reg.get("preset", PRESET).read()
    budget = args.minutes * 60
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "compare.json"
    res = json.loads(path.read_text()) if args.only and path.is_file() else {}

    def save(key: str, value: dict) -> None:
        """Write one model's entry, merging with what another process (--only) wrote since."""
        if args.only and path.is_file():
            res.update({k: v for k, v in json.loads(path.read_text()).items()
                        if k in ("jem", "plain") and k != key})
        res[key] = value
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(res, indent=2) + "\n")
        tmp.replace(path)

    res.update({"preset": PRESET, "minutes": args.minutes, "seed": args.seed, "targets": TARGETS,
                "torch_threads": torch.get_num_threads(), "args": {k: str(v) for k, v in vars(args).items()}})
    data = reg.create("dataset", doc["data"]["name"], {k: v for k, v in doc["data"].items() if k != "name"})

    if args.only in (None, "jem") and args.score_only:
        import csv

        ebm = ebmkit.load(args.out / "jem")
        with open(args.out / "jem" / "diagnostics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        last = rows[-1]
        run = {"wall_seconds": sum(float(r["sec"]) for r in rows),
               "cpu_seconds": float(last["cpu_total"]), "iterations": int(last["iter"]),
               "last": {k: float(last[k]) for k in ("ce", "acc", "d_t", "e_pos", "e_neg")},
               "rescored": True}
        save("jem", {"train": run, **evaluate(ebmkit, ebm, data, args.out / "jem" / "eval", args,
                                              init="model")})
    elif args.only in (None, "jem"):
        t, c = time.perf_counter(), time.process_time()
        ebm = ebmkit.fit(preset=PRESET, out_dir=args.out / "jem",
                         train={"time_budget": budget, "iterations": 10**7, "seed": args.seed,
                                "threads": 1, "sample_every": 0, "plots": True})
        run = {"wall_seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c,
               "iterations": ebm.step, "last": {k: ebm.last.get(k) for k in ("ce", "acc", "d_t", "e_pos", "e_neg")}}
        ebm.class_grid(10, steps=args.sample_steps, seed=args.seed, path=args.out / "jem" / "class_grid_training_starts.png")
        save("jem", {"train": run, **evaluate(ebmkit, ebm, data, args.out / "jem" / "eval", args,
                                              init="model")})

    if args.only in (None, "plain"):
        torch.manual_seed(args.seed)
        ecfg = build(JEMConvNet.Config, {k: v for k, v in doc["energy"].items() if k != "name"}, where="energy")
        energy = JEMConvNet(ecfg, data.shape)
        x, y = data.open(split="train").tensors
        tr = doc["train"]
        base = train_classifier(energy, x, y, time_budget=budget, batch_size=tr["batch_size"],
                                lr=tr["lr"], data_noise=tr["data_noise"], seed=args.seed)
        model = ebmkit.model_from(energy, sampler=doc["sampler"], init={"name": "noise"})
        save("plain", {"train": {"wall_seconds": base.wall_seconds, "cpu_seconds": base.cpu_seconds,
                                 "iterations": base.iterations, "final_ce": base.final_ce},
                       **evaluate(ebmkit, model, data, args.out / "plain" / "eval", args, init="noise")})

    if "jem" in res and "plain" in res:
        res["checks"] = check(res)
        path.write_text(json.dumps(res, indent=2) + "\n")
        print(f"{'':28s}{'JEM':>10s}{'plain':>10s}")
        for label, key, sub in [("accuracy", "accuracy", "accuracy"), ("ECE", "calibration", "ece"),
                                ("log p(x) AUROC noise", "ood", "logpx/noise"),
                                ("log p(x) AUROC inverted", "ood", "logpx/inverted"),
                                ("log p(x) AUROC constant", "ood", "logpx/constant"),
                                ("log p(x) AUROC other", "ood", "logpx/other"),
                                ("max softmax AUROC noise", "ood", "max_softmax/noise"),
                                ("grad norm AUROC noise", "ood", "grad_norm/noise"),
                                ("class samples judged", "class-samples", "accuracy")]:
            a = res["jem"]["metrics"][key].get(sub, float("nan"))
            b = res["plain"]["metrics"][key].get(sub, float("nan"))
            print(f"{label:28s}{a:10.4f}{b:10.4f}")
        print(f"{'iterations':28s}{res['jem']['train']['iterations']:10d}{res['plain']['train']['iterations']:10d}")
        for name, c in res["checks"].items():
            print(f"{'PASS' if c['ok'] else 'FAIL'}  {name}: {c['value']} (target {c['target']})")
        print(f"wrote {path}")
        return 0 if all(c["ok"] for c in res["checks"].values()) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
