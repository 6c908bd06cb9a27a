"""Helpers for evaluator authors: a batch of data examples, the metrics JSON an evaluator writes.

An evaluator (:class:`ebmkit.Evaluator`) receives the trained model (:class:`ebmkit.EBM`), the
run's data source and an output directory, or ``None`` (``ebmkit.evaluate(..., out_dir=None)``:
compute in memory, write no file; :func:`write_metrics`, :func:`write_json` then do nothing and
:func:`figure_path` says not to draw); these are the small pieces the built-in evaluators share.
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
        raise DataError("this evaluator needs data: pass data= (a dataset name, a DataSource or a "
                        "tensor; --data NAME on the command line)")
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


def write_json(out_dir: Path | None, filename: str, doc: Any) -> Path | None:
    """Write ``doc`` as JSON to ``out_dir/filename`` (the directory created); returns the path.
    ``out_dir=None`` (an evaluation kept in memory) writes nothing and returns ``None``."""
    if out_dir is None:
        return None
    out_dir = Path(out_dir)
    path = out_dir / filename
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2) + "\n")
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror or exc}); choose another output "
                          "directory (out_dir= / --out), or out_dir=None to keep results in "
                          "memory") from None
    return path


def write_metrics(out_dir: Path | None, name: str, metrics: dict[str, Any]) -> Path | None:
    """Write ``metrics`` to ``out_dir/<name>_metrics.json``; returns the path (``None``, and
    nothing written, when ``out_dir`` is ``None``)."""
    return write_json(out_dir, f"{name}_metrics.json", metrics)


def figure_path(out_dir: Path | None, filename: str) -> Path | None:
    """``out_dir/filename`` for a figure, or ``None`` when ``out_dir`` is ``None``: an evaluator
    draws a figure only when this is a path (``out_dir=None`` writes no file)."""
    return None if out_dir is None else Path(out_dir) / filename
