"""The bad-input matrix (issue 11): what a hostile or careless user hands the command line, and
what ebmkit must do with every such input -- exit non-zero, print at most two lines that name the
problem and the fix, print no traceback, and leave every file that was there untouched.

Each case is one row of ``CASES``: an id, a ``setup(ctx)`` that writes the inputs the case needs
into the test's own temporary directory (the working directory while the command runs, so default
outputs land there too), the argv, and a substring the message must contain (``forbid``: one it
must not). Add a case by adding a row; :class:`Ctx` has helpers for images, shards, checkpoints
and broken plugins. A case whose fix belongs to code another change owns is marked
``xfail(strict=True, reason="lead: ...")``: it turns into a failure the day it passes, so the mark
is removed then.

The commands run in-process (``ebmkit.cli.main.main``); an exception escaping it is what a user
would see as a traceback, and fails the case with its type and message.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import sys
import textwrap
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

# --------------------------------------------------------------------------------------------
# inputs the cases build on
# --------------------------------------------------------------------------------------------
TOY_RUN = ["--energy", "mlp", "--set", "energy.hidden=4", "--set", "energy.layers=1", "--data",
           "gmm2d", "--set", "data.n=16", "--set", "train.batch_size=4", "--set",
           "sampler.steps=1", "--set", "train.tensorboard=off", "--set", "train.plots=false",
           "--no-progress", "-n", "1"]
IMAGE_RUN = ["--energy", "convnet32", "--set", "energy.nf=2", "--set", "data.resolution=32",
             "--set", "data.channels=1", "--set", "train.batch_size=4", "--set", "sampler.steps=1",
             "--set", "train.tensorboard=off", "--set", "train.plots=false",
             "--set", "train.sample_every=0", "--no-progress"]
SHARD_RUN = [*IMAGE_RUN, "--set", "data.shuffle=false", "--set", "data.buffer=0", "-n", "4"]
TINY_EVAL = ["--set", "toy_density.grid=8", "--set", "toy_density.n_samples=8",
             "--set", "toy_density.long_steps=1", "--set", "toy_density.mmd_samples=8"]


@functools.cache
def _trained_toy_model() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A real checkpoint (one iteration of an MLP on the 8 Gaussians): tensors and metadata."""
    import tempfile

    import ebmkit
    from safetensors import safe_open

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ebm = ebmkit.fit(energy={"name": "mlp", "hidden": 4, "layers": 1},
                         data={"name": "gmm2d", "n": 16}, sampler={"name": "langevin", "steps": 1},
                         iterations=1, batch_size=4, tensorboard="off", seed=0)
    finally:
        torch.set_num_threads(previous)
    with tempfile.TemporaryDirectory() as d:
        path = ebm.save(Path(d) / "model.safetensors")
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())  # noqa: SIM118


@functools.cache
def _toy_run_dir() -> Path:
    import atexit
    import shutil
    import tempfile

    import ebmkit

    root = Path(tempfile.mkdtemp(prefix="ebmkit-bad-input-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ebmkit.fit(energy={"name": "mlp", "hidden": 4, "layers": 1},
                   data={"name": "gmm2d", "n": 16}, sampler={"name": "langevin", "steps": 1},
                   iterations=1, batch_size=4, tensorboard="off", plots=False, seed=0,
                   out_dir=root / "run")
    finally:
        torch.set_num_threads(previous)
    return root / "run"


@functools.cache
def _image_model() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """An untrained convnet32 (nf=2) on [1, 32, 32] images, saved as a checkpoint."""
    import tempfile

    import ebmkit
    from ebmkit.plugins import build_registry
    from safetensors import safe_open

    reg = build_registry()
    torch.manual_seed(0)
    energy = reg.create("energy", "convnet32", {"nf": 2}, (1, 32, 32))
    ebm = ebmkit.model_from(energy, {"name": "langevin", "steps": 1}, shape=(1, 32, 32), registry=reg)
    with tempfile.TemporaryDirectory() as d:
        path = ebm.save(Path(d) / "model.safetensors")
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())  # noqa: SIM118


