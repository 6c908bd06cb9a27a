"""Turning a dataset into the endless stream of training batches each process consumes."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .errors import DataError


def _tensor_of(dataset) -> Tensor | None:
    """The stacked image tensor of an in-memory dataset (fast path), else None."""
    tensors = getattr(dataset, "tensors", None)
    if tensors:
        return tensors[0]
    return None


def batch_stream(dataset, batch_size: int, *, generator: torch.Generator,
                 num_workers: int = 0) -> Iterator[Tensor]:
    """An endless stream of data batches.

    In-memory datasets are sampled with replacement, as in the short-run paper's code (each
    process with its own generator, so ranks see different examples). Iterable datasets (shards)
    are iterated epoch after epoch; they split themselves across processes and workers.
    """
    x = _tensor_of(dataset)
    if x is not None:
        if len(x) == 0:
            raise DataError("the dataset is empty")
        while True:
            idx = torch.randint(0, len(x), (batch_size,), generator=generator)
            yield x[idx]
    from torch.utils.data import DataLoader, IterableDataset

    iterable = isinstance(dataset, IterableDataset)
    loader = DataLoader(dataset, batch_size=batch_size, drop_last=True, num_workers=num_workers,
                        shuffle=not iterable, generator=None if iterable else generator)
    while True:
        got = False
        for batch in loader:
            got = True
            yield batch[0] if isinstance(batch, (list, tuple)) else batch
        if not got:
            raise DataError(f"the dataset yields fewer than one batch of {batch_size} examples")
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(getattr(dataset, "epoch", 0) + 1)



def _draw(dataset, n: int, generator: torch.Generator) -> Tensor:
    x = _tensor_of(dataset)
    if x is not None:
        return x[torch.randint(0, len(x), (n,), generator=generator)]
    out, got = [], 0
    for batch in batch_stream(dataset, min(n, 256), generator=generator):
        out.append(batch)
        got += batch.shape[0]
        if got >= n:
            break
    return torch.cat(out)[:n]
