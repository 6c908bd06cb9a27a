"""The evaluators ``fid``, ``kid``, ``isc`` and ``prc``: model samples against a reference.

The reference is the evaluation dataset (``ebmkit eval --data NAME``, else the run's own), or,
with ``reference=``, a folder of images or another checkpoint (a ``.safetensors`` file or a run
directory). With an ``out_dir`` each evaluator writes ``<name>_metrics.json`` with the numbers and
everything needed to reproduce them (extractor, weights file and sha256, n, seed, K, the
reference's content hash); ``out_dir=None`` computes in memory and writes no file.

``fid``, ``kid`` and ``prc`` are also :class:`ebmkit.SampleMetric`: ``score(samples,
reference)`` scores two given image batches (no model, no file). The core's ``transition``
evaluator and this plugin's training callback find them (and any other plugin's sample metric)
by that interface. ``isc`` is not one: the Inception Score has no reference batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from ebmkit import EvalResult, Evaluator, param
from ebmkit.errors import DataError
from ebmkit.evaluation import data_batch, write_json
from ebmkit.interfaces import SampleMetric
from torch import Tensor

from .fidelity import INCEPTION, PIXELS, Setup, check_kid, check_weights, score

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
        None, "Inception weights file (default: torch-fidelity's file in torch's hub cache, then "
        "the file `ebmkit fid import-weights` wrote).")
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
    """Shared machinery; subclasses name the torch-fidelity metric (``fidelity_metric``)."""

    Config = FidelityConfig
    #: The torch-fidelity metric this evaluator computes: fid, kid, isc or prc.
    fidelity_metric: ClassVar[str] = ""
    needs_reference = True

    def setup(self, device: Any) -> Setup:
        c = self.config
        return Setup(feature_extractor=c.feature_extractor, inception_weights=c.inception_weights,
                     download=c.download, device=device, batch_size=c.batch_size,
                     kid_subset_size=c.kid_subset_size, kid_subsets=c.kid_subsets,
                     prc_neighborhood=c.prc_neighborhood, isc_splits=c.isc_splits, seed=c.seed,
                     cache=c.cache)

    def check(self, shape: tuple[int, ...], n_samples: int, n_reference: int | None,
              device: Any = "cpu") -> None:
        """Fail now, in one line, what scoring would fail later: non-image examples, too few
        images for KID's subsets, missing or unusable Inception weights."""
        shape = tuple(shape)
        if len(shape) != 3 or shape[0] not in (1, 3):
            raise DataError(f"{self.name} needs images [C, H, W] with 1 or 3 channels; this model "
                            f"makes examples of shape {shape}")
        setup = self.setup(device)
        if self.fidelity_metric == "kid" and n_reference is not None:
            check_kid(setup, n_samples, n_reference)
        check_weights(setup, (self.fidelity_metric,))

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
        out = score(x, reference if self.needs_reference else None, (self.fidelity_metric,),
                    self.setup(dev))
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
        # before drawing thousands of samples: KID's subset size, the weights
        self.check(model.shape, c.n, len(ref) if ref is not None else None, model.device)
        x = _samples(model, c.n, c.seed)
        res = score(x, ref, (self.fidelity_metric,), self.setup(model.device))
        setup = res.pop("setup")
        setup.update(reference=desc, seed=c.seed, K=model.steps, sampler=model.sampler.name,
                     checkpoint_step=model.step, split=c.split if not c.reference else None)
        metrics = {k: v for k, v in res.items()}
        metrics.update(n=float(c.n), K=float(model.steps))
        write_json(out_dir, f"{self.name}_metrics.json", {**metrics, "setup": setup})
        return EvalResult(metrics=metrics)


class FidelityMetric(FidelityEvaluator, SampleMetric):
    """A torch-fidelity metric of two image batches (:class:`ebmkit.SampleMetric`).

    ``score(samples, reference)``: both ``[N, C, H, W]`` in ``[-1, 1]`` (or uint8), ``C`` 1 or 3,
    on any device (features are computed on the samples' device). The numbers only; the last
    call's reproduction record (extractor, weights and their sha256, set sizes, the reference's
    content hash) is kept in :attr:`last_setup`. The reference's features are cached by its
    content hash, so scoring many sample batches against one reference extracts it once.
    """

    #: Cheap enough to compute by default wherever samples are scored repeatedly (the
    #: ``transition`` evaluator's grid of K): one feature pass per batch, shared between the
    #: metrics through the feature cache. Read with ``getattr(cls, "cheap", False)``.
    cheap: ClassVar[bool] = False
    last_setup: dict[str, Any] | None = None

    def score(self, samples: Tensor, reference: Tensor) -> dict[str, float]:
        if reference is None:
            raise DataError(f"{self.name} scores samples against reference images; got none")
        setup = self.setup(samples.device)
        if self.fidelity_metric == "kid" and self.config.kid_subset_size > min(len(samples), len(reference)):
            # fewer images than the configured subset: KID on subsets of all of them
            setup = replace(setup, kid_subset_size=min(len(samples), len(reference)))
        res = score(samples, reference, (self.fidelity_metric,), setup)
        self.last_setup = res.pop("setup")
        return {k: float(v) for k, v in res.items()}


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


class FID(FidelityMetric):
    """Fréchet Inception Distance (Heusel et al. 2017) of model samples vs a reference."""

    name = "fid"
    summary = "Fréchet Inception Distance of model samples vs data (torch-fidelity; offline weights)."
    fidelity_metric = "fid"
    metric_names = ("fid",)
    cheap = True


class KID(FidelityMetric):
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD², cubic kernel. As a
    :class:`~ebmkit.SampleMetric`, batches smaller than ``kid_subset_size`` are scored on
    subsets of all their images (``last_setup`` records the size used)."""

    name = "kid"
    summary = "Kernel Inception Distance (unbiased MMD², subsets) of model samples vs data."
    fidelity_metric = "kid"
    metric_names = ("kid_mean", "kid_std")
    cheap = True


class ISC(FidelityEvaluator):
    """Inception Score (Salimans et al. 2016) of model samples (needs Inception's logits). Not a
    :class:`~ebmkit.SampleMetric`: it scores samples alone, against no reference."""

    name = "isc"
    summary = "Inception Score of model samples (needs the full Inception weights, with logits)."
    fidelity_metric = "isc"
    needs_reference = False
    needs_data = False


class PRC(FidelityMetric):
    """Improved precision and recall (Kynkäänniemi et al. 2019), k-NN manifolds of features."""

    name = "prc"
    summary = "Precision / recall / F-score of model samples vs data (k-NN feature manifolds)."
    fidelity_metric = "prc"
    metric_names = ("precision", "recall", "f_score")


EVALUATORS = (FID, KID, ISC, PRC)
