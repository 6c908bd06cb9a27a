"""The Python API's rough edges (issue 23, deliverable 7): what a researcher's script runs into.

* an energy that returns ``[B, 1]`` (the forgotten squeeze), a scalar, NaN, or does not take
  the data's shape fails in one line naming the energy and the shape, before any chain runs
  (``checks.check_energy``; from ``fit``, ``EBM.sample``, ``model_from`` and ``load``);
* numpy data and non-float32 floats are accepted, integer data refused in one line
  (``checks.as_data``);
* ``load(path, energy=<a class>)`` builds the class (or says to pass an instance);
* ``evaluate(..., out_dir=None)`` writes no file anywhere, for every built-in evaluator;
* ``EBM.sample(..., return_info=True)`` returns ``(x, SampleInfo)``;
* an ``x0`` with the wrong number of rows or the wrong example shape is refused;
* ``load(..., device="cuda")`` without CUDA speaks Python.

Everything uses tiny MLP energies on 2-D points, fixed seeds, and no training unless the
feature is training itself.
"""

from __future__ import annotations

import math
import tempfile
import tomllib
import warnings
from pathlib import Path

import ebmkit
import numpy as np
import pytest
import torch
from ebmkit import CheckpointError, ConfigError, DataError
from ebmkit.checks import as_data, check_energy, data_range
from ebmkit.interfaces import Evaluator
from ebmkit.model import SampleInfo
from torch import nn

SAMPLER = {"name": "langevin", "steps": 5, "grad_coef": 0.01, "noise_std": 0.05}


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg, f"not a one-line message: {msg!r}"
    return msg


def _points(n: int = 64, d: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(n, d, generator=g)


class RingMLP(nn.Module):
    """The researcher's energy, forgetting the squeeze: ``[B, 2] -> [B, 1]``."""

    def __init__(self, d: int = 2):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(d, 16), nn.SiLU(), nn.Linear(16, 1))

    def forward(self, x):
        return self.net(x)


class GoodMLP(RingMLP):
    """``[B, 2] -> [B]``; buildable without arguments."""

    def forward(self, x):
        return self.net(x).squeeze(-1)


class SumMLP(RingMLP):
    def forward(self, x):
        return self.net(x).sum()  # one number for the whole batch


class NaNMLP(GoodMLP):
    def forward(self, x):
        return super().forward(x) * float("nan")


class IntMLP(GoodMLP):
    def forward(self, x):
        return super().forward(x).round().long()


class NeedsArgs(GoodMLP):
    def __init__(self, width: int):
        super().__init__()


class TupleMLP(GoodMLP):
    def forward(self, x):
        return super().forward(x), None


# ---------------------------------------------------------------------------------------------
# 1. check_energy
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("energy, x, words", [
    (RingMLP(), _points(2), ["energy RingMLP", "shape [2, 1]", "batch of 2", "[B]", "squeeze"]),
    (SumMLP(), _points(2), ["energy SumMLP", "scalar", "[B]"]),
    (GoodMLP(), _points(2, d=3), ["energy GoodMLP", "failed", "[2, 3]", "[B, 3]", "mat1 and mat2"]),
    (NaNMLP(), _points(2), ["energy NaNMLP", "NaN"]),
    (IntMLP(), _points(2), ["energy IntMLP", "torch.int64", "floating point"]),
    (TupleMLP(), _points(2), ["energy TupleMLP", "tuple", "[B]"]),
], ids=["B-by-1", "scalar", "wrong-input-size", "nan", "integer", "tuple"])
def test_check_energy_names_the_mistake_in_one_line(energy, x, words):
    with pytest.raises(ConfigError) as err:
        check_energy(energy, x)
    msg = _one_line(err.value)
    for w in words:
        assert w in msg, (w, msg)


def test_check_energy_names_a_registered_energy_and_takes_a_label(registry):
    energy = registry.create("energy", "mlp", {"hidden": 8, "layers": 1}, (2,))
    with pytest.raises(ConfigError, match=r"energy 'mlp' \(MLPEnergy\) failed on a batch of shape \[2, 3\]"):
        check_energy(energy, _points(2, d=3))
    with pytest.raises(ConfigError, match=r"^my energy returned shape \[2, 1\]"):
        check_energy(RingMLP(), _points(2), what="my energy")


