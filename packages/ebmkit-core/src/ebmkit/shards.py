"""WebDataset tar shards: writing them from any dataset, and streaming them to many processes.

A shard set is a directory of plain tar files in the webdataset layout (``{key}.png`` holding a
uint8 image, ``{key}.cls`` its label, the key being the example's global index) plus a
``manifest.json`` with the count and SHA-256 of every shard::

    ebmkit data shard mnist5k shards/mnist --shard-size 500
    ebmkit run --data 'shards:shards/mnist/train-{000000..000009}.tar'

Reading (:class:`ShardDataset`) is explicit about the traps of data-parallel streaming:

* **Node splitting is explicit**: every epoch the shard list is permuted with a seed that depends
  only on ``(seed, epoch)`` -- identical on every rank -- and rank ``r`` of ``R`` takes shards
  ``r, r+R, ...``; DataLoader worker ``w`` of ``W`` then takes every ``W``-th of those. Ranks
  therefore read disjoint shards, and the assignment changes from epoch to epoch.
* **Equal work per rank**: the counts in the manifest let every rank compute the whole plan, so
  each rank yields exactly the same number of *whole* batches per epoch (the surplus of a
  fuller rank is dropped for that epoch; a different surplus each epoch). Uneven ranks are what
  hangs DDP (one rank waits in an all-reduce that another never joins) and what lets epochs drift
  apart (then two ranks read the same shard).
* **Too few shards** is an error, not silently idle workers: there must be at least one shard
  per (rank, worker) pair.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import IterableDataset

from .errors import DataError

MANIFEST = "manifest.json"
FORMAT = "ebmkit-shards/1"


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def to_uint8(x: Tensor) -> np.ndarray:
    """One image ``[C, H, W]`` in [-1, 1] -> uint8 ``[H, W]`` (C = 1) or ``[H, W, 3]``."""
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy()


def encode_png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def pattern_for(prefix: str, n: int) -> str:
    """The brace pattern naming ``n`` shards: ``train-{000000..000031}.tar``."""
    return f"{prefix}-{{{0:06d}..{n - 1:06d}}}.tar" if n > 1 else f"{prefix}-000000.tar"


def write_shards(
    examples: Iterable[tuple[Tensor, int]],
    out_dir: Path,
    *,
    shard_size: int,
    total: int | None = None,
    prefix: str = "train",
    source: dict | None = None,
    on_example: Callable[[int], None] | None = None,
) -> dict:
    """Write ``(image [C,H,W] in [-1,1], label)`` pairs as tar shards plus ``manifest.json``.

    Keys are the running example index (``%08d``), so every example has a global id. Shard files
    are written with fixed metadata (mtime 0), so the same input gives byte-identical shards.
    Returns the manifest.
    """
    import webdataset as wds

    if shard_size < 1:
        raise DataError("--shard-size must be at least 1")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", prefix):
        raise DataError(f"shard prefix {prefix!r} must be a plain file name (letters, digits, '.', '_', "
                        "'-'); the shards are written inside the output directory")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the shard directory {out_dir} ({exc.strerror or exc}); "
                        "choose another output directory") from None
    if (out_dir / MANIFEST).exists() or any(out_dir.glob(f"{prefix}-*.tar")):
        raise DataError(f"{out_dir} already holds shards; choose an empty directory")
    shards: list[dict] = []
    writer, path, count, index = None, None, 0, 0
    shape = None

    def close():
        nonlocal writer
        if writer is not None:
            writer.close()
            shards.append({"name": path.name, "count": count, "sha256": sha256_of(path)})
            writer = None

    try:
        for image, label in examples:
            if shape is None:
                shape = tuple(image.shape)
                if len(shape) != 3 or shape[0] not in (1, 3):
                    raise DataError(f"shards hold images [C, H, W] with 1 or 3 channels; this source "
                                    f"yields examples of shape {shape}")
            elif tuple(image.shape) != shape:
                raise DataError(f"example {index} has shape {tuple(image.shape)}, expected {shape}")
            if writer is None or count == shard_size:
                close()
                path = out_dir / f"{prefix}-{len(shards):06d}.tar"
                writer, count = wds.TarWriter(str(path), mtime=0.0, user="", group=""), 0
            writer.write({"__key__": f"{index:08d}", "png": encode_png(to_uint8(image)),
                          "cls": str(int(label)).encode()})
            count += 1
            index += 1
            if on_example:
                on_example(index)
        close()
    finally:
        if writer is not None:  # interrupted: do not leave a shard without a manifest entry
            writer.close()
    if index == 0:
        raise DataError("the source yielded no examples; nothing to shard")
    manifest = {
        "format": FORMAT,
        "count": index,
        "channels": shape[0],
        "resolution": shape[-1],
        "shard_size": shard_size,
        "pattern": pattern_for(prefix, len(shards)),
        "source": source or {},
        "shards": shards,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(manifest_dir: Path) -> list[str]:
    """Names of the shards whose SHA-256 differs from the manifest (empty: all intact)."""
    manifest = read_manifest(Path(manifest_dir))
    return [s["name"] for s in manifest["shards"]
            if sha256_of(Path(manifest_dir) / s["name"]) != s["sha256"]]


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise DataError(f"no {MANIFEST} in {directory}; write shards with `ebmkit data shard SOURCE {directory}`")
    try:
        manifest = json.loads(path.read_text())
        for s in manifest["shards"]:
            if not isinstance(s["name"], str) or int(s["count"]) < 0:
                raise ValueError(f"bad shard entry {s!r}")
        for key in ("resolution", "channels"):
            if int(manifest[key]) < 1:
                raise ValueError(f"{key} must be positive")
    except KeyError as exc:
        raise DataError(f"{path} is damaged (no field {exc}); rewrite the shards with `ebmkit data shard`") from None
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is damaged ({exc}); rewrite the shards with `ebmkit data shard`") from None
    return manifest


# ---------------------------------------------------------------------------------------------
# the epoch plan: which (rank, worker) reads which shards, and how many examples
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """One epoch: ``shards[r][w]`` = shard indices of rank r, worker w; ``quota[r][w]`` examples."""

    epoch: int
    shards: list[list[list[int]]]
    quota: list[list[int]]
    batches_per_rank: int
    dropped: int  # examples of this epoch no rank reads (surplus of fuller ranks)


def epoch_plan(counts: list[int], *, epoch: int, seed: int, world: int, workers: int,
               batch_size: int = 1, shuffle: bool = True) -> Plan:
    """The same plan on every rank: a pure function of the counts, epoch, seed and sizes."""
    n = len(counts)
    slots = world * workers
    if n < slots:
        raise DataError(
            f"{n} shard(s) for {world} process(es) x {workers} loader worker(s): every (rank, worker) "
            f"needs at least one shard; write at least {slots} shards (a smaller --shard-size) "
            "or use fewer workers/processes"
        )
    order = list(range(n))
    if shuffle:
        random.Random(f"{seed}/{epoch}").shuffle(order)  # same permutation on every rank
    shards = [[order[r::world][w::workers] for w in range(workers)] for r in range(world)]
    batches = [[sum(counts[i] for i in ws) // batch_size for ws in rank] for rank in shards]
    target = min(sum(b) for b in batches)
    if target == 0:
        raise DataError(
            f"with {n} shards of {min(counts)}..{max(counts)} examples some process gets less than one "
            f"batch of {batch_size} per epoch; write more or larger shards, or lower train.batch_size"
        )
    for b in batches:  # trim the fullest workers until every rank has `target` batches
        while sum(b) > target:
            b[b.index(max(b))] -= 1
    quota = [[k * batch_size for k in b] for b in batches]
    dropped = sum(counts) - world * target * batch_size
    return Plan(epoch, shards, quota, target, dropped)


def dist_info() -> tuple[int, int]:
    """(rank, world size): torch.distributed if initialised, else the launcher's environment."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def expand(pattern: str) -> list[str]:
    import braceexpand

    if not pattern.strip():
        raise DataError("the shard pattern is empty; pass --data 'shards:DIR/train-{000000..N}.tar'")
    urls = [u for part in pattern.split("::") for u in braceexpand.braceexpand(part)]
    if not urls:
        raise DataError(f"the shard pattern {pattern!r} names no files")
    return urls