class _Unpickled:
    """Unpickling this object creates the file ``UNPICKLED``: a pickle checkpoint must never be
    unpickled, and the case checks that file never appears."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@dataclass
class FakeEntryPoint:
    name: str
    value: str
    dist_name: str = "ebmkit-hostile"
    group: str = "ebmkit"

    @property
    def dist(self):
        return SimpleNamespace(name=self.dist_name, version="6.6.6")

    def load(self):
        import importlib

        return importlib.import_module(self.value)


class Ctx:
    """What a case's ``setup`` gets: the working directory and helpers that write inputs there."""

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch, cli: Any):
        self.path, self.monkeypatch, self._cli = path, monkeypatch, cli
        self.checks: list[Callable[[], None]] = []  # extra assertions after the command ran

    def write(self, name: str, data: str | bytes) -> Path:
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            p.write_bytes(data)
        else:
            p.write_text(data)
        return p

    def images(self, folder: str, n: int = 4, size: int = 8) -> Path:
        from PIL import Image

        d = self.path / folder
        d.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(d / f"{i}.png")
        return d

    def shards(self, folder: str, n: int = 16, shard_size: int = 4) -> Path:
        from ebmkit.shards import write_shards

        g = torch.Generator().manual_seed(0)
        write_shards([(torch.rand(1, 8, 8, generator=g) * 2 - 1, i % 2) for i in range(n)],
                     self.path / folder, shard_size=shard_size)
        return self.path / folder

    def model(self, name: str = "model.safetensors", *, image: bool = False,
              meta: dict[str, str | None] | None = None,
              tensors: Callable[[dict], dict] | None = None) -> Path:
        """A checkpoint: a real one, or with metadata fields replaced (``None`` removes one)
        and/or its tensors transformed."""
        from safetensors.torch import save_file

        t, m = _image_model() if image else _trained_toy_model()
        t, m = dict(t), dict(m)
        for k, v in (meta or {}).items():
            if v is None:
                m.pop(k, None)
            else:
                m[k] = v
        if tensors is not None:
            t = tensors(t)
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        save_file(t, str(p), metadata=m)
        return p

    def run_dir(self, name: str = "run") -> Path:
        """A finished run directory (one iteration of an MLP on the 8 Gaussians, written by
        ``ebmkit.fit`` with whatever layout it writes), copied from a run made once per session."""
        import shutil

        shutil.copytree(_toy_run_dir(), self.path / name, symlinks=True)
        return self.path / name

    def config(self, doc: dict) -> dict:
        """A checkpoint's run document, changed by ``doc`` (section -> {key: value})."""
        cfg = json.loads(_trained_toy_model()[1]["config"])
        for section, table in doc.items():
            cfg.setdefault(section, {}).update(table)
        return cfg

    def plugins(self, sources: dict[str, str]) -> None:
        """Installs modules as ``ebmkit`` entry points next to the real ones (as a broken
        third-party plugin would be installed) and makes the CLI rediscover its plugins."""
        import ebmkit.plugins as P

        site = self.path / "site-packages"
        site.mkdir(exist_ok=True)
        real = list(metadata.entry_points(group=P.GROUP))
        eps = []
        for name, src in sources.items():
            mod = f"_ebmkit_hostile_{name}"
            (site / f"{mod}.py").write_text(textwrap.dedent(src))
            sys.modules.pop(mod, None)
            eps.append(FakeEntryPoint(name, mod))
        self.monkeypatch.syspath_prepend(str(site))
        self.monkeypatch.setattr(P.metadata, "entry_points", lambda group=None: [*real, *eps])
        self._cli.fresh()


# --------------------------------------------------------------------------------------------
# the matrix
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    expect: str
    setup: Callable[[Ctx], None] | None = None
    forbid: str | None = None
    marks: tuple = ()
    code: int | None = None  # the exit code, when a specific one is promised


def case(id, argv, expect, setup=None, *, forbid=None, lead=None, code=None, marks=()) -> Any:
    """One row; ``lead="..."`` marks a case whose fix is in a file this change does not own."""
    if lead:
        marks = (*marks, pytest.mark.xfail(strict=True, reason=f"lead: {lead}"))
    c = Case(id, tuple(str(a) for a in argv), expect, setup, forbid, tuple(marks), code)
    return pytest.param(c, id=id, marks=c.marks)


CLICK = ("click usage errors print 3 lines (Usage/Try/Error); main() should print one: "
         "'error: <message>; see `ebmkit <command> --help`'")

# -- helpers the setups share ----------------------------------------------------------------
def a_file(ctx):
    ctx.write("afile", "I am a regular file, not a directory\n")


def a_dir(ctx):
    (ctx.path / "adir").mkdir()


def model(ctx):
    ctx.model()


def image_model(ctx):
    ctx.model(image=True)
    (ctx.path / "adir").mkdir()


def config(text: str | bytes, name: str = "run.toml"):
    return lambda ctx: ctx.write(name, text)


def images(folder="imgs", **kw):
    return lambda ctx: ctx.images(folder, **kw)


def bad_image(data: bytes | Callable[[bytes], bytes], name="x.png"):
    def setup(ctx):
        d = ctx.images("imgs", n=3, size=16)
        good = (d / "0.png").read_bytes()
        (d / name).write_bytes(data(good) if callable(data) else data)
    return setup


def images_and_no_escape(ctx):
    ctx.images("imgs")

    def nothing_outside():
        assert not list(ctx.path.glob("evil*")), "a shard was written outside the output directory"
    ctx.checks.append(nothing_outside)


def pixel_bomb(ctx):
    """An image above PIL's decompression-bomb limit (the limit lowered, not the image raised)."""
    from PIL import Image

    ctx.images("imgs", n=2, size=32)
    ctx.monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)


def shards(**kw):
    return lambda ctx: ctx.shards("shards", **kw)


def shards_then(change):
    def setup(ctx):
        d = ctx.shards("shards")
        change(ctx, d)
    return setup


def garbage_shard(ctx, d):
    (d / "train-000001.tar").write_bytes(np.random.default_rng(1).bytes(3000))


def truncated_shard(ctx, d):
    p = d / "train-000002.tar"
    p.write_bytes(p.read_bytes()[:700])


def _tar(path: Path, members: dict[str, bytes]) -> None:
    import tarfile

    with tarfile.open(path, "w") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))


def text_shard(ctx, d):
    _tar(d / "train-000001.tar", {f"{k:08d}.txt": b"hello" for k in range(4, 8)})


def junk_png_shard(ctx, d):
    _tar(d / "train-000001.tar", {f"{k:08d}.png": b"\x89PNG not really" for k in range(4, 8)})


def manifest_without(field):
    def change(ctx, d):
        m = json.loads((d / "manifest.json").read_text())
        del m[field]
        (d / "manifest.json").write_text(json.dumps(m))
    return change


def unlisted_shard(ctx, d):
    (d / "train-000004.tar").write_bytes((d / "train-000000.tar").read_bytes())


def meta(**fields):
    return lambda ctx: ctx.model(meta=fields)


def weights(fn):
    return lambda ctx: ctx.model(tensors=fn)


def pickle_checkpoint(name):
    def setup(ctx):
        marker = ctx.path / "UNPICKLED"
        torch.save({"state_dict": _Unpickled(marker)}, ctx.path / name)

        def never_unpickled():
            assert not marker.exists(), f"{name} was unpickled"
        ctx.checks.append(never_unpickled)
    return setup