class BatchNormEnergy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.bn = nn.BatchNorm1d(2)
        self.frozen = nn.Dropout(0.5)
        self.lin = nn.Linear(2, 1)

    def forward(self, x):
        return self.lin(self.frozen(self.bn(x))).squeeze(-1)


def test_check_energy_leaves_the_module_as_it_was():
    energy = BatchNormEnergy()
    energy.frozen.eval()  # a submodule the user keeps in eval mode
    before = {k: v.clone() for k, v in energy.state_dict().items()}
    rng = torch.get_rng_state()
    u = check_energy(energy, _points(2))
    assert u.shape == (2,) and not u.requires_grad
    assert energy.training and energy.bn.training and not energy.frozen.training
    for k, v in energy.state_dict().items():  # batch-norm statistics untouched
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None and p.requires_grad for p in energy.parameters())
    assert torch.equal(torch.get_rng_state(), rng)  # dropout drew nothing
    # the energy still differentiates in x afterwards (what the sampler needs)
    x = _points(2).requires_grad_(True)
    (g,) = torch.autograd.grad(energy(x).sum(), x)
    assert g.shape == (2, 2)


def test_a_bad_energy_fails_in_one_line_before_any_chain_runs(registry):
    # hand-built model: the check runs on the first chains of sample()
    ebm = ebmkit.EBM(RingMLP(), registry.create("sampler", "langevin", {"steps": 3}), shape=(2,))
    with pytest.raises(ConfigError) as err:
        ebm.sample(8, seed=0)
    assert "squeeze" in _one_line(err.value)
    # model_from checks at once
    with pytest.raises(ConfigError, match="scalar"):
        ebmkit.model_from(SumMLP(), SAMPLER, shape=(2,), registry=registry)
    with pytest.raises(ConfigError, match=r"\[2, 3\]"):
        ebmkit.model_from(GoodMLP(), SAMPLER, shape=(3,), registry=registry)


@pytest.mark.parametrize("energy, data, words", [
    (RingMLP(), _points(32), ["RingMLP", "[2, 1]", "squeeze"]),
    (GoodMLP(), _points(32, d=3), ["GoodMLP", "[2, 3]"]),
], ids=["B-by-1", "wrong-input-size"])
def test_fit_checks_the_energy_before_the_first_step(energy, data, words, registry, one_thread):
    with pytest.raises(ConfigError) as err:
        ebmkit.fit(energy=energy, data=data, sampler=SAMPLER, iterations=2, batch_size=8,
                   registry=registry)
    msg = _one_line(err.value)
    for w in words:
        assert w in msg, (w, msg)


class CountingEnergy(GoodMLP):
    """Counts the calls on a batch of 2 (the check's; the tests run 4 chains)."""

    def __init__(self):
        super().__init__()
        self.checks = 0

    def forward(self, x):
        if x.shape[0] == 2:
            self.checks += 1
        return super().forward(x)


def test_sample_checks_the_energy_once_per_model(registry):
    energy = CountingEnergy()
    ebm = ebmkit.EBM(energy, registry.create("sampler", "langevin", {"steps": 2}), shape=(2,))
    ebm.sample(4, seed=0)
    ebm.sample(4, seed=1)
    assert energy.checks == 1
    ebm.energy = other = CountingEnergy()  # another energy is checked again
    ebm.sample(4, seed=0)
    assert other.checks == 1


def test_the_check_does_not_change_the_samples(registry):
    """Same seed, same samples whether or not the model was checked before (no RNG used)."""
    a = ebmkit.EBM(GoodMLP(), registry.create("sampler", "langevin", {"steps": 3}), shape=(2,))
    b = ebmkit.EBM(GoodMLP(), registry.create("sampler", "langevin", {"steps": 3}), shape=(2,))
    b.check()
    torch.manual_seed(1)
    xa = a.sample(6, seed=0)
    torch.manual_seed(1)
    xb = b.sample(6, seed=0)
    assert torch.equal(xa, xb)


