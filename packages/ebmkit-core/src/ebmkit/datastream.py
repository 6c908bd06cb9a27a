"""Turning a dataset into the endless stream of training batches each process consumes."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator

import torch
from torch import Tensor

from .errors import ConfigError, DataError


def tensor_of(dataset) -> Tensor | None:
    """The stacked image tensor of an in-memory dataset (fast path), else None."""
    tensors = getattr(dataset, "tensors", None)
    if tensors:
        return tensors[0]
    return None


def _images(batch) -> Tensor:
    """A collated batch -> its images (datasets may yield ``(image, label_or_key)``)."""
    return batch[0] if isinstance(batch, (list, tuple)) else batch


def check_finite(x: Tensor, what: str = "the training data") -> Tensor:
    """``x`` unchanged, or a :class:`DataError` when it holds NaN or inf: bad data must not be
    reported as a training divergence. (Data tensors live on the CPU: no device sync.)"""
    if torch.is_floating_point(x) and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x.reshape(len(x), -1))).any(dim=1).nonzero()
        first = int(bad[0]) if len(bad) else 0
        raise DataError(
            f"{what} contains non-finite values (NaN or inf): {len(bad)} of {len(x)} examples, "
            f"the first at index {first}; remove or fix them in the dataset"
        )
    return x


def epoch_position(dataset, batches_done: int, batch_size: int, workers: int = 1) -> tuple[int, int]:
    """(epoch, batches into that epoch) after ``batches_done`` batches of an epoch-planned stream."""
    ds = copy.copy(dataset)
    ds.batch_size = batch_size
    epoch, left = 0, batches_done
    while True:
        per_epoch = ds.plan(epoch, workers=workers).batches_per_rank
        if left < per_epoch:
            return epoch, left
        left -= per_epoch
        epoch += 1


def labels_of(dataset) -> Tensor | None:
    """The label tensor of an in-memory dataset (``TensorDataset(x, y)``), else None."""
    tensors = getattr(dataset, "tensors", None)
    if tensors and len(tensors) > 1:
        return tensors[1]
    return None


def _labels(batch) -> Tensor | None:
    if isinstance(batch, (list, tuple)) and len(batch) > 1 and isinstance(batch[1], Tensor):
        return batch[1]
    return None


def batch_stream(dataset, batch_size: int, *, generator: torch.Generator,
                 num_workers: int = 0, start: int = 0, labels: bool = False) -> Iterator[Tensor]:
    """An endless stream of data batches; ``start`` = batches already consumed (resume).
    With ``labels`` each item is ``(x, y)`` (a :class:`DataError` when the data has none).

    In-memory datasets are sampled with replacement, as in the short-run paper's code (each
    process with its own generator, so ranks see different examples; on resume the restored
    generator continues the sequence, so ``start`` is not needed). Iterable datasets (shards)
    are iterated epoch after epoch: before every pass the stream calls ``set_epoch(epoch)`` (the
    shard permutation, identical on all ranks) and tells the dataset the batch size (so every
    rank gets the same number of whole batches). On resume the stream seeks to the epoch and the
    batch where the run stopped (re-reading that epoch's first batches). Map-style datasets are
    reshuffled every epoch with ``generator``.
    """
    x = tensor_of(dataset)
    if x is not None:
        if len(x) == 0:
            raise DataError("the dataset is empty")
        check_finite(x)
        y = labels_of(dataset)
        if labels and y is None:
            raise DataError("the objective needs labels but the data has none; give (x, y) data "
                            "(a TensorDataset(x, y)) or an objective without labels")
        while True:
            idx = torch.randint(0, len(x), (batch_size,), generator=generator)
            yield (x[idx], y[idx]) if labels else x[idx]
    from torch.utils.data import DataLoader, IterableDataset

    iterable = isinstance(dataset, IterableDataset)
    planned = iterable and hasattr(dataset, "set_epoch")
    epoch, skip = 0, 0
    if planned:
        dataset = copy.copy(dataset)  # this stream owns its epoch and batch size
        dataset.batch_size = batch_size
        if start:
            epoch, skip = epoch_position(dataset, start, batch_size, max(num_workers, 1))
    loader = DataLoader(dataset, batch_size=batch_size, drop_last=True, num_workers=num_workers,
                        shuffle=not iterable, generator=None if iterable else generator)
    while True:
        if planned:
            dataset.set_epoch(epoch)
        got = False
        for batch in itertools.islice(loader, skip, None):
            got = True
            xb = check_finite(_images(batch), "a batch of the training data")
            if labels:
                yb = _labels(batch)
                if yb is None:
                    raise DataError("the objective needs labels but the dataset yields none; "
                                    "use a labelled dataset or an objective without labels")
                yield xb, yb
            else:
                yield xb
        if not got and not skip:
            raise DataError(f"the dataset yields fewer than one batch of {batch_size} examples")
        epoch, skip = epoch + 1, 0


def is_stream(dataset) -> bool:
    """Whether ``dataset`` is an iterable stream with an epoch hook (a shard stream:
    ``set_epoch``), which only the training loop should read."""
    return hasattr(dataset, "set_epoch")


def draw(dataset, n: int, generator: torch.Generator) -> Tensor:
    """``n`` data examples (to fill a persistent buffer, for instance)."""
    x = tensor_of(dataset)
    if x is not None:
        return x[torch.randint(0, len(x), (n,), generator=generator)]
    out, got = [], 0
    if is_stream(dataset):  # a shard stream: read this rank's shards, epoch after epoch
        ds = copy.copy(dataset)
        ds.batch_size = 1
        for epoch in itertools.count():
            ds.set_epoch(epoch)
            before = got
            for item in ds:
                out.append(_images(item)[None])
                got += 1
                if got >= n:
                    return torch.cat(out)
            if got == before:
                raise DataError("the dataset is empty")
    for batch in batch_stream(dataset, min(n, 256), generator=generator):
        out.append(batch)
        got += batch.shape[0]
        if got >= n:
            break
    return torch.cat(out)[:n]


#: The parts a data set with a held-out split opens (``open(split=...)``), and their aliases.
SPLITS = ("train", "heldout", "all")
SPLIT_ALIASES = {"test": "heldout", "val": "heldout", "valid": "heldout", "validation": "heldout"}


def split_indices(n: int, heldout: int, seed: int) -> tuple[Tensor, Tensor]:
    """Fixed (train, held-out) index sets: a seeded permutation, the first ``heldout`` held out."""
    if not 0 < heldout < n:
        raise ConfigError(f"data.heldout must be in [1, {n - 1}], got {heldout}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[heldout:].sort().values, perm[:heldout].sort().values


def split_part(tensors: tuple[Tensor, ...], split: str, *, default: str, heldout: int, seed: int,
               name: str) -> tuple[Tensor, ...]:
    """The part ``split`` (``train``, ``heldout`` or ``all``; ``test``/``val`` mean ``heldout``)
    of a data set held in memory, by the fixed split of :func:`split_indices`. ``train`` is what
    a run trains on: the ``default`` part (the dataset's ``data.split``). ``heldout = 0`` means
    no held-out part: ``train`` is everything and ``heldout`` is refused in one line."""
    split = SPLIT_ALIASES.get(split, split)
    if split not in SPLITS:
        raise DataError(f"dataset '{name}' has splits {', '.join(SPLITS)}, not '{split}'")
    if split == "train":
        split = SPLIT_ALIASES.get(default, default)
    if split == "all" or (heldout == 0 and split == "train"):
        return tensors
    if heldout == 0:
        raise DataError(f"dataset '{name}' has no held-out part (data.heldout = 0); set "
                        f"data.heldout (e.g. --set data.heldout=1000) to hold digits out of training")
    tr, ho = split_indices(len(tensors[0]), heldout, seed)
    idx = tr if split == "train" else ho
    return tuple(t[idx] for t in tensors)
