"""The evaluators ``fid``, ``kid``, ``isc`` and ``prc``: model samples against a reference.

The reference is the evaluation dataset (``ebmkit eval --data NAME``, else the run's own), or,
with ``reference=``, a folder of images or another checkpoint (a ``.safetensors`` file or a run
directory). Each evaluator writes ``<name>_metrics.json`` with the numbers and everything needed
to reproduce them (extractor, weights file and sha256, n, seed, K, the reference's content hash).

``score_samples(x, data)`` scores a given batch of samples instead of drawing them (from Python).
The core's ``transition`` evaluator uses these evaluators through ``evaluate`` on a model whose
``sample`` returns the chain states at one K.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ebmkit import EvalResult, Evaluator, param
from ebmkit.errors import DataError
from ebmkit.evaluation import data_batch
from torch import Tensor

from .fidelity import INCEPTION, PIXELS, Setup, check_weights, score

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True, kw_only=True)
class FidelityConfig:
    n: int = param(5000, "Model samples drawn (and at most this many reference images).", min=2)
    seed: int = param(0, "Seed of the model's chains and of the reference subset.")
    reference: str | None = param(
        None, "Compare against: empty = the evaluation dataset (--data, else the run's); a folder "
        "of images; or a checkpoint (.safetensors or run directory).")
    split: str = param("train", "Split of the reference dataset.")
    inception_weights: str | None = param(
        None, "Inception weights file (default: $EBMKIT_INCEPTION_WEIGHTS, torch's hub cache, "
        "then `ebmkit fid import-weights`' file).")
    download: bool = param(False, "Allow downloading torch-fidelity's Inception weights.")
    feature_extractor: str = param(
        INCEPTION, f"torch-fidelity feature extractor; {PIXELS} is a fast weight-free test "
        "extractor (not Inception numbers).")
    batch_size: int = param(64, "Images per feature-extractor batch.", min=1)
    kid_subset_size: int = param(1000, "KID: images per subset (both sets need this many).", min=2)
    kid_subsets: int = param(100, "KID: number of subsets.", min=1)
    prc_neighborhood: int = param(3, "Precision/recall: k of the k-NN manifold.", min=1)
    isc_splits: int = param(10, "Inception Score: splits.", min=1)
    cache: bool = param(True, "Cache reference statistics by content hash (ebmkit fid info).")


class FidelityEvaluator(Evaluator):
    """Shared machinery; subclasses name the metric."""

    Config = FidelityConfig
    metrics: tuple[str, ...] = ()
    needs_reference = True

    def setup(self, device: Any) -> Setup:
        c = self.config
        return Setup(feature_extractor=c.feature_extractor, inception_weights=c.inception_weights,
                     download=c.download, device=device, batch_size=c.batch_size,
                     kid_subset_size=c.kid_subset_size, kid_subsets=c.kid_subsets,
                     prc_neighborhood=c.prc_neighborhood, isc_splits=c.isc_splits, seed=c.seed,
                     cache=c.cache)

    # -- the reference set -------------------------------------------------------------------
    def reference(self, data, n: int, device) -> tuple[Tensor, str]:
        c = self.config
        if c.reference:
            return load_reference(c.reference, n, c.seed, device)
        if data is None:
            raise DataError(f"{self.name} needs reference images: give --data NAME or "
                            f"--set {self.name}.reference=FOLDER|CHECKPOINT")
        shape = tuple(getattr(data, "shape", ()) or ())
        if shape and (len(shape) != 3 or shape[0] not in (1, 3)):
            raise DataError(f"{self.name} needs an image dataset; '{data.name}' has examples of "
                            f"shape {shape}")
        return data_batch(data, n, c.seed, split=c.split), f"dataset {data.name} (split {c.split})"

    def score_samples(self, x: Tensor, data, *, device: Any = None,
                      reference: Tensor | None = None) -> dict[str, Any]:
        """This evaluator's metrics of the samples ``x`` against the reference (see the module);
        the ``"setup"`` entry describes how they were computed."""
        dev = device if device is not None else x.device
        desc = "given"
        if reference is None and self.needs_reference:
            reference, desc = self.reference(data, self.config.n, dev)
        out = score(x, reference if self.needs_reference else None, self.metrics, self.setup(dev))
        out["setup"]["reference"] = desc if self.needs_reference else None
        return out

    def evaluate(self, model, data, out_dir):
        c = self.config
        if len(model.shape) != 3 or model.shape[0] not in (1, 3):
            raise DataError(f"{self.name} needs an image model; this one makes examples of shape "
                            f"{tuple(model.shape)}")
        ref = desc = None
        if self.needs_reference:
            ref, desc = self.reference(data, c.n, model.device)
        if "kid" in self.metrics:  # before drawing thousands of samples
            from .fidelity import check_kid

            check_kid(self.setup(model.device), c.n, len(ref))
        check_weights(self.setup(model.device), self.metrics)  # fails before sampling
        x = _samples(model, c.n, c.seed)
        res = score(x, ref, self.metrics, self.setup(model.device))
        setup = res.pop("setup")
        setup.update(reference=desc, seed=c.seed, K=model.steps, sampler=model.sampler.name,
                     checkpoint_step=model.step, split=c.split if not c.reference else None)
        metrics = {k: v for k, v in res.items()}
        metrics.update(n=float(c.n), K=float(model.steps))
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{self.name}_metrics.json"
        path.write_text(json.dumps({**metrics, "setup": setup}, indent=2) + "\n")
        return EvalResult(metrics=metrics)


_LAST: dict[tuple, Tensor] = {}


def _samples(model, n: int, seed: int) -> Tensor:
    """``model.sample(n, seed=seed)``, remembered for the next evaluator of the same command
    (``-e fid -e kid`` draws once). The key holds a checksum of the parameters, so a model
    trained further in the same session is sampled again."""
    with torch.no_grad():
        check = float(sum(p.detach().double().sum() for p in model.energy.parameters()))
    key = (id(model.energy), model.step, model.steps, n, seed, check)
    if key not in _LAST:
        _LAST.clear()
        _LAST[key] = model.sample(n, seed=seed)
    return _LAST[key]


def load_reference(ref: str, n: int, seed: int, device) -> tuple[Tensor, str]:
    """A folder of images, or a checkpoint to sample ``n`` images from (seed ``seed + 1``)."""
    p = Path(ref).expanduser()
    if p.is_dir() and not (p / "model.safetensors").is_file() and not (p / "run.toml").is_file():
        return load_folder(p, n, seed), f"folder {p}"
    if p.suffix == ".safetensors" or p.is_dir():
        if not p.exists():
            raise DataError(f"reference checkpoint not found: {p}")
        import ebmkit

        other = ebmkit.load(p, device=str(device))
        return other.sample(n, seed=seed + 1), f"checkpoint {p} (K={other.steps}, seed {seed + 1})"
    raise DataError(f"reference {ref!r} is neither a folder of images nor a checkpoint "
                    f"(.safetensors or run directory)")


def load_folder(folder: Path, n: int, seed: int) -> Tensor:
    """Up to ``n`` images of ``folder`` (recursively; a seeded subset when there are more) as
    uint8 ``[N, 3, H, W]``; all must have one size."""
    import numpy as np
    from PIL import Image

    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    if len(files) > n:
        g = torch.Generator().manual_seed(seed)
        files = [files[i] for i in sorted(torch.randperm(len(files), generator=g)[:n].tolist())]
    arrs = []
    for f in files:
        with Image.open(f) as im:
            arrs.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    sizes = {a.shape for a in arrs}
    if len(sizes) != 1:
        raise DataError(f"images in {folder} differ in size ({len(sizes)} sizes, e.g. "
                        f"{sorted(sizes)[:2]}); resize them to one size")
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


class FID(FidelityEvaluator):
    """Fréchet Inception Distance (Heusel et al. 2017) of model samples vs a reference."""

    name = "fid"
    summary = "Fréchet Inception Distance of model samples vs data (torch-fidelity; offline weights)."
    metrics = ("fid",)


class KID(FidelityEvaluator):
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD², cubic kernel."""

    name = "kid"
    summary = "Kernel Inception Distance (unbiased MMD², subsets) of model samples vs data."
    metrics = ("kid",)


class ISC(FidelityEvaluator):
    """Inception Score (Salimans et al. 2016) of model samples (needs Inception's logits)."""

    name = "isc"
    summary = "Inception Score of model samples (needs the full Inception weights, with logits)."
    metrics = ("isc",)
    needs_reference = False
    needs_data = False


class PRC(FidelityEvaluator):
    """Improved precision and recall (Kynkäänniemi et al. 2019), k-NN manifolds of features."""

    name = "prc"
    summary = "Precision / recall / F-score of model samples vs data (k-NN feature manifolds)."
    metrics = ("prc",)


EVALUATORS = (FID, KID, ISC, PRC)