def decode_png(data: bytes) -> Tensor:
    """PNG bytes -> uint8 ``[C, H, W]``."""
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(data)))
    t = torch.from_numpy(img.copy())
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1)[:3]


class ShardDataset(IterableDataset):
    """Stream ``(image [C,H,W] in [-1,1], key)`` from tar shards, split by rank and worker;
    with ``labels=True`` ``(image, label, key)``, the label (int64 0-d) read from each example's
    ``.cls`` entry (what :func:`write_shards` stores), for objectives that need labels.

    ``set_epoch(e)`` selects the epoch's shard permutation (the batch stream calls it before
    every pass); ``batch_size`` (set by the batch stream) makes every rank's quota whole batches.
    """

    def __init__(self, pattern: str, *, resolution: int | None = None, channels: int | None = None,
                 seed: int = 0, shuffle: bool = True, buffer: int = 256, labels: bool = False):
        self.pattern = pattern
        self.labels = bool(labels)
        self.urls = expand(pattern)
        local = ["://" not in u and not u.startswith("pipe:") for u in self.urls]
        if all(local):
            folder = next((u for u in self.urls if Path(u).is_dir()), None)
            if folder is not None:
                raise DataError(f"{folder} is a directory; the shard pattern names the tar files, e.g. "
                                f"'shards:{Path(folder) / pattern_for('train', 2)}' (see its {MANIFEST})")
            missing = [u for u in self.urls if not Path(u).is_file()]
            if missing:
                raise DataError(
                    f"shard {missing[0]} not found ({len(missing)} of {len(self.urls)} missing); "
                    "write shards with `ebmkit data shard SOURCE DIR` and pass --data 'shards:DIR/train-{000000..N}.tar'"
                )
        directory = Path(self.urls[0]).parent
        self.manifest = read_manifest(directory)
        by_name = {s["name"]: int(s["count"]) for s in self.manifest["shards"]}
        names = [Path(u).name for u in self.urls]
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise DataError(f"{unknown[0]} is not listed in {directory / MANIFEST}; the pattern and the manifest disagree")
        self.counts = [by_name[n] for n in names]
        self.resolution = resolution or int(self.manifest["resolution"])
        self.channels = channels or int(self.manifest["channels"])
        self.seed, self.shuffle, self.buffer = seed, shuffle, buffer
        self.epoch = 0
        self.batch_size = 1

    def __len__(self) -> int:  # examples in the whole set (all ranks)
        return sum(self.counts)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.resolution, self.resolution)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def plan(self, epoch: int | None = None, *, world: int | None = None, workers: int = 1) -> Plan:
        if world is None:
            world = dist_info()[1]
        return epoch_plan(self.counts, epoch=self.epoch if epoch is None else epoch, seed=self.seed,
                          world=world, workers=workers, batch_size=self.batch_size,
                          shuffle=self.shuffle)

    def __iter__(self) -> Iterator[tuple[Tensor, str]]:
        rank, world = dist_info()
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        plan = self.plan(world=world, workers=workers)  # read self.epoch now, not lazily
        mine = [self.urls[i] for i in plan.shards[rank][worker]]
        quota = plan.quota[rank][worker]
        rng = random.Random(f"{self.seed}/{plan.epoch}/{rank}/{worker}")
        return self._examples(mine, quota, rng)

    def _examples(self, urls: list[str], quota: int, rng: random.Random) -> Iterator[tuple[Tensor, str]]:
        from .images import to_model_range

        def convert(sample):
            try:
                x = decode_png(sample["png"])[None]
            except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, bomb errors...
                raise DataError(f"{sample.get('__url__', 'a shard')}: example {sample.get('__key__')} "
                                f"is not a readable PNG ({type(exc).__name__}); "
                                "rewrite the shards with `ebmkit data shard`") from None
            x = to_model_range(x, resolution=self.resolution, channels=self.channels)[0]
            if not self.labels:
                return x, sample["__key__"]
            return x, shard_label(sample), sample["__key__"]

        stream = (convert(s) for s in self._samples(urls))
        if self.shuffle and self.buffer > 1:
            stream = shuffled(stream, self.buffer, rng)
        for i, item in enumerate(stream):
            if i >= quota:
                break
            yield item

    @staticmethod
    def _samples(urls: list[str]) -> Iterator[dict]:
        import webdataset as wds
        from webdataset.tariterators import group_by_keys, tar_file_expander

        for url in urls:
            try:
                with wds.gopen(url, "rb") as stream:
                    for sample in group_by_keys(tar_file_expander([{"url": url, "stream": stream}])):
                        if "png" not in sample:
                            raise DataError(f"{url}: example {sample.get('__key__')} has no .png image")
                        yield sample
            except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
                why = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
                raise DataError(f"shard {url} is corrupt or truncated ({why}); check the set with "
                                f"`ebmkit data verify {Path(url).parent}` and rewrite it") from None


def shard_label(sample: dict) -> Tensor:
    """The label of a shard example (its ``.cls`` entry, an ASCII integer) as an int64 0-d tensor;
    a :class:`DataError` when the example has none or it is not an integer."""
    raw = sample.get("cls")
    try:
        return torch.tensor(int(raw.decode("ascii").strip()), dtype=torch.int64)
    except (AttributeError, UnicodeDecodeError, ValueError):
        raise DataError(f"{sample.get('__url__', 'a shard')}: example {sample.get('__key__')} has no "
                        "integer .cls label; write the shards from a labelled source with `ebmkit "
                        "data shard`, or set data.labels = false") from None


def shuffled(items: Iterable, size: int, rng: random.Random) -> Iterator:
    """A shuffle buffer of ``size`` items (webdataset-style: mixes neighbouring shards too)."""
    buf: list = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(size)
        buf[j], item = item, buf[j]
        yield item
    rng.shuffle(buf)
    yield from buf