# ---------------------------------------------------------------------------------------------
# 2. as_data, data_range, InMemoryData
# ---------------------------------------------------------------------------------------------
def test_as_data_converts_numpy_and_other_floats_to_float32():
    a64 = np.linspace(-1, 1, 12).reshape(6, 2)
    t = as_data(a64)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert torch.allclose(t, torch.from_numpy(a64).float())
    a32 = np.zeros((3, 2), dtype=np.float32)
    assert as_data(a32).data_ptr() == torch.from_numpy(a32).data_ptr()  # shared, not copied
    rev = np.arange(8, dtype=np.float32).reshape(4, 2)[::-1]  # negative strides
    assert torch.equal(as_data(rev), torch.tensor(rev.copy()))
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        x = as_data(torch.ones(3, 2, dtype=dtype))
        assert x.dtype == torch.float32 and torch.equal(x, torch.ones(3, 2))
    x = torch.zeros(3, 2)
    assert as_data(x) is x
    ds = torch.utils.data.TensorDataset(x)
    assert as_data(ds) is ds and as_data("gmm2d") == "gmm2d" and as_data(None) is None


def test_as_data_of_a_read_only_array_does_not_warn():
    a = np.zeros((4, 2), dtype=np.float32)
    a.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert as_data(a).shape == (4, 2)


@pytest.mark.parametrize("data", [
    torch.arange(10).reshape(5, 2), torch.zeros(5, 2, dtype=torch.uint8), torch.ones(5, 2).bool(),
    np.arange(10).reshape(5, 2), np.zeros((5, 2), dtype=np.uint8),
], ids=["int64", "uint8", "bool", "numpy-int", "numpy-uint8"])
def test_integer_data_is_refused_in_one_line(data):
    with pytest.raises(ConfigError) as err:
        as_data(data)
    msg = _one_line(err.value)
    assert "[-1, 1]" in msg and "float" in msg
    with pytest.raises(ConfigError):
        ebmkit.InMemoryData(data)


def test_non_numeric_arrays_are_refused():
    with pytest.raises(ConfigError, match="not numeric"):
        as_data(np.array([["a", "b"]]))
    with pytest.raises(ConfigError, match="complex"):
        as_data(torch.zeros(2, 2, dtype=torch.complex64))


def test_in_memory_data_takes_numpy_arrays():
    src = ebmkit.InMemoryData(np.linspace(-1, 1, 20).reshape(10, 2))
    (x,) = src.open().tensors
    assert src.shape == (2,) and x.dtype == torch.float32 and x.shape == (10, 2)
    with pytest.raises(ConfigError, match="no examples"):
        ebmkit.InMemoryData(np.zeros((0, 2)))


def test_data_range():
    assert data_range(torch.tensor([[0.5, -2.0], [3.0, 1.0]])) == (-2.0, 3.0)
    assert data_range(np.array([[1, 5]], dtype=np.uint8)) == (1.0, 5.0)
    lo, hi = data_range(torch.tensor([0.0, float("nan")]))
    assert lo != lo and hi != hi  # NaN shows
    with pytest.raises(DataError):
        data_range(torch.zeros(0, 2))


# ---------------------------------------------------------------------------------------------
# 3. load(path, energy=<a class>)
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path, registry):
    """A hand-built model of a custom energy, saved: ``(path, model)``."""
    ebm = ebmkit.model_from(GoodMLP(), SAMPLER, shape=(2,), registry=registry)
    return ebm.save(tmp_path / "custom.safetensors"), ebm


def test_load_takes_the_energy_class(saved, registry):
    path, ebm = saved
    by_class = ebmkit.load(path, energy=GoodMLP, registry=registry)
    by_instance = ebmkit.load(path, energy=GoodMLP(), registry=registry)
    assert isinstance(by_class.energy, GoodMLP)
    assert torch.equal(by_class.sample(16, seed=0), by_instance.sample(16, seed=0))
    assert torch.equal(by_class.sample(16, seed=0), ebm.sample(16, seed=0))


def test_load_of_a_class_that_needs_arguments_says_to_pass_an_instance(saved, registry):
    path, _ = saved
    with pytest.raises(ConfigError) as err:
        ebmkit.load(path, energy=NeedsArgs, registry=registry)
    msg = _one_line(err.value)
    assert "energy=NeedsArgs" in msg and "pass an instance" in msg and "width" in msg
    with pytest.raises(ConfigError, match="nn.Module"):
        ebmkit.load(path, energy=dict, registry=registry)
    with pytest.raises(ConfigError, match="nn.Module"):
        ebmkit.load(path, energy="GoodMLP", registry=registry)