def nan_weights(t):
    return {k: torch.full_like(v, float("nan")) for k, v in t.items()}


def drop_first(t):
    return {k: v for i, (k, v) in enumerate(t.items()) if i}


def plugins(**sources):
    return lambda ctx: ctx.plugins(sources)


def plugins_and_model(**sources):
    def setup(ctx):
        ctx.model()
        ctx.plugins(sources)
    return setup


SAMPLER = """
from dataclasses import dataclass
from ebmkit import hookimpl
from ebmkit.builtin.samplers import Langevin

class {cls}(Langevin):
    name = "{name}"
{body}
@hookimpl
def ebmkit_register(register):
    register({cls})
"""


def sampler_plugin(name, body="", cls="Hostile"):
    return SAMPLER.format(name=name, body=textwrap.indent(textwrap.dedent(body), "    "), cls=cls)


RAISING_ENERGY = """
from ebmkit import hookimpl
from ebmkit.builtin.energies import MLPEnergy

class Boom(MLPEnergy):
    name = "boom"
    def __init__(self, config, shape):
        raise RuntimeError("CUDA kernels not compiled for this GPU")

@hookimpl
def ebmkit_register(register):
    register(Boom)
"""

RAISING_EVALUATOR = """
from ebmkit import hookimpl
from ebmkit.builtin.longrun import LongRun

class BoomEval(LongRun):
    name = "boom-eval"
    def __init__(self, config):
        raise KeyError("weights_url")

@hookimpl
def ebmkit_register(register):
    register(BoomEval)
"""

NAN_DATASET = """
import torch
from torch.utils.data import TensorDataset
from ebmkit import hookimpl
from ebmkit.builtin.toys import GMM2D

class Holes(GMM2D):
    name = "holes"
    summary = "A CSV with missing values read as NaN."
    def open(self, *, split="train"):
        x = torch.randn(16, 2)
        x[5, 1] = float("nan")
        return TensorDataset(x)

@hookimpl
def ebmkit_register(register):
    register(Holes)
"""

NOT_A_DATACLASS = """
from ebmkit import hookimpl
from ebmkit.builtin.samplers import Langevin

class Plain(Langevin):
    name = "plain"
    class Config:  # a plain class, not a dataclass
        steps = 10

@hookimpl
def ebmkit_register(register):
    register(Plain)
"""

BROKEN_IMPORT = """
import ebmkit_nonexistent_dependency  # the plugin's own dependency is missing
"""


