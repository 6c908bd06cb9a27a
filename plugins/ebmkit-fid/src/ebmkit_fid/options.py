"""The plugin's own run options: the ``[plugins.fid]`` table of the run document.

``every > 0`` switches on the training-time sample metrics (:class:`~ebmkit_fid.FidelityCallback`)::

    ebmkit run --preset quick --set plugins.fid.every=100 --set plugins.fid.n=500
    ebmkit.fit(preset="quick", plugins={"fid": {"every": 100, "n": 500}})

The table is validated like ``[train]`` (an unknown key is one line with a did-you-mean), written
to ``run.toml`` and shown by ``ebmkit describe options fid``; every key may change on resume
(they only measure: ``ebmkit run --resume DIR --set plugins.fid.every=50``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from ebmkit import param
from ebmkit.interfaces import Options

from .fidelity import INCEPTION, PIXELS


@dataclass(frozen=True, kw_only=True)
class FidOptionsConfig:
    every: int = param(0, "Score model samples every N training iterations (and at the last); "
                       "0 = off.", min=0)
    n: int = param(1000, "Model samples per evaluation, and training images in the reference "
                   "batch (drawn once, seeded).", min=2)
    metrics: tuple[str, ...] = param(
        ("fid", "kid"), "Sample metrics to compute: registered evaluators that implement "
        "ebmkit.SampleMetric (this plugin's fid, kid, prc; other plugins may add more).")
    feature_extractor: str = param(
        INCEPTION, f"torch-fidelity feature extractor of the metrics that have one; {PIXELS} is "
        "a fast weight-free test extractor (not Inception numbers).")
    inception_weights: str | None = param(
        None, "Inception weights file (default: torch-fidelity's file in torch's hub cache, then "
        "the file `ebmkit fid import-weights` wrote; `ebmkit fid weights` shows which).")
    kid_subset_size: int | None = param(None, "KID: images per subset (default: min(1000, n)).",
                                        min=2)
    batch_size: int = param(64, "Images per feature-extractor batch.", min=1)
    seed: int = param(0, "Seed of the model's chains and of the reference batch.", min=0)


class FidOptions(Options):
    """``[plugins.fid]``: sample-quality metrics during training (FID, KID, ... every N
    iterations, logged as ``fidelity/<metric>`` through ``run.log``)."""

    name = "fid"
    summary = "Sample metrics (FID, KID, ...) during training: plugins.fid.every=N (0 = off)."
    Config = FidOptionsConfig
    #: They only measure: all of them may change when a run is resumed.
    resumable: ClassVar[frozenset[str]] = frozenset(f.name for f in dataclasses.fields(FidOptionsConfig))
