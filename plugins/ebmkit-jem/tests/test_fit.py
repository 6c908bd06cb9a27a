"""JEM end to end through ebmkit.fit (tiny), the preset, the guard and the plain baseline."""

from __future__ import annotations

import ebmkit_jem
import pytest
import torch
from ebmkit import ConfigError, DivergenceError
from ebmkit.params import build
from ebmkit.plugins import build_registry
from ebmkit_jem import JEMConvNet, JEMOptions, RestartGuard, train_classifier
from ebmkit_testing import OptionsConformance

pytest.importorskip("sklearn")

TINY = {"energy": {"name": "jem-cnn", "nf": 2}, "init": {"name": "persistent", "buffer_size": 64,
                                                         "rejuvenation": 0.05},
        "sampler": {"name": "langevin", "steps": 2, "grad_coef": 1.0, "noise_std": 0.01}}
TRAIN = {"iterations": 4, "batch_size": 16, "sample_every": 0, "checkpoint_every": 0,
         "plots": False, "threads": 1}


class TestOptions(OptionsConformance):
    component = JEMOptions
    plugin = ebmkit_jem
    entry_point = "jem"


def test_presets_registered_with_the_jem_recipe():
    reg = build_registry()
    doc = reg.get("preset", "jem-mnist5k").read()
    assert doc["sampler"]["steps"] == 20 and doc["init"]["rejuvenation"] == 0.05
    assert doc["init"]["buffer_size"] == 10_000 and doc["objective"]["name"] == "jem"
    assert reg.get("preset", "jem-digits8").read()["data"]["name"] == "digits8"


def test_tiny_jem_fit_logs_ce_and_samples_classes(tmp_path):
    import ebmkit

    ebm = ebmkit.fit(preset="jem-digits8", train=TRAIN, out_dir=None, **TINY)
    assert {"ce", "acc", "energy_reg"} <= set(ebm.last)
    assert ebm.n_classes == 10
    x = ebm.sample(4, y=[0, 1, 2, 3], steps=2, seed=0)
    assert x.shape == (4, 1, 8, 8)
    grid = ebm.class_grid(2, steps=1, seed=0, path=tmp_path / "g.png")
    assert grid.shape == (20, 1, 8, 8) and (tmp_path / "g.png").is_file()


def test_jem_on_unlabelled_data_is_refused():
    import ebmkit

    with pytest.raises(ConfigError, match="needs labels"):
        ebmkit.fit(preset="jem-digits8", data=torch.rand(32, 1, 8, 8) * 2 - 1, train=TRAIN,
                   out_dir=None, **TINY)


def test_guard_restarts_then_stops_in_one_line():
    """With max_energy tiny every iteration 'diverges': one automatic restart, then a clear stop."""
    import ebmkit

    with pytest.raises(DivergenceError) as exc:
        ebmkit.fit(preset="jem-digits8", train=TRAIN, out_dir=None,
                   plugins={"jem": {"max_energy": 1e-12, "restarts": 1}}, **TINY)
    msg = str(exc.value)
    assert "\n" not in msg and "after 1 automatic restart(s)" in msg and "train.lr" in msg


def test_guard_restores_the_last_good_state():
    from types import SimpleNamespace

    torch.manual_seed(0)
    energy = JEMConvNet(build(JEMConvNet.Config, {"nf": 2}, where="energy"), (1, 8, 8))
    opt = torch.optim.Adam(energy.parameters(), lr=0.1)
    reg = build_registry()
    init = reg.create("initializer", "persistent", {"buffer_size": 8}, (1, 8, 8))
    init.setup(generator=torch.Generator().manual_seed(0))
    said = []
    run = SimpleNamespace(energy=energy, optimizer=opt, initializer=init, ema=None, step=0,
                          row={}, say=said.append, out_dir=None, train=SimpleNamespace(lr=0.1))
    guard = RestartGuard(max_energy=100.0, restarts=1, snapshot_every=1)
    guard.on_fit_start(run)
    good = {k: v.clone() for k, v in energy.state_dict().items()}
    buf = init.buffer.clone()
    with torch.no_grad():
        for p in energy.parameters():
            p.add_(1.0)
    init.buffer.add_(5.0)
    run.step, run.row = 1, {"iter": 1, "e_pos": 1e6, "e_neg": 0.0, "d_t": 1e6}
    guard.on_step_end(run, None)
    assert all(torch.equal(energy.state_dict()[k], good[k]) for k in good)
    assert torch.equal(init.buffer, buf) and "restart 1 of 1" in said[0]
    with pytest.raises(DivergenceError, match="after 1 automatic restart"):
        guard.on_step_end(run, None)


def test_guard_off_for_other_objectives():
    from ebmkit_jem.guard import from_config

    class Cfg:
        def __init__(self, guard, objective):
            self._g, self._o = guard, objective

        def plugin(self, name):
            return build(JEMOptions.Config, {"guard": self._g}, where="plugins.jem")

        def to_dict(self):
            return {"objective": {"name": self._o}}

    assert from_config(Cfg("auto", "ml"), None) is None
    assert isinstance(from_config(Cfg("auto", "jem"), None), RestartGuard)
    assert isinstance(from_config(Cfg("on", "ml"), None), RestartGuard)
    assert from_config(Cfg("off", "jem"), None) is None


def test_plain_classifier_baseline_learns_digits8():
    data = build_registry().create("dataset", "digits8", {})
    x, y = data.open(split="train").tensors
    xh, yh = data.open(split="heldout").tensors
    torch.manual_seed(0)
    energy = JEMConvNet(build(JEMConvNet.Config, {"nf": 8}, where="energy"), (1, 8, 8))
    run = train_classifier(energy, x, y, iterations=300, batch_size=32, lr=3e-3)
    assert run.iterations == 300
    with torch.no_grad():
        acc = (energy(xh, logits=True).argmax(1) == yh).float().mean()
    assert acc > 0.85


def test_cli_samples_a_class_and_a_grid_by_class(tmp_path, ebmkit_cli):
    """``ebmkit sample --class K`` / ``--by-class`` on a saved JEM run; a bad class and both
    options together end in one line with exit code 2."""
    import ebmkit

    ebmkit.fit(preset="jem-digits8", train=TRAIN, out_dir=tmp_path / "run", **TINY)
    r = ebmkit_cli("sample", str(tmp_path / "run"), "-n", "3", "--class", "4", "-k", "2",
                   "-o", str(tmp_path / "c4.png"))
    code, out, err = r.exit_code, r.stdout, r.stderr
    assert code == 0 and (tmp_path / "c4.png").is_file() and "3 samples" in out, err
    r = ebmkit_cli("sample", str(tmp_path / "run"), "-n", "2", "--by-class", "-k", "2",
                   "-o", str(tmp_path / "grid.png"))
    code, out, err = r.exit_code, r.stdout, r.stderr
    assert code == 0 and (tmp_path / "grid.png").is_file() and "20 samples" in out, err
    for bad in (["--class", "10"], ["--class", "1", "--by-class"]):
        r = ebmkit_cli("sample", str(tmp_path / "run"), "-n", "2", *bad, "-k", "1",
                       "-o", str(tmp_path / "x.png"))
        code, err = r.exit_code, r.stderr
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
