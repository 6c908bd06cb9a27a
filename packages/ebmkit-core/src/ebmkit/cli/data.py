"""``ebmkit data ...``: write and check webdataset shards, download and preview datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ..errors import DataError

data_app = typer.Typer(help="Datasets: write shards, verify them, download, preview.",
                       no_args_is_help=True)
console = Console()

SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Dataset parameter KEY=VALUE or data.KEY=VALUE (repeatable), e.g. resolution=64.")]


def open_source(source: str, sets: list[str] | None, *, extra: dict | None = None):
    """A registered dataset by name, or an image directory (-> imagefolder), with its config."""
    from ..params import build, parse_override
    from .main import _registry

    values = dict(extra or {})
    for text in sets or []:
        _, key, value = parse_override(text, section="data")
        values[key] = value
    reg = _registry()
    if Path(source).is_dir() and source not in reg.names("dataset"):
        values.setdefault("path", source)
        source = "imagefolder"
    cls = reg.get("dataset", source)
    config = build(cls.Config, values, where="data")
    return cls(config), {"name": cls.name, **{k: str(v) for k, v in values.items()}}


@data_app.command()
def shard(
    source: Annotated[str, typer.Argument(help="A dataset name (ebmkit list datasets) or a directory of images.")],
    out: Annotated[Path, typer.Argument(help="Empty output directory for the shards and manifest.json.")],
    shard_size: Annotated[int, typer.Option("--shard-size", min=1, help="Examples per shard.")] = 1000,
    set_: SetOpt = None,
    prefix: Annotated[str, typer.Option(help="Shard file prefix (PREFIX-000000.tar).")] = "train",
    shuffle: Annotated[bool, typer.Option(help="Write the examples in a random order (classes mixed across shards).")] = True,
    seed: Annotated[int, typer.Option(help="Seed of that order.")] = 0,
    split: Annotated[str, typer.Option(help="Split of the source to shard.")] = "train",
):
    """Write webdataset tar shards (+ manifest.json with counts and SHA-256) from a dataset."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..datastream import tensor_of
    from ..shards import write_shards

    src, desc = open_source(source, set_)
    ds = src.open(split=split)
    if isinstance(ds, torch.utils.data.IterableDataset):
        raise DataError(f"'{source}' is a stream; shard a dataset with a length (a name or an image folder)")
    n = len(ds)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
    tensor = tensor_of(ds)
    labels = ds.tensors[1] if tensor is not None and len(ds.tensors) > 1 else None

    def examples():
        for i in order.tolist():
            if tensor is not None:
                yield tensor[i], int(labels[i]) if labels is not None else 0
            else:
                item = ds[i]
                x, y = item if isinstance(item, (tuple, list)) else (item, 0)
                yield x, int(y)

    with Progress(TextColumn("[bold]sharding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("shard", total=n)
        manifest = write_shards(examples(), out, shard_size=shard_size, total=n, prefix=prefix,
                                source={**desc, "split": split, "shuffled": shuffle, "seed": seed},
                                on_example=lambda k: bar.update(task, completed=k))
    console.print(f"wrote {manifest['count']} examples in {len(manifest['shards'])} shards "
                  f"({manifest['channels']}x{manifest['resolution']}x{manifest['resolution']}) to {out}\n"
                  f"train with:  ebmkit run --data 'shards:{out / manifest['pattern']}'", highlight=False,
                  soft_wrap=True)


@data_app.command()
def verify(directory: Annotated[Path, typer.Argument(help="A directory written by `ebmkit data shard`.")]):
    """Check every shard's SHA-256 against manifest.json."""
    from ..shards import read_manifest
    from ..shards import verify as check

    manifest = read_manifest(directory)
    missing = [s["name"] for s in manifest["shards"] if not (directory / s["name"]).is_file()]
    if missing:
        raise DataError(f"{directory / missing[0]} is missing ({len(missing)} shard(s) missing)")
    bad = check(directory)
    if bad:
        raise DataError(f"{len(bad)} shard(s) do not match their checksum, first {directory / bad[0]}; rewrite them")
    console.print(f"ok: {len(manifest['shards'])} shards, {manifest['count']} examples", highlight=False)


@data_app.command()
def download(
    name: Annotated[str, typer.Argument(help="A torchvision dataset: cifar10, mnist, celeba, flowers102.")],
    root: Annotated[Path, typer.Option(help="Directory to download into.")] = Path("data"),
    split: Annotated[str, typer.Option(help="Split to fetch.")] = "train",
):
    """Download a dataset into ROOT (the only way, besides data.download=true, that ebmkit downloads)."""
    import dataclasses

    from .main import _registry

    cls = _registry().get("dataset", name)
    if "download" not in {f.name for f in dataclasses.fields(cls.Config)}:
        raise DataError(f"dataset '{name}' has nothing to download (it is built in or reads files you "
                        "give it); downloadable: " + ", ".join(_downloadable()))
    src, _ = open_source(name, None, extra={"root": str(root), "download": "true", "split": split})
    ds = src.open(split=split)
    console.print(f"{name}: {len(ds)} examples in {root}", highlight=False)


def _downloadable() -> list[str]:
    import dataclasses

    from .main import _registry

    reg = _registry()
    return [n for n in reg.names("dataset")
            if "download" in {f.name for f in dataclasses.fields(reg.get("dataset", n).Config)}]


@data_app.command()
def preview(
    source: Annotated[str, typer.Argument(help="A dataset name or a directory of images.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path("data-preview.png"),
    n: Annotated[int, typer.Option("-n", min=1, help="Images in the grid.")] = 64,
    set_: SetOpt = None,
    scale: Annotated[int, typer.Option(min=1, help="Enlarge the grid by this factor.")] = 2,
):
    """Write a grid of the first N examples as seen by the model (after crop/resize/range)."""
    import torch

    from ..datastream import draw
    from ..images import save_grid

    src, _ = open_source(source, set_)
    if len(src.shape) != 3:
        raise DataError(f"'{source}' holds points of shape {tuple(src.shape)}, not images; "
                        "preview shows image datasets (train a model on it and use `ebmkit eval`)")
    ds = src.open(split="train")
    x = draw(ds, n, torch.Generator().manual_seed(0))
    save_grid(x, out, scale=scale)
    console.print(f"{out}: {tuple(x.shape)}, range [{x.min():.2f}, {x.max():.2f}]", highlight=False)