def test_load_checks_the_given_energy(saved, registry):
    path, _ = saved

    class Unsqueezed(GoodMLP):  # the same weights, the forgotten squeeze
        def forward(self, x):
            return self.net(x)

    with pytest.raises(ConfigError, match=r"Unsqueezed returned shape \[2, 1\]"):
        ebmkit.load(path, energy=Unsqueezed, registry=registry)


class Wide(GoodMLP):
    def __init__(self, width: int = 16):
        nn.Module.__init__(self)
        self.net = nn.Sequential(nn.Linear(2, width), nn.SiLU(), nn.Linear(width, 1))


def test_a_class_built_with_other_defaults_than_trained_says_so(tmp_path, registry):
    path = ebmkit.model_from(Wide(32), SAMPLER, shape=(2,), registry=registry).save(tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError) as err:
        ebmkit.load(path, energy=Wide, registry=registry)
    msg = _one_line(err.value)
    assert "do not fit" in msg and "energy=Wide(...)" in msg
    assert ebmkit.load(path, energy=Wide(32), registry=registry).shape == (2,)


def test_load_builds_an_energy_subclass_from_the_checkpoint_settings(tmp_path, registry):
    cls = registry.get("energy", "mlp")
    energy = registry.create("energy", "mlp", {"hidden": 24, "layers": 3}, (2,))
    ebm = ebmkit.model_from(energy, SAMPLER, shape=(2,), registry=registry)
    path = ebm.save(tmp_path / "mlp.safetensors")
    again = ebmkit.load(path, energy=cls, registry=registry)
    assert type(again.energy) is cls and again.energy.config.hidden == 24
    assert torch.equal(again.sample(8, seed=0), ebm.sample(8, seed=0))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_load_on_a_missing_gpu_speaks_python(saved, registry):
    path, _ = saved
    with pytest.raises(ConfigError) as err:
        ebmkit.load(path, energy=GoodMLP(), device="cuda", registry=registry)
    assert "device='cpu'" in _one_line(err.value)
    with pytest.raises(ConfigError) as err:
        ebmkit.load(path, energy=GoodMLP(), device="cdua", registry=registry)
    assert "device=" in _one_line(err.value)


# ---------------------------------------------------------------------------------------------
# 4. evaluate(..., out_dir=None)
# ---------------------------------------------------------------------------------------------
def _listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.fixture
def no_files(tmp_path, monkeypatch):
    """A fresh working directory and temporary directory; yields a check that both stay empty.

    torch's first optimizer (reconstruction's Adam) imports ``torch._dynamo``, which creates an
    empty ``torchinductor_<user>`` cache directory in the temporary directory: torch's import,
    not a file the evaluator writes, so it happens here, before the temporary directory moves."""
    import torch._dynamo  # noqa: F401

    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    for var in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.setenv(var, str(tmp))

    def check():
        assert _listing(cwd) == [] and _listing(tmp) == []

    return check


@pytest.fixture
def toy_model(registry):
    torch.manual_seed(0)
    energy = registry.create("energy", "mlp", {"hidden": 16, "layers": 2, "activation": "silu"}, (2,))
    return ebmkit.model_from(energy, SAMPLER, "noise", registry=registry)


def test_longrun_in_memory_writes_no_file_and_returns_the_metrics(toy_model, no_files, registry):
    res = ebmkit.evaluate(toy_model, "longrun", out_dir=None, data=_points(32),
                          config={"n": 8, "steps": 5, "snapshots": 2}, registry=registry)
    assert {"energy_short", "energy_long", "energy_data", "saturation_long"} <= set(res.metrics)
    assert res.figures == {}
    no_files()


EVALUATORS = {
    "longrun": ({"n": 8, "steps": 4, "snapshots": 2}, "points"),
    "interpolation": ({"pairs": 2, "points": 3, "steps": 2}, None),
    "reconstruction": ({"n": 2, "iterations": 2, "steps": 2}, "points"),
    "flow-likelihood": ({"n": 1, "iterations": 2, "steps": 2}, "points"),
    "transition": ({"n": 4, "max_k": 4, "k_step": 2}, "points"),
    "toy_density": ({"grid": 8, "n_samples": 8, "long_steps": 1, "mmd_samples": 8,
                     "short_steps": 1}, "gmm2d"),
}


