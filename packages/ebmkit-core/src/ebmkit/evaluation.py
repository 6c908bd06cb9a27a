"""Helpers for evaluator authors: a batch of data examples, the metrics JSON an evaluator writes.

An evaluator (:class:`ebmkit.Evaluator`) receives the trained model (:class:`ebmkit.EBM`), the
run's data source and an output directory; these are the small pieces the built-in evaluators
share.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import ConfigError, DataError
from .interfaces import DataSource


def data_batch(data: DataSource | None, n: int, seed: int, *, split: str = "train") -> Tensor:
    """``n`` examples of ``data`` (a seeded random subset of an in-memory set, else the first
    ``n`` of the stream), as one tensor ``[n, ...]``."""
    if data is None:
        raise DataError("this evaluator needs data: give the run's dataset (or --data NAME)")
    ds = data.open(split=split)
    x = getattr(ds, "tensors", None)  # torch's TensorDataset (public attribute)
    if x is not None:
        x = x[0]
        g = torch.Generator().manual_seed(seed)
        return x[torch.randperm(len(x), generator=g)[:n]]
    out = []
    for item in ds:
        out.append(item[0] if isinstance(item, (tuple, list)) else item)
        if len(out) >= n:
            break
    if not out:
        raise DataError(f"dataset '{data.name}' yielded no examples")
    return torch.stack(out)


def write_metrics(out_dir: Path, name: str, metrics: dict[str, Any]) -> Path:
    """Write ``metrics`` to ``out_dir/<name>_metrics.json``; returns the path."""
    out_dir = Path(out_dir)
    path = out_dir / f"{name}_metrics.json"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=2) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror or exc}); choose another output "
                          "directory (--out)") from None
    return path
