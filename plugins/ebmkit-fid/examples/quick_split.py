"""The numbers of docs/evaluation.md ("FID and KID of the quick model").

    python plugins/ebmkit-fid/examples/quick_split.py runs/quick --n 500

The 5,000 embedded digits (`mnist5k`) are split by a seeded random permutation (seed 0) into
4,000 + 1,000; `mnist5k` has no split option, and its `data.limit` takes the *first* N digits,
which are sorted by class (the first 4,000 are the digits 0-7), so it cannot make a held-out set.
Against ``n`` digits of the 1,000 part (the reference) the script prints FID and KID
(Inception pool3 features) of (1) the model's samples, (2) ``n`` digits of the 4,000 part (the
floor: real digits against real digits), (3) samples of an untrained energy with the model's
architecture, sampler and K (the ceiling); and the reconstruction MSE of digits of the 1,000 part
by the trained and the untrained energy. A model trained on all 5,000 digits (the `quick`
preset) has seen the 1,000 part: then it is not held out, and the output says so.
Writes ``--out/quick_split.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ebmkit
import torch
from ebmkit_fid import Setup, score


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--n", type=int, default=500, help="images per set")
    ap.add_argument("--kid-subset-size", type=int, default=250)
    ap.add_argument("--recon", type=int, default=16, help="digits reconstructed")
    ap.add_argument("--recon-iterations", type=int, default=100)
    ap.add_argument("--feature-extractor", default="inception-v3-compat")
    ap.add_argument("--out", type=Path, default=Path("eval-quick-split"))
    a = ap.parse_args()

    model = ebmkit.load(a.run)
    digits = ebmkit.RunConfig.from_preset("quick").data_source().open().tensors[0]  # all 5,000
    perm = torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))
    part4000, part1000 = digits[perm[:4000]], digits[perm[4000:]]
    seen = model.config.configs["data"].limit is None and model.config.name("data") == "mnist5k"
    print(f"reference: {a.n} of the 1,000-digit part "
          f"({'SEEN in training: the model used all 5,000 digits' if seen else 'held out'})")
    reference, floor = part1000[: a.n], part4000[: a.n]

    torch.manual_seed(0)
    untrained = ebmkit.model_from(model.config.energy(model.shape), model.sampler,
                                  model.initializer, steps=model.steps)
    setup = Setup(feature_extractor=a.feature_extractor, kid_subset_size=a.kid_subset_size)
    rows, info = {}, None
    for label, x in (("model samples", lambda: model.sample(a.n, seed=0)),
                     ("floor: real digits", lambda: floor),
                     ("ceiling: untrained energy", lambda: untrained.sample(a.n, seed=0))):
        t0 = time.perf_counter()
        r = score(x(), reference, ["fid", "kid"], setup)
        info = r["setup"]
        rows[label] = {"fid": r["fid"], "kid_mean": r["kid_mean"], "kid_std": r["kid_std"],
                       "sec": time.perf_counter() - t0}
        print(f"{label:28s} FID {r['fid']:8.2f}   KID {r['kid_mean']:.4f} ± {r['kid_std']:.4f}"
              f"   ({rows[label]['sec']:.0f}s)", flush=True)
    recon = {}
    for label, m in (("model", model), ("untrained energy", untrained)):
        res = ebmkit.evaluate(m, "reconstruction", data=part1000, out_dir=a.out / label.split()[0],
                              config={"n": a.recon, "iterations": a.recon_iterations})
        recon[label] = res.metrics["mse"]
        print(f"reconstruction MSE ({a.recon} digits), {label:17s} {res.metrics['mse']:.4f}", flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "quick_split.json").write_text(json.dumps(
        {"fid_kid_vs_reference": rows, "reconstruction_mse": recon, "n": a.n,
         "reference_seen_in_training": seen, "K": model.steps, "setup": info}, indent=2) + "\n")
    print(f"-> {a.out / 'quick_split.json'}")


if __name__ == "__main__":
    main()