@pytest.mark.parametrize("name", sorted(EVALUATORS))
def test_every_builtin_evaluator_runs_in_memory(name, toy_model, no_files, registry, one_thread):
    config, data = EVALUATORS[name]
    if data == "points":
        data = _points(32)
    elif data is not None:
        data = registry.create("dataset", data, {"n": 64})
    res = ebmkit.evaluate(toy_model, name, out_dir=None, data=data, config=config, registry=registry)
    assert res.metrics and res.figures == {}
    assert all(isinstance(v, (int, float)) for v in res.metrics.values())
    no_files()


def test_every_registered_core_evaluator_is_covered(registry):
    core = {n for n in registry.names("evaluator")
            if registry.get("evaluator", n).__module__.startswith("ebmkit.")}
    assert core - set(EVALUATORS) <= {"digits-longrun"}  # tested below on 8x8 images


class Quadratic(ebmkit.Energy):
    name = "quadratic-edges-test"

    def __init__(self):
        super().__init__(None, (1, 8, 8))
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return 25 * x.flatten(1).square().sum(1) / 2 + self.w


def test_digits_longrun_runs_in_memory(no_files, registry, one_thread):
    pytest.importorskip("sklearn")
    model = ebmkit.model_from(Quadratic(), {"name": "langevin", "step_size": 0.1, "steps": 3},
                              "noise", registry=registry)
    res = ebmkit.evaluate(model, "digits-longrun", out_dir=None, registry=registry,
                          config={"n": 20, "steps": 3, "checkpoints": 2, "chains": ["ula-noise"]})
    assert "ula-noise_mmd" in res.metrics and res.figures == {}
    no_files()


def test_an_out_dir_still_gets_the_json_and_figures(toy_model, tmp_path, registry):
    res = ebmkit.evaluate(toy_model, "longrun", out_dir=tmp_path / "ev", data=_points(32),
                          config={"n": 8, "steps": 4, "snapshots": 2}, registry=registry)
    assert (tmp_path / "ev" / "longrun_metrics.json").is_file()
    assert res.figures["energy"].is_file()


class Tally(Evaluator):
    """A custom evaluator: sees out_dir=None as given."""

    name = "tally"

    def __init__(self):
        super().__init__(None)
        self.seen = "unset"

    def evaluate(self, model, data, out_dir):
        self.seen = out_dir
        return ebmkit.EvalResult(metrics={"n": 1.0})


def test_a_custom_evaluator_receives_none(toy_model, no_files, registry):
    ev = Tally()
    assert ebmkit.evaluate(toy_model, ev, out_dir=None, registry=registry).metrics == {"n": 1.0}
    assert ev.seen is None
    no_files()


def test_evaluate_takes_numpy_data(toy_model, registry):
    res = ebmkit.evaluate(toy_model, "longrun", out_dir=None, data=_points(16).numpy().astype(np.float64),
                          config={"n": 4, "steps": 2, "snapshots": 2}, registry=registry)
    assert "energy_data" in res.metrics


# ---------------------------------------------------------------------------------------------
# 5. sample(..., return_info=True)
# ---------------------------------------------------------------------------------------------
class Bowl(GoodMLP):
    """A steep bowl: MALA with a large step rejects some proposals."""

    def forward(self, x):
        return 4 * x.square().sum(1) + super().forward(x)


def test_sample_returns_info_for_a_metropolis_sampler(registry):
    ebm = ebmkit.model_from(Bowl(), {"name": "mala", "steps": 6, "step_size": 0.6, "adapt_steps": 0},
                            shape=(2,), registry=registry)
    x, info = ebm.sample(10, seed=0, batch_size=4, return_info=True)  # three batches
    assert isinstance(info, SampleInfo) and info.steps == 6
    assert torch.equal(x, ebm.sample(10, seed=0, batch_size=4))  # the same samples
    assert isinstance(info.acceptance, float) and 0.0 < info.acceptance < 1.0
    assert info.energies.shape == (10,) and torch.allclose(info.energies, ebm(x), atol=1e-5)
    assert isinstance(info.grad_norm, float) and info.grad_norm > 0
    assert info.divergent is not None and not info.divergent.any()


