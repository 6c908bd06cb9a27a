"""ebmkit as a library: ``fit`` / ``load`` / ``EBM`` / ``RunConfig`` / callbacks from Python.

The acceptance of "use it from a notebook": a short script trains the 2-D toy and the quick
image model, samples, saves, and a fresh process reloads bit-identical samples; a plain
``nn.Module`` energy and the user's own tensor train in memory; ``fit(out_dir=...)`` writes
what ``ebmkit run`` writes and an in-memory fit writes nothing (nor touches matplotlib's
backend); callbacks and plugin callbacks; RunConfig round trips; resume from Python.

Everything is tiny (a few iterations of small nets); the subprocesses are what a user runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import ebmkit
import pytest
import torch
from ebmkit import CheckpointError, ConfigError, LambdaCallback, RunConfig
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.update(extra)
    return env


def _python(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env or _env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _one_line_error(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg, f"not a one-line message: {msg!r}"
    return msg


# Tiny component settings shared by the in-process tests.
TOY = {"energy": {"name": "mlp", "hidden": 16, "layers": 2},
       "sampler": {"name": "langevin", "steps": 5, "grad_coef": 0.01, "noise_std": 0.05}}
TINY_IMAGE = ["energy.nf=4", "sampler.steps=3", "data.limit=64", "train.batch_size=8",
              "train.grid_size=8", "train.tensorboard=off"]


# ---------------------------------------------------------------------------------------------
# (a) the notebook script: two models in ≤ 10 lines, reloaded bit-identically in a fresh process
# ---------------------------------------------------------------------------------------------
SCRIPT = """\
import ebmkit, torch

toy = ebmkit.fit(energy="mlp", data="gmm2d", sampler={"name": "langevin", "steps": 20}, iterations=40)
torch.save(toy.sample(500, seed=0), "toy.pt"); toy.save("toy.safetensors")

img = ebmkit.fit(preset="quick", energy={"name": "convnet32", "nf": 8},
                 data={"name": "mnist5k", "limit": 64}, iterations=3, batch_size=8)
torch.save(img.sample(16, seed=0), "img.pt"); img.save("img.safetensors")
"""

RELOAD = """\
import ebmkit, torch
for name, n in (("toy", 500), ("img", 16)):
    ebm = ebmkit.load(f"{name}.safetensors")
    torch.save(ebm.sample(n, seed=0), f"{name}-reloaded.pt")
    print(name, ebm.step, ebm.steps, tuple(ebm.shape))
"""


def test_notebook_script_trains_two_models_and_a_fresh_process_reloads_identical_samples(tmp_path):
    lines = SCRIPT.strip().splitlines()
    assert len(lines) <= 10, f"the notebook script has {len(lines)} lines"
    (tmp_path / "script.py").write_text(SCRIPT)
    _python(["script.py"], cwd=tmp_path)
    assert {"toy.pt", "toy.safetensors", "img.pt", "img.safetensors"} <= {p.name for p in tmp_path.iterdir()}

    out = _python(["-c", RELOAD], cwd=tmp_path)  # a fresh interpreter: nothing shared but files
    assert out.split("\n")[:2] == ["toy 40 20 (2,)", "img 3 40 (1, 32, 32)"], out
    for name, shape in (("toy", (500, 2)), ("img", (16, 1, 32, 32))):
        a = torch.load(tmp_path / f"{name}.pt")
        b = torch.load(tmp_path / f"{name}-reloaded.pt")
        assert a.shape == shape
        assert torch.equal(a, b), f"{name}: samples after reload differ (max |Δ| {float((a - b).abs().max())})"


# ---------------------------------------------------------------------------------------------
# (b) a plain nn.Module energy and the user's own tensor
# ---------------------------------------------------------------------------------------------
class MyEnergy(nn.Module):
    """A user's energy: plain torch, no ebmkit base class. ``[B, 2] -> [B]``."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 32), nn.SiLU(), nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


def _points(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[-0.5, 0.0], [0.5, 0.0]])
    return centers[torch.randint(0, 2, (n,), generator=g)] + 0.1 * torch.randn(n, 2, generator=g)