CASES = [
    # -- run: flags and --set --------------------------------------------------------------
    case("run-seed-negative", ["run", "--seed", "-1", "--dry-run"], "train.seed: must be >= 0"),
    case("run-seed-huge", ["run", "--seed", "99999999999999999999", "--dry-run"],
         "train.seed: must be <= 4294967295"),
    case("run-iterations-negative", ["run", "-n", "-5", "--dry-run"],
         "train.iterations: must be >= 0"),
    case("run-batch-size-zero", ["run", "--set", "train.batch_size=0", "--dry-run"],
         "train.batch_size: must be >= 1"),
    case("run-set-without-equals", ["run", "--set", "sampler.steps", "--dry-run"],
         "expected SECTION.KEY=VALUE"),
    case("run-set-empty-string", ["run", "--set", "", "--dry-run"], "expected SECTION.KEY=VALUE"),
    case("run-set-empty-key", ["run", "--set", "=3", "--dry-run"], "expected SECTION.KEY=VALUE"),
    case("run-set-unknown-section", ["run", "--set", "optim.lr=1", "--dry-run"],
         "unknown section 'optim'"),
    case("run-set-wrong-type", ["run", "--set", "sampler.steps=lots", "--dry-run"],
         "sampler.steps: expected an integer, got 'lots'"),
    case("run-set-nan", ["run", "--set", "train.lr=nan", "--dry-run"], "train.lr: must be finite"),
    case("run-set-float32-overflow", ["run", "--set", "train.data_noise=1e39", "--dry-run"],
         "overflows float32"),
    case("run-set-bad-choice", ["run", "--set", "train.mixed_precision=fp8", "--dry-run"],
         "'fp8' is not one of: no, bf16, fp16"),
    case("run-energy-empty-name", ["run", "--energy", "", "--dry-run"], "unknown energy ''"),
    case("run-preset-with-space", ["run", "--preset", "toy gmm", "--dry-run"],
         "unknown preset 'toy gmm'"),
    case("run-data-unknown-prefix", ["run", "--data", "s3:bucket/x.tar", "--dry-run"],
         "unknown dataset 's3'"),
    case("run-device-typo", ["run", "--device", "cdua", "--dry-run"],
         "device 'cdua' is not one of auto, cpu, cuda, cuda:N, mps"),
    case("run-device-without-cuda", ["run", *TOY_RUN, "--device", "cuda:7", "--out", "r"],
         "CUDA is not available",
         marks=(pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),)),
    case("run-energy-for-images-on-points", ["run", "--data", "gmm2d", "--dry-run"],
         "expects images [C, 32, 32], but the data has shape (2,)"),
    case("run-energy-param-zero", ["run", *TOY_RUN, "--set", "energy.hidden=0", "--dry-run"],
         "energy.hidden: must be >= 1"),
    case("run-out-under-a-file", ["run", *TOY_RUN, "--out", "afile/run"],
         "cannot create output directory afile/run", a_file),
    case("run-out-is-a-file", ["run", *TOY_RUN, "--out", "afile"], "afile is a file", a_file),
    case("run-iterations-not-a-number", ["run", "-n", "ten"], "Invalid value for '--iterations'"),
    case("run-misspelt-option", ["run", "--itrations", "5"], "No such option"),
    case("unknown-command", ["trian"], "No such command 'trian'"),
    # -- run --config ----------------------------------------------------------------------
    case("config-not-utf8", ["run", "--config", "run.toml", "--dry-run"], "is not UTF-8",
         config(b"[train]\nlr = 1e-4  # \xe9t\xe9\n")),
    case("config-invalid-toml", ["run", "--config", "run.toml", "--dry-run"], "invalid TOML",
         config("[train\niterations = 1\n")),
    case("config-unknown-section", ["run", "--config", "run.toml", "--dry-run"],
         "unknown section [optimizer]", config("[optimizer]\nlr = 1.0\n")),
    case("config-unknown-key", ["run", "--config", "run.toml", "--dry-run"],
         "unknown key 'train.learning_rate'", config("[train]\nlearning_rate = 1.0\n")),
    case("config-wrong-type", ["run", "--config", "run.toml", "--dry-run"],
         "train.iterations: expected an integer, got 'ten'", config('[train]\niterations = "ten"\n')),
    case("config-nan", ["run", "--config", "run.toml", "--dry-run"], "train.lr: must be finite",
         config("[train]\nlr = nan\n")),
    case("config-inf-for-an-integer", ["run", "--config", "run.toml", "--dry-run"],
         "train.batch_size: expected an integer, got inf", config("[train]\nbatch_size = inf\n")),
    case("config-section-not-a-table", ["run", "--config", "run.toml", "--dry-run"],
         "[train] must be a table", config("train = 5\n")),
    case("config-date-for-a-number", ["run", "--config", "run.toml", "--dry-run"],
         "train.lr: expected a number", config("[train]\nlr = 1979-05-27\n")),
    case("config-nested-list", ["run", "--config", "run.toml", "--dry-run"],
         "train.betas: expected a number", config("[train]\nbetas = [[0.9], [0.99]]\n")),
    case("config-int-for-a-bool", ["run", "--config", "run.toml", "--dry-run"],
         "train.plots: expected true or false", config("[train]\nplots = 1\n")),
    case("config-out-of-range", ["run", "--config", "run.toml", "--dry-run"],
         "train.log_every: must be >= 1", config("[train]\nlog_every = 0\n")),
    case("config-empty-name", ["run", "--config", "run.toml", "--dry-run"], "[energy] needs a name",
         config('[energy]\nname = ""\n')),
    case("config-is-a-directory", ["run", "--config", "adir", "--dry-run"], "adir is a directory",
         a_dir),
    case("config-missing-path-with-spaces", ["run", "--config", "my configs/run 1.toml"],
         "config file not found: my configs/run 1.toml"),
    case("config-is-a-checkpoint", ["run", "--config", "model.safetensors", "--dry-run"],
         "is not UTF-8", model),
    # -- toys ------------------------------------------------------------------------------
    case("toy-data-zero-sd", ["run", *TOY_RUN, "--set", "data.sd=0", "--dry-run"],
         "data.sd: must be > 0.0"),
    case("toy-data-negative-weight", ["run", *TOY_RUN, "--data", "gmm1d",
                                      "--set", "data.weights=-1,1", "--dry-run"],
         "weights must be >= 0"),
    case("toy-data-empty-means", ["run", *TOY_RUN, "--data", "gmm1d", "--set", "data.means=[]",
                                  "--dry-run"], "means and weights need the same, non-zero length"),
    case("toy-data-overflowing-radius", ["run", *TOY_RUN, "--set", "data.radius=1e300"],
         "data.radius: 1e+300 overflows float32"),
    case("toy-unknown", ["toy", "banana"], "unknown toy 'banana'; choose one of: gmm, rings, 1d"),
    case("toy-unknown-regime", ["toy", "gmm", "--regime", "sideways"], "--regime sideways"),
    case("toy-bad-eval-set-fails-before-training", ["toy", "gmm", "--eval-set", "long_steps=abc"],
         "toy_density.long_steps: expected an integer"),
    case("toy-bad-set", ["toy", "gmm", "--set", "train.lr=-1"], "train.lr: must be > 0.0"),
    case("toy-out-under-a-file", ["toy", "1d", "--out", "afile/toy"], "cannot create --out afile/toy",
         a_file),
    # -- image folders ---------------------------------------------------------------------
    case("images-missing-folder-with-spaces", ["run", *IMAGE_RUN, "-n", "1",
                                                "--data", "imagefolder:my photos"],
         "image folder my photos does not exist"),
    case("images-folder-is-a-file", ["run", *IMAGE_RUN, "-n", "1", "--data", "imagefolder:afile"],
         "afile is a file, not a directory", a_file),
    case("images-empty-folder", ["run", *IMAGE_RUN, "-n", "1", "--data", "imagefolder:adir"],
         "no images", a_dir),
    case("images-only-other-files", ["run", *IMAGE_RUN, "-n", "1", "--data", "imagefolder:docs"],
         "no images", lambda ctx: (ctx.write("docs/readme.txt", "hi"), ctx.write("docs/a.csv", "1"))),
    case("images-text-named-png", ["run", *IMAGE_RUN, "-n", "1", "--data", "imagefolder:imgs"],
         "cannot read image imgs/x.png", bad_image(b"just some notes\n")),
    case("images-random-bytes", ["run", *IMAGE_RUN, "-n", "1", "--data", "imagefolder:imgs"],
         "cannot read image imgs/x.png", bad_image(np.random.default_rng(0).bytes(500))),
    case("images-truncated", ["run", *IMAGE_RUN, "-n", "1", "--data", "imagefolder:imgs"],
         "image file is truncated", bad_image(lambda good: good[: len(good) * 2 // 3])),
    case("images-decompression-bomb", ["data", "preview", "imgs", "-n", "2"], "exceeds limit",
         pixel_bomb),
    case("images-no-path", ["run", *IMAGE_RUN, "--data", "imagefolder", "--dry-run"],
         "data: missing required key(s): path"),
    case("preview-points-not-images", ["data", "preview", "gmm2d"], "not images"),
    case("preview-out-under-a-file", ["data", "preview", "imgs", "-n", "2", "-o", "afile/g.png"],
         "cannot write afile/g.png", lambda ctx: (ctx.images("imgs"), a_file(ctx))),
    case("preview-out-is-a-directory", ["data", "preview", "imgs", "-n", "2", "-o", "imgs"],
         "imgs is a directory", images()),
    case("preview-out-unknown-extension", ["data", "preview", "imgs", "-n", "2", "-o", "g.txt"],
         "unknown image extension '.txt'", images()),
    # -- shards ----------------------------------------------------------------------------
    case("shard-points-not-images", ["data", "shard", "gmm2d", "out", "--set", "n=8"],
         "shards hold images [C, H, W]"),
    case("shard-out-under-a-file", ["data", "shard", "imgs", "afile/shards"],
         "cannot create the shard directory afile/shards", lambda ctx: (ctx.images("imgs"), a_file(ctx))),
    case("shard-into-existing-shards", ["data", "shard", "imgs", "shards"], "already holds shards",
         lambda ctx: (ctx.images("imgs"), ctx.shards("shards"))),
    case("shard-size-zero", ["data", "shard", "imgs", "out", "--shard-size", "0"],
         "Invalid value for '--shard-size'", images()),
    case("shard-prefix-escapes-the-directory", ["data", "shard", "imgs", "out", "--prefix", "../evil"],
         "must be a plain file name", images_and_no_escape),
    case("shard-prefix-empty", ["data", "shard", "imgs", "out", "--prefix", ""],
         "must be a plain file name", images()),
    case("shard-set-without-equals", ["data", "shard", "imgs", "out", "--set", "resolution"],
         "expected KEY=VALUE", images()),
    case("download-builtin-dataset", ["data", "download", "mnist5k"], "has nothing to download"),
    case("verify-corrupt-shard", ["data", "verify", "shards"], "do not match their checksum",
         shards_then(garbage_shard)),
    case("verify-not-a-shard-dir", ["data", "verify", "adir"], "no manifest.json in adir", a_dir),
    case("shards-pattern-matches-nothing",
         ["run", *SHARD_RUN, "--data", "shards:shards/train-{000000..000007}.tar"],
         "shard shards/train-000004.tar not found (4 of 8 missing)", shards()),
    case("shards-pattern-is-the-directory", ["run", *SHARD_RUN, "--data", "shards:shards"],
         "shards is a directory; the shard pattern names the tar files", shards()),
    case("shards-pattern-empty", ["run", *SHARD_RUN, "--data", "shards:"],
         "the shard pattern is empty"),
    case("shards-no-manifest", ["run", *SHARD_RUN, "--data", "shards:shards/train-000000.tar"],
         "no manifest.json in shards", shards_then(lambda ctx, d: (d / "manifest.json").unlink())),
    case("shards-manifest-not-json", ["run", *SHARD_RUN, "--data", "shards:shards/train-000000.tar"],
         "manifest.json is damaged",
         shards_then(lambda ctx, d: (d / "manifest.json").write_text("{ oops"))),
    case("shards-manifest-missing-field",
         ["run", *IMAGE_RUN, "--set", "data.resolution=None", "--data",
          "shards:shards/train-{000000..000003}.tar", "--dry-run"],
         "no field 'resolution'", shards_then(manifest_without("resolution"))),
    case("shards-unlisted-shard", ["run", *SHARD_RUN, "--data",
                                   "shards:shards/train-{000000..000004}.tar"],
         "train-000004.tar is not listed in", shards_then(unlisted_shard)),
    case("shards-corrupt-met-during-training",
         ["run", *SHARD_RUN, "--out", "r", "--data", "shards:shards/train-{000000..000003}.tar"],
         "shard shards/train-000001.tar is corrupt or truncated", shards_then(garbage_shard)),
    case("shards-truncated-met-during-training",
         ["run", *SHARD_RUN, "--out", "r", "--data", "shards:shards/train-{000000..000003}.tar"],
         "shard shards/train-000002.tar is corrupt or truncated", shards_then(truncated_shard)),
    case("shards-wrong-content", ["run", *SHARD_RUN, "--out", "r", "--data",
                                  "shards:shards/train-{000000..000003}.tar"],
         "has no .png image", shards_then(text_shard)),
    case("shards-png-that-is-not", ["run", *SHARD_RUN, "--out", "r", "--data",
                                    "shards:shards/train-{000000..000003}.tar"],
         "is not a readable PNG", shards_then(junk_png_shard)),
    # -- checkpoints given to sample / eval ------------------------------------------------
    case("sample-missing-path-with-spaces", ["sample", "my runs/model v2.safetensors"],
         "checkpoint not found: my runs/model v2.safetensors"),
    case("sample-empty-file", ["sample", "m.safetensors"], "not a readable safetensors file",
         config(b"", "m.safetensors")),
    case("sample-random-bytes", ["sample", "m.safetensors"], "not a readable safetensors file",
         config(np.random.default_rng(0).bytes(4096), "m.safetensors")),
    case("sample-truncated", ["sample", "t.safetensors"], "t.safetensors",
         lambda ctx: ctx.write("t.safetensors", ctx.model().read_bytes()[:-40])),
    case("sample-foreign-safetensors", ["sample", "w.safetensors"],
         "not an ebmkit energy checkpoint",
         lambda ctx: __import__("safetensors.torch").torch.save_file(
             {"w": torch.zeros(3)}, str(ctx.path / "w.safetensors"))),
    case("sample-pickle-pt", ["sample", "model.pt"], "not a readable safetensors file",
         pickle_checkpoint("model.pt")),
    case("sample-pickle-renamed", ["sample", "model.safetensors"], "not a readable safetensors file",
         pickle_checkpoint("model.safetensors")),
    case("sample-meta-step-not-a-number", ["sample", "model.safetensors"], "'step'",
         meta(step="abc")),
    case("sample-meta-shape-negative", ["sample", "model.safetensors"], "'shape'",
         meta(shape="[-3]")),
    case("sample-meta-config-a-list", ["sample", "model.safetensors"], "'config'",
         meta(config="[1, 2]")),
    case("sample-meta-shape-missing", ["sample", "model.safetensors"], "'shape' is missing",
         meta(shape=None)),
    case("sample-meta-future-format", ["sample", "model.safetensors"], "ebmkit.energy/99",
         meta(format="ebmkit.energy/99")),
    case("sample-meta-unknown-energy", ["sample", "model.safetensors"],
         "needs energy 'transformer9000'", meta(energy="transformer9000")),
    case("sample-meta-config-wrong-type", ["sample", "model.safetensors"],
         "energy.hidden: expected an integer",
         lambda ctx: ctx.model(meta={"config": json.dumps(ctx.config(
             {"energy": {"hidden": "many"}}))})),
    case("sample-weights-do-not-fit", ["sample", "model.safetensors"], "do not fit",
         lambda ctx: ctx.model(meta={"config": json.dumps(ctx.config(
             {"energy": {"hidden": 16}}))})),
    case("sample-weights-missing-tensor", ["sample", "model.safetensors"], "do not fit",
         weights(drop_first)),
    case("sample-nan-weights", ["sample", "model.safetensors", "-n", "2", "-o", "s.safetensors"],
         "holds NaN or inf values", weights(nan_weights), forbid="try fewer --steps"),
    case("sample-directory-not-a-run", ["sample", "adir"], "adir holds no model.safetensors", a_dir),
    case("sample-out-under-a-file", ["sample", "model.safetensors", "-n", "2",
                                     "-o", "afile/s.safetensors"], "afile",
         lambda ctx: (ctx.model(), a_file(ctx))),
    case("sample-out-is-a-directory", ["sample", "model.safetensors", "-n", "2", "-o", "adir"],
         "adir is a directory", image_model),
    case("sample-out-unknown-extension", ["sample", "model.safetensors", "-n", "2", "-o", "s.txt"],
         "unknown image extension '.txt'", image_model),
    case("sample-seed-huge", ["sample", "model.safetensors", "-n", "2", "-o", "s.safetensors",
                              "--seed", str(2**70)], "seed must be an integer", model),
    case("sample-seed-negative", ["sample", "model.safetensors", "-n", "2", "-o", "s.safetensors",
                                  "--seed", "-1"], "seed must be an integer", model),
    case("sample-n-zero", ["sample", "model.safetensors", "-n", "0"], "Invalid value for '-n'",
         model),
    case("sample-set-bad-value-is-not-the-checkpoints-fault",
         ["sample", "model.safetensors", "--set", "sampler.steps=abc"],
         "sampler.steps: expected an integer", model, forbid="does not fit"),
    case("sample-set-train-key", ["sample", "model.safetensors", "--set", "train.lr=1"],
         "only sampler.* and init.* can be changed", model),
    case("sample-device-typo", ["sample", "model.safetensors", "--device", "banana"], "banana",
         model),
    case("eval-unknown-evaluator", ["eval", "model.safetensors", "-e", "fid50k"],
         "unknown evaluator 'fid50k'", model),
    case("eval-set-other-section", ["eval", "model.safetensors", "-e", "toy_density",
                                    "--set", "longrun.steps=3"],
         "must be one of the chosen evaluators", model),
    case("eval-set-out-of-range", ["eval", "model.safetensors", "-e", "toy_density",
                                   "--set", "toy_density.grid=0"], "grid: must be >= 8", model),
    case("eval-truncated-checkpoint", ["eval", "t.safetensors", "-e", "longrun"], "t.safetensors",
         lambda ctx: ctx.write("t.safetensors", ctx.model().read_bytes()[:100])),
    case("eval-out-under-a-file", ["eval", "model.safetensors", "-e", "longrun", "--set",
                                   "longrun.steps=1", "--set", "longrun.n=2", "--out", "afile/ev"],
         "cannot create the output directory afile/ev", lambda ctx: (ctx.model(), a_file(ctx))),
    case("eval-out-is-the-checkpoint", ["eval", "run", "-e", "longrun", "--set", "longrun.steps=1",
                                        "--set", "longrun.n=2", "--out", "run/model.safetensors"],
         "cannot create the output directory run/model.safetensors", lambda ctx: ctx.run_dir("run")),
    case("eval-toy-density-out-under-a-file", ["eval", "model.safetensors", "-e", "toy_density",
                                               *TINY_EVAL, "--out", "afile/ev"], "afile/ev",
         lambda ctx: (ctx.model(), a_file(ctx))),
    case("eval-data-without-density", ["eval", "model.safetensors", "-e", "toy_density",
                                       "--data", "mnist5k", *TINY_EVAL],
         "needs a dataset with a known density", model),
    # -- list / describe -------------------------------------------------------------------
    case("list-unknown-kind", ["list", "widgets"], "unknown kind 'widgets'"),
    case("describe-without-name", ["describe", "energy"], "give a name"),
    case("describe-unknown-kind", ["describe", "optimizer", "adam"], "unknown kind 'optimizer'"),
    case("describe-unknown-name", ["describe", "sampler", "langevn"], "Did you mean 'langevin'?"),
    case("plugin-new-dir-under-a-file", ["plugin", "new", "my-sampler", "--dir", "afile/pkg"],
         "afile is a file, not a directory", a_file),
    case("plugin-new-bad-name", ["plugin", "new", "My Sampler!"], "plugin name 'My Sampler!'"),
    # -- plugins ---------------------------------------------------------------------------
    case("plugin-energy-constructor-raises", ["run", *TOY_RUN, "--energy", "boom", "--dry-run"],
         "energy 'boom' from plugin 'boom' (ebmkit-hostile 6.6.6) failed to start: RuntimeError",
         plugins(boom=RAISING_ENERGY)),
    case("plugin-sampler-constructor-raises", ["run", *TOY_RUN, "--sampler", "fragile", "--out", "r"],
         "sampler 'fragile' from plugin 'fragile'",
         plugins(fragile=sampler_plugin("fragile", """
             def __init__(self, config):
                 raise ZeroDivisionError("step size")
         """))),
    case("plugin-evaluator-constructor-raises", ["eval", "model.safetensors", "-e", "boom-eval"],
         "evaluator 'boom-eval' from plugin 'boomeval'", plugins_and_model(boomeval=RAISING_EVALUATOR)),
    case("plugin-duplicate-names", ["list", "samplers"], "sampler 'twin' is provided by two plugins",
         plugins(one=sampler_plugin("twin"), two=sampler_plugin("twin", cls="Other"))),
    case("plugin-shadows-a-core-name", ["run", "--dry-run"],
         "sampler 'langevin' is provided by two plugins", plugins(shadow=sampler_plugin("langevin"))),
    case("plugin-config-not-a-dataclass", ["run", "--sampler", "plain", "--dry-run"],
         "1 plugin(s) failed to load: plain (", plugins(plain=NOT_A_DATACLASS)),
    case("plugin-missing-dependency", ["run", "--sampler", "needy", "--dry-run"],
         "unknown sampler 'needy'", plugins(needy=BROKEN_IMPORT)),
    case("plugin-dataset-with-nan", ["run", *TOY_RUN, "--data", "holes", "--out", "r"],
         "contains non-finite values (NaN or inf)", plugins(holes=NAN_DATASET),
         forbid="diverged"),
]


# -- run directories and resume (the crash-consistent layout: checkpoints/step-N + LATEST) -----
def _step_dir(run: Path) -> Path:
    return run / "checkpoints" / "step-000001"


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _edit_run_toml(ctx, old: str, new: str) -> None:
    p = ctx.run_dir("run") / "run.toml"
    text = p.read_text()
    assert old in text, text
    p.write_text(text.replace(old, new))


def _two_ranks(ctx) -> None:
    import shutil

    d = _step_dir(ctx.run_dir("run"))
    shutil.copy(d / "rank0.safetensors", d / "rank1.safetensors")
    _edit_json(d / "state.json", lambda s: s.update(world_size=2))


def _legacy_mismatch(ctx) -> None:
    import shutil

    run = ctx.run_dir("run")
    (run / "train_state").mkdir()
    shutil.copy(_step_dir(run) / "rank0.safetensors", run / "train_state" / "rank0.safetensors")
    state = json.loads((_step_dir(run) / "state.json").read_text())
    state["step"] = 5
    (run / "train_state" / "state.json").write_text(json.dumps(state))
    shutil.rmtree(run / "checkpoints")


RUN_DIR_CASES = [
    case("resume-missing-dir", ["run", "--resume", "nope"], "nope/run.toml not found"),
    case("resume-a-file", ["run", "--resume", "afile"], "run.toml not found", a_file),
    case("resume-empty-dir", ["run", "--resume", "adir"], "run.toml not found", a_dir),
    case("resume-with-a-component-flag", ["run", "--resume", "run", "--energy", "mlp"],
         "--resume continues a saved run", lambda ctx: ctx.run_dir("run")),
    case("resume-changes-the-learning-rate", ["run", "--resume", "run", "--set", "train.lr=0.1"],
         "cannot change on resume", lambda ctx: ctx.run_dir("run")),
    case("resume-keep-zero", ["run", "--resume", "run", "--keep", "0"], "--keep",
         lambda ctx: ctx.run_dir("run")),
    case("resume-run-toml-not-toml", ["run", "--resume", "run"], "invalid TOML",
         lambda ctx: (ctx.run_dir("run") / "run.toml").write_text("[train\niterations = ")),
    case("resume-run-toml-unknown-energy", ["run", "--resume", "run"], "unknown energy 'nope'",
         lambda ctx: _edit_run_toml(ctx, 'name = "mlp"', 'name = "nope"')),
    case("resume-after-the-energy-size-changed", ["run", "--resume", "run", "--no-progress"],
         "was the energy's size changed?", lambda ctx: _edit_run_toml(ctx, "hidden = 4", "hidden = 6")),
    case("resume-only-checkpoint-truncated", ["run", "--resume", "run", "--no-progress"],
         "is complete and readable",
         lambda ctx: (_step_dir(ctx.run_dir("run")) / "model.safetensors").write_bytes(b"\x10\x00")),
    case("resume-state-json-wrong-types", ["run", "--resume", "run", "--no-progress"],
         "is complete and readable",
         lambda ctx: _edit_json(_step_dir(ctx.run_dir("run")) / "state.json",
                                lambda s: s.update(step="1"))),
    case("resume-state-json-not-json", ["run", "--resume", "run", "--no-progress"],
         "is complete and readable",
         lambda ctx: (_step_dir(ctx.run_dir("run")) / "state.json").write_bytes(b"\xff\xfe{")),
    case("resume-rank-file-from-another-step", ["run", "--resume", "run", "--no-progress"],
         "is complete and readable",
         lambda ctx: _edit_json(_step_dir(ctx.run_dir("run")) / "state.json",
                                lambda s: s.update(step=7))),
    case("resume-optimizer-state-does-not-fit", ["run", "--resume", "run", "--no-progress"],
         "the saved optimizer state does not fit",
         lambda ctx: _edit_json(_step_dir(ctx.run_dir("run")) / "state.json",
                                lambda s: s["optimizer"]["param_groups"][0].update(params=[0]))),
    case("resume-with-another-world-size", ["run", "--resume", "run", "--no-progress"],
         "resume it with the same number", _two_ranks),
    case("resume-old-layout-inconsistent", ["run", "--resume", "run", "--no-progress"],
         "this old-layout run cannot be resumed", _legacy_mismatch),
    case("fresh-run-into-a-finished-run", ["run", *TOY_RUN, "--out", "run"], "already holds a run",
         lambda ctx: ctx.run_dir("run")),
    case("fresh-run-over-the-users-run-toml", ["run", *TOY_RUN, "--out", "mine"],
         "already holds a run (run.toml)",
         lambda ctx: ctx.write("mine/run.toml", "# my experiment, with notes\n[train]\nlr = 1e-4\n")),
    case("fresh-run-out-is-a-file", ["run", *TOY_RUN, "--out", "afile"], "is a file", a_file),
    case("fresh-run-out-under-a-file", ["run", *TOY_RUN, "--out", "afile/run"],
         "cannot create output directory afile/run", a_file),
    case("sample-run-dir-without-model", ["sample", "adir", "-n", "2"], "holds no model.safetensors",
         a_dir),
]
CASES += RUN_DIR_CASES


# --------------------------------------------------------------------------------------------
# the checks every case gets
# --------------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: relative path -> (sha256, mode)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest(),
                                             p.stat().st_mode)
    return out


@functools.cache
def _installed_plugins():
    """The CLI's (plugin manager, registry) for the installed plugins, built once: the cases that
    install broken plugins make the CLI rebuild its own."""
    from ebmkit.plugins import build_registry, get_plugin_manager

    pm = get_plugin_manager()
    return pm, build_registry(pm)


@pytest.fixture
def hostile(tmp_path, monkeypatch, ebmkit_cli, capfd):
    """Runs one case: setup, snapshot, the command, the checks."""
    import importlib

    cli_main = importlib.import_module("ebmkit.cli.main")  # the module (ebmkit.cli.main is main())
    loaded = set(sys.modules)

    def run(c: Case):
        work = tmp_path / "work"
        work.mkdir()
        monkeypatch.chdir(work)
        monkeypatch.setattr(cli_main, "_DEFAULT", _installed_plugins())
        ctx = Ctx(work, monkeypatch, ebmkit_cli)
        if c.setup is not None:
            c.setup(ctx)
        before = snapshot(work)
        capfd.readouterr()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            try:
                res = ebmkit_cli(*c.argv)
            except BaseException as exc:  # what a user would see as a traceback
                tb = "".join(traceback.format_exception(exc)[-4:])
                pytest.fail(f"{c.id}: {type(exc).__name__} escaped main(): {exc}\n{tb}")
        fd = capfd.readouterr()
        shown = [w for w in caught if not issubclass(w.category, DeprecationWarning)]
        output = res.stdout + res.stderr + fd.out + fd.err
        lines = [ln for ln in output.splitlines() if ln.strip()]
        lines += [f"{w.category.__name__}: {w.message}" for w in shown]  # a warning prints too
        report = "\n".join(lines)
        assert "Traceback" not in output, report
        assert res.exit_code != 0, f"exit code 0 for a bad input:\n{report}"
        if c.code is not None:
            assert res.exit_code == c.code, report
        assert len(lines) <= 2, f"{len(lines)} lines, at most 2 allowed:\n{report}"
        assert c.expect in report, f"expected {c.expect!r} in:\n{report}"
        if c.forbid:
            assert c.forbid not in report, f"misleading: {c.forbid!r} in:\n{report}"
        after = snapshot(work)
        changed = [p for p, v in before.items() if after.get(p) != v]
        assert not changed, f"files changed or removed: {changed}"
        for check in ctx.checks:
            check()
        return res

    yield run
    for name in set(sys.modules) - loaded:
        if name.startswith("_ebmkit_hostile_"):
            sys.modules.pop(name)


@pytest.mark.parametrize("c", CASES)
def test_bad_input(c: Case, hostile, one_thread):
    hostile(c)


def test_the_matrix_is_large_and_ids_are_unique():
    ids = [p.id for p in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 55


def test_mixed_image_sizes_and_modes_are_not_an_error(tmp_path, monkeypatch, ebmkit_cli, one_thread):
    """The counterpart of the image-folder cases: sizes, aspect ratios and modes that differ are
    normal input (centre-cropped, resized, converted), not an error."""
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    d = tmp_path / "mixed"
    d.mkdir()
    Image.new("L", (12, 8), 30).save(d / "a.png")
    Image.new("RGBA", (20, 30), (1, 2, 3, 4)).save(d / "b.png")
    Image.new("I;16", (9, 9)).save(d / "c.png")
    Image.new("P", (9, 9)).save(d / "d.gif")
    Image.new("CMYK", (9, 9)).save(d / "e.jpg")
    Image.new("1", (9, 9)).save(d / "f.bmp")
    Image.new("F", (9, 9)).save(d / "g.tiff")
    res = ebmkit_cli("data", "preview", "mixed", "-n", "7", "-o", "p.png", "--set", "resolution=16")
    assert res.exit_code == 0, res.output
    assert "(7, 3, 16, 16)" in res.stdout and (tmp_path / "p.png").is_file()