def test_sample_info_for_an_unadjusted_sampler_and_a_temperature(registry):
    ebm = ebmkit.model_from(GoodMLP(), {**SAMPLER, "temperature": 2.0}, shape=(2,), registry=registry)
    x, info = ebm.sample(5, steps=3, seed=0, return_info=True)
    assert info.acceptance is None and info.steps == 3
    assert torch.allclose(info.energies, ebm(x), atol=1e-5)  # U, not U/T
    x0, info0 = ebm.sample(5, steps=0, seed=0, return_info=True)
    assert info0.steps == 0 and torch.allclose(info0.energies, ebm(x0), atol=1e-5)
    assert isinstance(ebm.sample(5, seed=0), torch.Tensor)  # the default stays a tensor


# ---------------------------------------------------------------------------------------------
# 6. x0 must match n and the model's shape
# ---------------------------------------------------------------------------------------------
def test_x0_with_other_row_count_or_shape_is_refused(registry):
    ebm = ebmkit.model_from(GoodMLP(), SAMPLER, shape=(2,), registry=registry)
    with pytest.raises(ConfigError) as err:
        ebm.sample(8, x0=torch.zeros(4, 2))
    msg = _one_line(err.value)
    assert "4" in msg and "n=8" in msg
    with pytest.raises(ConfigError) as err:
        ebm.sample(4, x0=torch.zeros(4, 3))
    msg = _one_line(err.value)
    assert "[4, 3]" in msg and "[2]" in msg
    with pytest.raises(ConfigError):
        ebm.sample(2, x0=torch.zeros(2, 2, 1))
    with pytest.raises(ConfigError, match="float"):
        ebm.sample(2, x0=torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ConfigError, match="integer"):
        ebm.sample(2.5)


def test_x0_as_numpy_or_float64_works_and_is_followed(registry):
    ebm = ebmkit.model_from(GoodMLP(), SAMPLER, shape=(2,), registry=registry)
    x0 = np.full((3, 2), 0.25)
    x = ebm.sample(3, steps=0, x0=x0)
    assert x.dtype == torch.float32 and torch.equal(x, torch.full((3, 2), 0.25))
    assert ebm.sample(3, steps=2, seed=0, x0=torch.from_numpy(x0)).shape == (3, 2)


# ---------------------------------------------------------------------------------------------
# tensor data outside the noise prior's box: the box follows the data (recorded), or a note
# ---------------------------------------------------------------------------------------------
def _ring(n: int = 256, radius: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    angle = torch.rand(n, generator=g) * 2 * math.pi
    return radius * torch.stack([angle.cos(), angle.sin()], 1) + 0.05 * torch.randn(n, 2, generator=g)


PRIOR_FIT = dict(energy={"name": "mlp", "hidden": 8, "layers": 2},
                 sampler={"name": "langevin", "steps": 2, "grad_coef": 0.01, "noise_std": 0.05},
                 iterations=1, batch_size=16, plots=False, tensorboard="off", progress=False)


def test_the_prior_box_follows_data_outside_it(tmp_path, capsys, registry, one_thread):
    x = _ring()
    lo, hi = float(x.min()), float(x.max())
    ebm = ebmkit.fit(**PRIOR_FIT, data=x, out_dir=tmp_path / "run", registry=registry)
    low, high = math.floor(lo * 10) / 10, math.ceil(hi * 10) / 10  # outward to 0.1
    init = tomllib.loads((tmp_path / "run" / "run.toml").read_text())["init"]
    assert (init["low"], init["high"]) == (low, high)
    assert "leaves the default prior box [-1, 1]" in capsys.readouterr().out
    starts = ebm.starts(4000, seed=0)  # uniform on the recorded box, not on [-1, 1]
    assert starts.min() >= low and starts.max() <= high
    assert starts.min() < low + 0.1 and starts.max() > high - 0.1


def test_bounds_the_user_set_are_kept_with_a_note(capsys, registry, one_thread):
    ebm = ebmkit.fit(**PRIOR_FIT, data=_ring(), init={"name": "noise", "low": -1.5, "high": 1.5},
                     registry=registry)
    assert ebm.config.to_dict()["init"]["low"] == -1.5
    assert "leaves the chains' prior box [-1.5, 1.5]" in capsys.readouterr().out


def test_data_inside_the_box_changes_nothing(capsys, registry, one_thread):
    ebm = ebmkit.fit(**PRIOR_FIT, data=_ring(radius=0.5), registry=registry)
    init = ebm.config.to_dict()["init"]
    assert (init["low"], init["high"]) == (-1.0, 1.0) and "prior box" not in capsys.readouterr().out