def test_custom_module_energy_and_tensor_data_fit_sample_save_load(tmp_path, registry, one_thread):
    torch.manual_seed(0)
    energy = MyEnergy()
    before = {k: v.clone() for k, v in energy.state_dict().items()}
    ebm = ebmkit.fit(energy=energy, data=_points(), sampler=TOY["sampler"], iterations=15,
                     batch_size=32, lr=1e-3, registry=registry)
    assert ebm.energy is energy and ebm.shape == (2,) and ebm.step == 15 and ebm.completed
    assert any(not torch.equal(before[k], v) for k, v in energy.state_dict().items())
    assert ebm.out_dir is None and set(ebm.last) >= {"iter", "d_t", "v_t"} and ebm.last["iter"] == 15
    assert ebm.config.name("energy") == "custom" and ebm.config.name("data") == "custom"

    x = ebm.sample(64, seed=0)
    assert x.shape == (64, 2) and torch.equal(x, ebm.sample(64, seed=0))
    path = ebm.save(tmp_path / "mine.safetensors")

    again = ebmkit.load(path, energy=MyEnergy(), registry=registry)
    assert again.steps == ebm.steps and again.step == 15 and again.shape == (2,)
    assert torch.equal(again.sample(64, seed=0), x)

    with pytest.raises(CheckpointError) as err:
        ebmkit.load(path, registry=registry)
    msg = _one_line_error(err.value)
    assert "energy=" in msg and "MyEnergy" in msg


def test_a_dataset_of_tensor_label_pairs_is_data_too(registry, one_thread):
    ds = TensorDataset(_points(64), torch.zeros(64, dtype=torch.long))
    ebm = ebmkit.fit(energy=MyEnergy(), data=ds, sampler=TOY["sampler"], iterations=2,
                     batch_size=16, registry=registry)
    assert ebm.shape == (2,) and ebm.step == 2


def test_bad_data_is_a_one_line_config_error(registry):
    with pytest.raises(ConfigError) as err:
        ebmkit.fit(energy=MyEnergy(), data=torch.arange(10), iterations=1, registry=registry)
    _one_line_error(err.value)


