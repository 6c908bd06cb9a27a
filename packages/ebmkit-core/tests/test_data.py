"""Datasets by name, the one conversion to model range, webdataset shards and their epoch plan."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import numpy as np
import pytest
import torch
from ebmkit.builtin import datasets as D
from ebmkit.datastream import batch_stream, draw
from ebmkit.errors import DataError, MissingDependencyError
from ebmkit.params import build
from ebmkit.shards import ShardDataset, epoch_plan, read_manifest, verify, write_shards
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset


def make(cls, **values):
    return cls(build(cls.Config, values))


# ---------------------------------------------------------------------------------------------
# to_model_range
# ---------------------------------------------------------------------------------------------
def test_to_model_range_crops_resizes_and_maps_range():
    img = torch.zeros(1, 3, 40, 60, dtype=torch.uint8)
    img[..., :, 10:50] = 255  # the centre 40x40 square is white, the side strips black
    x = D.to_model_range(img, resolution=8, channels=3)
    assert x.shape == (1, 3, 8, 8) and x.dtype == torch.float32
    assert torch.allclose(x, torch.ones_like(x))  # the centre crop removed the black strips
    grey = D.to_model_range(torch.full((2, 1, 4, 4), 0, dtype=torch.uint8), resolution=4, channels=3)
    assert grey.shape == (2, 3, 4, 4) and (grey == -1).all()
    rgb = torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    luma = D.to_model_range(rgb, resolution=4, channels=1)
    assert torch.allclose(luma, torch.full_like(luma, 0.299 * 2 - 1))


def test_mnist5k_limit_and_shape():
    ds = make(D.MNIST5k, limit=100, resolution=16, channels=3).open()
    x = ds.tensors[0]
    assert x.shape == (100, 3, 16, 16) and x.min() >= -1 and x.max() <= 1


def test_mnist5k_held_out_split_is_fixed_disjoint_and_covers_every_class():
    """data.heldout = N: a seeded split; the held-out digits are never trained on (the reference
    of the FIDs in docs/recipes.md), each class is represented, ``all`` is the union."""
    full = make(D.MNIST5k, resolution=28).open(split="all").tensors[0]
    tr = make(D.MNIST5k, heldout=1000, resolution=28).open()
    ho = make(D.MNIST5k, heldout=1000, resolution=28).open(split="heldout")
    assert len(tr) == 4000 and len(ho) == 1000
    key = {r.numpy().tobytes(): i for i, r in enumerate(full)}  # the images are unique
    tr_i = {key[r.numpy().tobytes()] for r in tr.tensors[0]}
    ho_i = {key[r.numpy().tobytes()] for r in ho.tensors[0]}
    assert len(key) == 5000 and not tr_i & ho_i and tr_i | ho_i == set(range(5000))
    assert torch.bincount(ho.tensors[1], minlength=10).min() >= 50  # ~100 per class
    again = make(D.MNIST5k, heldout=1000, resolution=28).open(split="test").tensors[0]
    other = make(D.MNIST5k, heldout=1000, split_seed=1, resolution=28).open(split="heldout").tensors[0]
    assert torch.equal(again, ho.tensors[0]) and not torch.equal(other, ho.tensors[0])
    assert torch.equal(make(D.MNIST5k, resolution=28).open().tensors[0], full)  # heldout = 0
    with pytest.raises(DataError, match="no held-out part .* data.heldout"):
        make(D.MNIST5k).open(split="heldout")
    limited = make(D.MNIST5k, heldout=1000, limit=10, resolution=28).open().tensors[0]
    assert torch.equal(limited, tr.tensors[0][:10])


def test_photos_are_deterministic_random_crops():
    a = make(D.Photos, crops=20, resolution=16).open().tensors[0]
    b = make(D.Photos, crops=20, resolution=16).open().tensors[0]
    c = make(D.Photos, crops=20, resolution=16, seed=1).open().tensors[0]
    assert a.shape == (20, 3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1 and a.std() > 0.1


def test_textures_need_scikit_image(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "skimage" else real(n, *a))
    with pytest.raises(MissingDependencyError, match=r"ebmkit-core\[skimage\]"):
        make(D.Textures).open()
    # with a package directory holding the three bundled files it reads them (never downloads)
    (tmp_path / "data").mkdir()
    for i, f in enumerate(D.Textures.files):
        Image.fromarray(np.full((128, 128), 60 * i, np.uint8)).save(tmp_path / "data" / f)
    fake = types.SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: fake if n == "skimage" else real(n, *a))
    ds = make(D.Textures, crops=30, crop=64, resolution=8, channels=1).open()
    x, y = ds.tensors
    assert x.shape == (30, 1, 8, 8)
    for k in range(3):  # each crop is constant with its texture's grey level
        assert torch.allclose(x[y == k], torch.full_like(x[y == k], 60 * k / 255 * 2 - 1), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# torchvision-backed sets: the thin call and its error paths
# ---------------------------------------------------------------------------------------------
def test_torchvision_missing_is_one_line_install_hint(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "torchvision" else real(n, *a))
    for cls in (D.CIFAR10, D.MNIST, D.CelebA, D.LSUN, D.Flowers102):
        with pytest.raises(MissingDependencyError, match=r"pip install 'ebmkit-core\[torchvision\]'"):
            make(cls, root=str(tmp_path)).open()


@pytest.fixture
def fake_torchvision(monkeypatch):
    """A stand-in torchvision whose CIFAR10 finds data only where a marker file exists."""
    calls = []

    class CIFAR10:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            if not (download or (root and __import__("pathlib").Path(root, "cifar-10-batches-py").exists())):
                raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
            rng = np.random.default_rng(0)
            self.data = rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
            self.targets = list(range(10)) * 5

    tv = types.ModuleType("torchvision")
    tv.datasets = types.SimpleNamespace(CIFAR10=CIFAR10)
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: types.SimpleNamespace() if n == "torchvision" else real(n, *a))
    return calls


def test_torchvision_missing_data_names_root_and_download(fake_torchvision, tmp_path):
    with pytest.raises(DataError) as err:
        make(D.CIFAR10, root=str(tmp_path / "nowhere")).open()
    msg = str(err.value)
    assert "nowhere" in msg and "data.download=true" in msg and "\n" not in msg
    assert fake_torchvision == []  # a missing root fails before torchvision is asked
    with pytest.raises(DataError, match="Dataset not found.*data.download=true"):
        make(D.CIFAR10, root=str(tmp_path)).open()
    assert fake_torchvision == [(str(tmp_path), True, False)]  # never an implicit download


def test_torchvision_arrays_become_one_tensor(fake_torchvision, tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    ds = make(D.CIFAR10, root=str(tmp_path), limit=20, resolution=16).open()
    x, y = ds.tensors
    assert x.shape == (20, 3, 16, 16) and y.tolist() == list(range(10)) * 2
    assert x.min() >= -1 and x.max() <= 1


def test_lsun_cannot_download():
    with pytest.raises(DataError, match="fyu/lsun"):
        D.LSUN.build(make(D.LSUN), None, "r", "train", True)


# ---------------------------------------------------------------------------------------------
# image folders
# ---------------------------------------------------------------------------------------------
def test_imagefolder_reads_any_images_with_labels_from_subfolders(tmp_path):
    for cls, mode in (("cats", "RGB"), ("dogs", "L")):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new(mode, (20 + i, 30), 200 if mode == "L" else (200, 10, 10)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = make(D.ImageFolder, path=str(tmp_path), resolution=8).open()
    x, y = ds.tensors
    assert x.shape == (6, 3, 8, 8) and y.tolist() == [0, 0, 0, 1, 1, 1]
    lazy = make(D.ImageFolder, path=str(tmp_path), resolution=8, in_memory=False, limit=4).open()
    assert len(lazy) == 4 and torch.equal(lazy[3][0], x[3])


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        make(D.ImageFolder, path=str(tmp_path / "missing")).open()
    with pytest.raises(DataError, match="no images"):
        make(D.ImageFolder, path=str(tmp_path)).open()


# ---------------------------------------------------------------------------------------------
# the epoch plan
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("world,workers", [(1, 1), (2, 1), (2, 3), (4, 2)])
def test_plan_splits_disjointly_with_equal_whole_batches(world, workers):
    counts = [10, 13, 7, 10, 10, 4, 10, 12, 10, 9, 11, 10]  # uneven, as real shard sets are
    for epoch in range(3):
        plan = epoch_plan(counts, epoch=epoch, seed=5, world=world, workers=workers, batch_size=4)
        flat = [i for rank in plan.shards for ws in rank for i in ws]
        assert sorted(flat) == list(range(len(counts)))  # every shard read by exactly one slot
        per_rank = [sum(q) for q in plan.quota]
        assert len(set(per_rank)) == 1 and per_rank[0] == plan.batches_per_rank * 4
        for rank_shards, rank_quota in zip(plan.shards, plan.quota, strict=True):
            for ws, q in zip(rank_shards, rank_quota, strict=True):
                assert q % 4 == 0 and q <= sum(counts[i] for i in ws)
        assert plan.dropped == sum(counts) - world * per_rank[0] >= 0


def test_plan_is_reshuffled_per_epoch_identically_everywhere():
    counts = [5] * 16
    plans = [epoch_plan(counts, epoch=e, seed=0, world=2, workers=1) for e in range(4)]
    assert len({str(p.shards) for p in plans}) == 4
    assert epoch_plan(counts, epoch=2, seed=0, world=2, workers=1) == plans[2]  # any rank, any time
    assert epoch_plan(counts, epoch=2, seed=0, world=2, workers=1, shuffle=False).shards == [
        [list(range(0, 16, 2))], [list(range(1, 16, 2))]]


def test_plan_errors_are_one_line_and_say_what_to_do():
    with pytest.raises(DataError, match=r"3 shard\(s\) for 2 process\(es\) x 2 loader worker\(s\).*at least 4"):
        epoch_plan([5, 5, 5], epoch=0, seed=0, world=2, workers=2)
    with pytest.raises(DataError, match="less than one batch of 64"):
        epoch_plan([5, 5], epoch=0, seed=0, world=2, workers=1, batch_size=64)


# ---------------------------------------------------------------------------------------------
# shards: write, verify, read
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    ds = make(D.MNIST5k, limit=96, resolution=16).open()
    return ds.tensors


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("shards") / "set"
    write_shards(zip(digits[0], digits[1].tolist(), strict=True), out, shard_size=16)
    return out


def pattern(d):
    return str(d / read_manifest(d)["pattern"])


def test_manifest_counts_and_checksums(shard_dir, tmp_path, digits):
    m = read_manifest(shard_dir)
    assert m["count"] == 96 and [s["count"] for s in m["shards"]] == [16] * 6
    assert (m["channels"], m["resolution"], m["pattern"]) == (1, 16, "train-{000000..000005}.tar")
    assert verify(shard_dir) == []
    again = tmp_path / "again"  # deterministic: same input, byte-identical shards
    write_shards(zip(digits[0], digits[1].tolist(), strict=True), again, shard_size=16)
    assert [s["sha256"] for s in read_manifest(again)["shards"]] == [s["sha256"] for s in m["shards"]]
    with open(again / "train-000002.tar", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00garbage")
    assert verify(again) == ["train-000002.tar"]
    with pytest.raises(DataError, match="already holds shards"):
        write_shards(iter([]), again, shard_size=4)


def test_shards_round_trip_images_and_labels(shard_dir, digits):
    ds = ShardDataset(pattern(shard_dir), shuffle=False)
    items = list(ds)
    assert len(items) == 96 and [k for _, k in items] == [f"{i:08d}" for i in range(96)]
    x = torch.stack([t for t, _ in items])
    # PNG holds uint8: the error of one rounding step in [-1, 1] is at most 1/255
    assert (x - digits[0]).abs().max() <= 1 / 255 + 1e-6


def test_shard_ranks_are_disjoint_and_complete(shard_dir, monkeypatch):
    seen = []
    for rank in range(3):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        ds = ShardDataset(pattern(shard_dir), seed=1)
        ds.set_epoch(4)
        seen.append([k for _, k in ds])
    assert [len(s) for s in seen] == [32, 32, 32]
    assert sorted(sum(seen, [])) == [f"{i:08d}" for i in range(96)]


def test_shard_workers_split_within_a_rank(shard_dir):
    ds = ShardDataset(pattern(shard_dir))
    ds.batch_size = 8
    loader = DataLoader(ds, batch_size=8, num_workers=2, drop_last=True)
    keys = [k for _, ks in loader for k in ks]
    assert len(keys) == len(set(keys)) == 96  # 3 shards per worker, whole batches, no repeats


def test_shard_errors(shard_dir, tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"train-000006.tar not found \(4 of 10 missing\)"):
        ShardDataset(str(shard_dir / "train-{000000..000009}.tar"))
    (tmp_path / "x.tar").write_bytes(b"")
    with pytest.raises(DataError, match="no manifest.json"):
        ShardDataset(str(tmp_path / "x.tar"))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(DataError, match="6 shard"):
        next(iter(ShardDataset(pattern(shard_dir))))


def test_batch_stream_over_shards_resumes_where_it_stopped(shard_dir):
    ds = ShardDataset(pattern(shard_dir))
    gen = torch.Generator()
    fresh = batch_stream(ds, 16, generator=gen)
    first = [next(fresh) for _ in range(15)]  # 6 batches per epoch: crosses two epochs
    resumed = batch_stream(ds, 16, generator=gen, start=8)
    for k in range(8, 15):
        assert torch.equal(next(resumed), first[k])
    epoch0 = torch.cat(first[:6]).flatten(1)
    epoch1 = torch.cat(first[6:12]).flatten(1)
    assert not torch.equal(epoch0, epoch1)  # reshuffled
    assert torch.equal(epoch0.sort(0).values, epoch1.sort(0).values)  # but the same examples
    assert ds.epoch == 0  # streams work on their own copy


def test_draw_from_shards(shard_dir):
    x = draw(ShardDataset(pattern(shard_dir)), 150, torch.Generator())
    assert x.shape == (150, 1, 16, 16)


def test_shards_source_resolves_from_data_prefix(shard_dir, registry):
    from ebmkit.runconfig import build_document, resolve

    doc = build_document(names={"data": "shards"}, overrides=[f"data.path={pattern(shard_dir)}", "data.resolution=8"])
    src = resolve(doc, registry).data_source()
    assert src.shape == (1, 8, 8)
    x, key = next(iter(src.open()))
    assert x.shape == (1, 8, 8) and len(key) == 8
    assert make(D.Shards, path=pattern(shard_dir)).shape == (1, 16, 16)  # as stored


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def test_cli_shard_verify_preview(cli, tmp_path):
    out = tmp_path / "s"
    code, stdout, err = cli("data", "shard", "mnist5k", out, "--shard-size", "40", "--set", "limit=100",
                            "--set", "data.resolution=8")
    assert code == 0, err
    assert "train-{000000..000002}.tar" in stdout
    m = json.loads((out / "manifest.json").read_text())
    assert [s["count"] for s in m["shards"]] == [40, 40, 20] and m["resolution"] == 8
    assert cli("data", "verify", out)[0] == 0
    (out / "train-000001.tar").write_bytes(b"broken")
    code, _, err = cli("data", "verify", out)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code != 0 and len(errors) == 1 and "checksum" in errors[0]
    code, _, err = cli("data", "preview", "mnist5k", "-o", tmp_path / "g.png", "-n", "16")
    assert code == 0, err
    assert Image.open(tmp_path / "g.png").size[0] > 64


def test_cli_shard_an_image_folder(cli, tmp_path):
    (tmp_path / "imgs").mkdir()
    for i in range(5):
        Image.new("RGB", (12, 12), (i * 40, 0, 0)).save(tmp_path / "imgs" / f"{i}.jpg")
    code, _, err = cli("data", "shard", tmp_path / "imgs", tmp_path / "s", "--shard-size", "2",
                       "--set", "resolution=8")
    assert code == 0, err
    assert read_manifest(tmp_path / "s")["count"] == 5
    assert len(list(ShardDataset(str(tmp_path / "s" / "train-{000000..000002}.tar")))) == 5


def test_in_memory_sets_are_sampled_per_generator():
    ds = TensorDataset(torch.arange(10.0)[:, None])
    a = next(batch_stream(ds, 4, generator=torch.Generator().manual_seed(0)))
    b = next(batch_stream(ds, 4, generator=torch.Generator().manual_seed(1)))
    assert a.shape == (4, 1) and not torch.equal(a, b)