# ---------------------------------------------------------------------------------------------
# (c) what fit writes: with out_dir exactly what `ebmkit run` writes; without, nothing
# ---------------------------------------------------------------------------------------------
def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_fit_with_out_dir_writes_what_ebmkit_run_writes(tmp_path, registry, cli, one_thread):
    cfg = RunConfig.from_preset("quick", registry=registry).with_overrides(
        *TINY_IMAGE, train={"iterations": 2, "sample_every": 1, "checkpoint_every": 1})
    cfg.to_toml(tmp_path / "tiny.toml")

    lib = tmp_path / "lib"
    ebm = ebmkit.fit(config=cfg, out_dir=lib, registry=registry)
    assert ebm.out_dir == lib and ebm.completed
    code, _, err = cli("run", "--config", tmp_path / "tiny.toml", "--out", tmp_path / "cli",
                       "--no-progress")
    assert code == 0, err

    files = _files(lib)
    assert files == _files(tmp_path / "cli")
    assert {"run.toml", "model.safetensors", "diagnostics.csv", "samples/final.png",
            "samples/iter_000001.png", "plots/diagnostics.png", "checkpoints/LATEST",
            "checkpoints/step-000002/state.json", "checkpoints/step-000002/rank0.safetensors",
            "checkpoints/step-000002/model.safetensors"} <= files
    # the same run: the same document and the same weights
    assert (lib / "run.toml").read_text() == (tmp_path / "cli" / "run.toml").read_text()
    a, b = load_file(str(lib / "model.safetensors")), load_file(str(tmp_path / "cli" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and what the library wrote is an ordinary run directory
    assert RunConfig.from_toml(lib / "run.toml", registry=registry) == cfg
    assert torch.equal(ebmkit.load(lib, registry=registry).sample(4, seed=1), ebm.sample(4, seed=1))

    with pytest.raises(ConfigError) as exc:  # a second fit does not overwrite the run
        ebmkit.fit(config=cfg, out_dir=lib, registry=registry)
    assert "force=True" in _one_line_error(exc.value)


IN_MEMORY = """\
import os, sys
import matplotlib
matplotlib.use("pdf")  # the user's choice, e.g. in a notebook
import ebmkit

toy = dict(energy={"name": "mlp", "hidden": 16, "layers": 2}, data="gmm2d",
           sampler={"name": "langevin", "steps": 3}, iterations=3, batch_size=16)
ebm = ebmkit.fit(**toy)
ebm.sample(8, seed=0)
assert os.listdir(".") == [], os.listdir(".")
ebmkit.fit(**toy, out_dir=sys.argv[1])  # with a run directory: figures are written ...
assert os.path.isfile(os.path.join(sys.argv[1], "plots", "diagnostics.png"))
assert matplotlib.get_backend() == "pdf", matplotlib.get_backend()  # ... without touching the backend
assert "matplotlib.pyplot" not in sys.modules
print("ok")
"""


def test_in_memory_fit_writes_no_file_and_leaves_matplotlib_alone(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = _env()
    env.pop("MPLBACKEND", None)
    out = _python(["-c", IN_MEMORY, str(tmp_path / "run")], cwd=cwd, env=env)
    assert out.strip() == "ok"
    assert list(cwd.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# (d) callbacks: every step, early stop, plugin-contributed callbacks
# ---------------------------------------------------------------------------------------------
def _toy_fit(registry, **kw):
    opts = {"data": "gmm2d", "iterations": 6, "batch_size": 16, "registry": registry, **TOY}
    opts.update(kw)
    return ebmkit.fit(**opts)


def test_a_callback_sees_every_step(registry, one_thread):
    events = []
    cb = LambdaCallback(
        on_fit_start=lambda run: events.append(("start", run.step)),
        on_step_end=lambda run, out: events.append(("step", run.step, run.row["iter"], out.x_neg.shape)),
        on_fit_end=lambda run: events.append(("end", run.step, run.completed)))
    ebm = _toy_fit(registry, callbacks=[cb])
    assert events[0] == ("start", 0) and events[-1] == ("end", 6, True)
    assert [e[1:3] for e in events[1:-1]] == [(i, i) for i in range(1, 7)]
    assert all(e[3] == (16, 2) for e in events[1:-1])
    assert ebm.step == 6 and ebm.completed


def test_run_stop_ends_training_early(registry, one_thread):
    class StopAt(ebmkit.Callback):
        def __init__(self):
            self.steps = []

        def on_step_end(self, run, out):
            self.steps.append(run.step)
            if run.step == 3:
                run.stop = True

    cb = StopAt()
    ebm = _toy_fit(registry, iterations=10, callbacks=[cb])
    assert cb.steps == [1, 2, 3]
    assert ebm.step == 3 and ebm.completed is False


class _CallbackPlugin:
    """A plugin that adds one callback to every fit (``ebmkit_callbacks`` hook)."""

    def __init__(self, log):
        self.log = log

    @ebmkit.hookimpl
    def ebmkit_callbacks(self, config, out_dir):
        self.log.append(("hook", type(config).__name__, out_dir))
        return LambdaCallback(on_step_end=lambda run, out: self.log.append(("plugin", run.step)))


class _BrokenPlugin:
    @ebmkit.hookimpl
    def ebmkit_callbacks(self, config, out_dir):
        raise RuntimeError("boom")


def test_a_plugin_hook_contributes_a_callback(registry, one_thread):
    log = []
    reg = ebmkit.build_registry(ebmkit.get_plugin_manager(plugins=[_CallbackPlugin(log)]))
    user = LambdaCallback(on_step_end=lambda run, out: log.append(("user", run.step)))
    _toy_fit(reg, iterations=2, callbacks=[user])
    assert log == [("hook", "RunConfig", None), ("user", 1), ("plugin", 1), ("user", 2), ("plugin", 2)]

    # a registry built without the plugin: nothing added
    log.clear()
    _toy_fit(registry, iterations=1)
    assert log == []


def test_a_raising_plugin_hook_stops_the_run_before_it_starts(one_thread, tmp_path):
    """A plugin that fails to add its callbacks is one line naming it; the run does not start
    (no directory), since the callbacks its options asked for would be missing."""
    log = []
    reg = ebmkit.build_registry(ebmkit.get_plugin_manager(plugins=[_BrokenPlugin(), _CallbackPlugin(log)]))
    with pytest.raises(ebmkit.PluginError, match="failed to add its training callbacks.*boom") as e:
        _toy_fit(reg, iterations=2, out_dir=tmp_path / "run")
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists() and log == []


# ---------------------------------------------------------------------------------------------
# (e) RunConfig
# ---------------------------------------------------------------------------------------------
def test_runconfig_toml_round_trip(tmp_path, registry):
    cfg = RunConfig.from_preset("quick", registry=registry)
    text = cfg.to_toml(tmp_path / "quick.toml")
    assert (tmp_path / "quick.toml").read_text() == text
    back = RunConfig.from_toml(tmp_path / "quick.toml", registry=registry)
    assert back == cfg and back.to_dict() == cfg.to_dict()
    assert RunConfig.from_dict(cfg.to_dict(), registry=registry) == cfg
    assert RunConfig.default(registry=registry).name("data") == "mnist5k"


def _diff(a: dict, b: dict) -> dict[str, tuple]:
    return {f"{s}.{k}": (a[s].get(k), b[s].get(k)) for s in a | b
            for k in a.get(s, {}) | b.get(s, {}) if a.get(s, {}).get(k) != b.get(s, {}).get(k)}


def test_with_overrides_changes_only_what_is_asked(registry):
    cfg = RunConfig.from_preset("quick", registry=registry)
    new = cfg.with_overrides("sampler.steps=60", {"energy": {"nf": 16}}, train={"lr": 3e-4})
    assert _diff(cfg.to_dict(), new.to_dict()) == {
        "sampler.steps": (40, 60), "energy.nf": (32, 16), "train.lr": (2e-4, 3e-4)}
    assert new.configs["sampler"].steps == 60 and new.train.lr == 3e-4
    assert cfg.configs["sampler"].steps == 40  # the original is untouched (frozen)
    assert cfg.with_overrides() == cfg


@pytest.mark.parametrize("bad", [
    "sampler.stepz=3",  # unknown key
    "sampler.steps=many",  # not an int
    "sampler.steps=-1",  # out of range
    "nosuch.key=1",  # unknown section
    "sampler.steps",  # no value
    {"train": {"optimizer": "lbfgs"}},  # not a choice
    {"trian": {"lr": 1}},  # unknown section in a mapping
])
def test_a_bad_override_is_a_one_line_config_error(registry, bad):
    cfg = RunConfig.from_preset("quick", registry=registry)
    with pytest.raises(ConfigError) as err:
        cfg.with_overrides(bad)
    _one_line_error(err.value)


def test_fit_rejects_bad_arguments_with_one_line_errors(registry, tmp_path):
    cases = [
        dict(energy="nosuch-energy"),
        dict(energy={"nf": 4}),  # a dict without a name
        dict(sampler=object()),
        dict(config=tmp_path / "missing.toml"),
        dict(data="gmm2d", energy="mlp", lr=-1.0),
        dict(data="gmm2d", energy="mlp", nosuch_option=1),
        dict(resume=True),  # resume needs out_dir
    ]
    for kw in cases:
        with pytest.raises(ebmkit.EbmkitError) as err:
            ebmkit.fit(registry=registry, **kw)
        _one_line_error(err.value)


# ---------------------------------------------------------------------------------------------
# (f) resume through the library
# ---------------------------------------------------------------------------------------------
def test_resume_from_python_equals_an_uninterrupted_run(tmp_path, registry, one_thread):
    opts = dict(data="gmm2d", iterations=6, batch_size=16, checkpoint_every=2, registry=registry,
                **TOY)
    full = ebmkit.fit(**opts, out_dir=tmp_path / "full")
    part = ebmkit.fit(**opts, out_dir=tmp_path / "part", stop_after=3)  # "killed" after 3
    assert part.step == 3 and part.completed is False
    resumed = ebmkit.fit(out_dir=tmp_path / "part", resume=True, registry=registry)
    assert resumed.step == 6 and resumed.completed

    a, b = full.energy.state_dict(), resumed.energy.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(full.sample(32, seed=3), resumed.sample(32, seed=3))

    with pytest.raises(ConfigError) as err:  # a resumed run keeps what it learns from
        ebmkit.fit(out_dir=tmp_path / "part", resume=True, lr=1.0, registry=registry)
    _one_line_error(err.value)


def test_resume_may_extend_the_iterations(tmp_path, registry, one_thread):
    opts = dict(data="gmm2d", batch_size=16, registry=registry, **TOY)
    straight = ebmkit.fit(**opts, iterations=5, out_dir=tmp_path / "a")
    ebmkit.fit(**opts, iterations=3, out_dir=tmp_path / "b")
    longer = ebmkit.fit(out_dir=tmp_path / "b", resume=True, iterations=5, registry=registry)
    assert longer.step == 5
    # the lr schedule is constant, so 3 + 2 iterations are the same 5 iterations
    a, b = straight.energy.state_dict(), longer.energy.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nothing_here_warns(registry, one_thread):
    """An ordinary in-memory fit and sample raise no warning (a notebook shows every one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ebm = _toy_fit(registry, iterations=2)
        ebm.sample(4, seed=0)



def test_train_as_a_dict_changes_only_the_given_options(registry):
    ebm = ebmkit.fit(preset="toy-gmm-nonconvergent", train={"iterations": 1}, stop_after=0,
                     registry=registry)
    preset = RunConfig.from_preset("toy-gmm-nonconvergent", registry=registry).train
    assert ebm.config.train.iterations == 1
    assert (ebm.config.train.data_noise, ebm.config.train.seed) == (preset.data_noise, preset.seed) == (0.0, 123)


# ---------------------------------------------------------------------------------------------
# problems found while writing these tests, fixed in the library
# ---------------------------------------------------------------------------------------------
def test_a_run_with_custom_objects_resumes_from_python(tmp_path, registry, one_thread):
    points = _points()
    opts = dict(sampler=TOY["sampler"], iterations=4, batch_size=16, checkpoint_every=2,
                registry=registry)
    torch.manual_seed(0)
    full = ebmkit.fit(energy=MyEnergy(), data=points, out_dir=tmp_path / "full", **opts)
    torch.manual_seed(0)
    ebmkit.fit(energy=MyEnergy(), data=points, out_dir=tmp_path / "part", stop_after=3, **opts)
    resumed = ebmkit.fit(energy=MyEnergy(), data=points, out_dir=tmp_path / "part", resume=True,
                         registry=registry)
    assert resumed.step == 4 and resumed.completed
    a, b = full.energy.state_dict(), resumed.energy.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_as_a_trainconfig_does_not_silently_reset_the_preset(registry):
    try:
        ebm = ebmkit.fit(preset="toy-gmm-nonconvergent", train=ebmkit.TrainConfig(iterations=1),
                         stop_after=0, registry=registry)
    except ConfigError as err:  # refusing the ambiguous combination is a fix too
        _one_line_error(err)
        return
    assert (ebm.config.train.data_noise, ebm.config.train.seed) == (0.0, 123)


class DropoutEnergy(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 32), nn.SiLU(), nn.Dropout(0.5), nn.Linear(32, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


def test_fitted_and_loaded_models_compute_the_same_energies(tmp_path, registry, one_thread):
    ebm = ebmkit.fit(energy=DropoutEnergy(), data=_points(64), sampler=TOY["sampler"],
                     iterations=2, batch_size=16, registry=registry)
    loaded = ebmkit.load(ebm.save(tmp_path / "d.safetensors"), energy=DropoutEnergy(),
                         registry=registry)
    x = _points(32, seed=1)
    assert torch.equal(ebm(x), loaded(x))


def test_a_long_run_says_how_long_after_its_first_iteration(registry):
    """One line with the estimate and the faster alternatives, once (TimeEstimate)."""
    from ebmkit.callbacks import TimeEstimate, default_callbacks

    said = []

    class Console:
        def print(self, msg, **kw):
            said.append(str(msg))

    assert any(isinstance(c, TimeEstimate) for c in default_callbacks(ebmkit.RunConfig.default(), None))
    ebmkit.fit(energy="mlp", data="gmm2d", sampler={"name": "langevin", "steps": 2}, iterations=4,
               batch_size=8, registry=registry, console=Console(), threads=1,
               callbacks=[TimeEstimate(warn_after=0.0)])
    notes = [s for s in said if "iterations left take about" in s]
    assert len(notes) == 1 and "3 iterations left" in notes[0] and "--preset quick" in notes[0]
