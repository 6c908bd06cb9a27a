"""The library's second round, checked as a user and a plugin author meet it: a plugin's options
in the run document, a plugin's failures contained and named (evaluator, callback, sampler,
load), a callback's state and the checkpoint manager, the ``objective`` kind.

The plugin under test is a real module written to a temporary directory and registered like an
installed one (``ebmkit_cli.use(module)``), so the containment sees its frames exactly as it sees
an installed plugin's.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
import tomllib
from dataclasses import dataclass

import ebmkit
import pytest
import torch
from ebmkit import ConfigError, PluginError

PLUGIN = '''
from dataclasses import dataclass

import torch
import ebmkit
from ebmkit import hookimpl, param


class Broken(ebmkit.Evaluator):
    name = "broken"
    summary = "An evaluator that raises (tests)."

    def evaluate(self, model, data, out_dir):
        raise RuntimeError("broken evaluator exploded")


class Explodes(ebmkit.Callback):
    """Raises at iteration ``at``; counts iterations as its state."""

    def __init__(self, at):
        self.at, self.seen = at, 0

    def on_step_end(self, run, out):
        self.seen += 1
        if run.step == self.at:
            raise ValueError("callback exploded")

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = state["seen"]


class Wobbly(ebmkit.Sampler):
    """A sampler that raises after the chains started (tests)."""

    name = "wobbly"
    summary = "Raises (tests)."

    @dataclass(frozen=True, kw_only=True)
    class Config:
        steps: int = param(2, "steps", min=0)

    def run(self, energy, x0, steps, **kw):
        raise ZeroDivisionError("wobbly sampler fell over")


@dataclass(frozen=True, kw_only=True)
class MineConfig:
    explode_at: int = param(0, "Iteration at which the plugin's callback raises; 0 = never.", min=0)
    every: int = param(10, "How often (unused).", min=1)


class MineOptions(ebmkit.Options):
    name = "mine"
    summary = "Options of the test plugin."
    Config = MineConfig
    resumable = frozenset({"explode_at"})


@hookimpl
def ebmkit_register(register):
    register(Broken)
    register(Wobbly)
    register(MineOptions)


@hookimpl
def ebmkit_callbacks(config, out_dir):
    at = config.plugin("mine").explode_at
    return Explodes(at) if at else None


@hookimpl
def ebmkit_cli(app):
    @app.command("mine-boom")
    def boom():
        """A command that fails (tests)."""
        raise OSError("disk on fire")
'''

TOY = ["--energy", "mlp", "--data", "gmm2d", "--sampler", "langevin", "--set", "energy.hidden=16",
       "--set", "energy.layers=2", "--set", "sampler.steps=3", "--set", "train.batch_size=16",
       "--set", "train.plots=false", "--set", "train.tensorboard=off", "--no-progress"]


@pytest.fixture
def mine(tmp_path, monkeypatch):
    """The test plugin as an importable module ``_ebmkit_mine`` (outside ebmkit's package)."""
    (tmp_path / "_ebmkit_mine.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("_ebmkit_mine", None)
    yield importlib.import_module("_ebmkit_mine")
    sys.modules.pop("_ebmkit_mine", None)


def _core():
    from importlib.metadata import entry_points

    return [ep.load() for ep in entry_points(group="ebmkit") if ep.dist and ep.dist.name == "ebmkit-core"]


@pytest.fixture
def cli(ebmkit_cli, mine, one_thread):
    ebmkit_cli.use(*_core(), mine)
    return ebmkit_cli


@pytest.fixture
def reg(mine):
    return ebmkit.build_registry(ebmkit.get_plugin_manager(entry_points=False, plugins=[*_core(), mine]))


def _one_error_line(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code not in (0, None) and lines, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    return lines[-1]


# ---------------------------------------------------------------------------------------------
# plugin options
# ---------------------------------------------------------------------------------------------
def test_plugin_options_are_a_section_of_the_run_document(cli, tmp_path):
    res = cli("run", *TOY, "--set", "plugins.mine.every=5", "--dry-run")
    assert res.exit_code == 0, res.stdout + res.stderr
    assert "[plugins.mine]\nexplode_at = 0\nevery = 5\n" in res.stdout
    line = _one_error_line(cli("run", *TOY, "--set", "plugins.mine.evry=5", "--dry-run"))
    assert "Did you mean 'plugins.mine.every'?" in line
    line = _one_error_line(cli("run", *TOY, "--set", "plugins.mien.every=5", "--dry-run"))
    assert "mien" in line and "Did you mean 'mine'" in line
    line = _one_error_line(cli("run", *TOY, "--set", "plugins.mine.every=0", "--dry-run"))
    assert "plugins.mine.every" in line


def test_plugin_options_are_recorded_and_a_resume_may_change_only_the_resumable(cli, reg, tmp_path):
    out = tmp_path / "run"
    res = cli("run", *TOY, "-n", "2", "--set", "plugins.mine.every=7", "-o", str(out))
    assert res.exit_code == 0, res.stdout + res.stderr
    doc = tomllib.loads((out / "run.toml").read_text())
    assert doc["plugins"]["mine"] == {"explode_at": 0, "every": 7}
    cfg = ebmkit.RunConfig.from_toml(out / "run.toml", registry=reg)
    assert cfg.plugin("mine").every == 7
    line = _one_error_line(cli("run", "--resume", str(out), "--set", "plugins.mine.every=3"))
    assert "plugins.mine.every cannot change on resume" in line and "plugins.mine.explode_at" in line


# ---------------------------------------------------------------------------------------------
# containment: evaluator, callback, sampler, load
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def trained(cli, tmp_path):
    out = tmp_path / "toy"
    res = cli("run", *TOY, "-n", "2", "-o", str(out))
    assert res.exit_code == 0, res.stdout + res.stderr
    return out


def test_eval_runs_the_other_evaluators_and_names_the_plugin(cli, trained, tmp_path):
    ev = tmp_path / "eval"
    res = cli("eval", str(trained), "-e", "interpolation", "-e", "broken", "-e", "longrun",
              "--set", "interpolation.pairs=2", "--set", "interpolation.points=3",
              "--set", "longrun.n=8", "--set", "longrun.steps=4", "--set", "longrun.snapshots=2",
              "-o", str(ev))
    assert res.exit_code not in (0, None), res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(errors) == 2, res.stderr  # the evaluator's line, then the summary
    assert "evaluator 'broken' from plugin '_ebmkit_mine'" in errors[0]
    assert "RuntimeError: broken evaluator exploded" in errors[0]
    assert "1 of 3 evaluators failed (broken)" in errors[1] and "interpolation, longrun" in errors[1]
    assert (ev / "longrun_metrics.json").is_file() and (ev / "interpolation_metrics.json").is_file()


def test_evaluate_in_python_raises_plugin_error_with_the_cause(trained, reg):
    model = ebmkit.load(trained, registry=reg)
    with pytest.raises(PluginError, match="evaluator 'broken' from plugin '_ebmkit_mine'") as e:
        ebmkit.evaluate(model, "broken", out_dir=None, registry=reg)
    assert isinstance(e.value.__cause__, RuntimeError)
    assert "\n" not in str(e.value)


def test_a_raising_callback_stops_with_a_checkpoint_and_resume_continues(cli, tmp_path):
    out = tmp_path / "run"
    res = cli("run", *TOY, "-n", "6", "--set", "plugins.mine.explode_at=3", "-o", str(out))
    line = _one_error_line(res)
    assert len([ln for ln in res.stderr.splitlines() if ln.strip()]) == 1, res.stderr
    assert "callback 'Explodes' from plugin '_ebmkit_mine'" in line and "iteration 3" in line
    assert "ValueError: callback exploded" in line and f"ebmkit run --resume {out}" in line
    mgr = ebmkit.CheckpointManager(out)
    assert mgr.latest_step() == 3
    assert mgr.describe()["callbacks"]["Explodes"] == {"seen": 3}
    # the option is resumable: switch the explosion off and continue to the end
    res = cli("run", "--resume", str(out), "--set", "plugins.mine.explode_at=0")
    assert res.exit_code == 0, res.stdout + res.stderr
    assert "resuming from" in res.stdout and mgr.latest_step() == 6
    rows = (out / "diagnostics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4", "5", "6"]


def test_a_plugin_sampler_that_raises_is_named_in_training_and_sampling(cli, trained, reg, tmp_path):
    line = _one_error_line(cli("run", *TOY, "--sampler", "wobbly", "-n", "2", "-o",
                               str(tmp_path / "w")))
    assert "sampler 'wobbly' from plugin '_ebmkit_mine'" in line
    assert "ZeroDivisionError: wobbly sampler fell over" in line
    model = ebmkit.load(trained, sampler="wobbly", registry=reg)
    with pytest.raises(PluginError, match="sampler 'wobbly' .* failed while sampling") as e:
        model.sample(4)
    assert isinstance(e.value.__cause__, ZeroDivisionError)
    line = _one_error_line(cli("sample", str(trained), "--sampler", "wobbly", "-n", "4",
                               "-o", str(tmp_path / "s.png")))
    assert "sampler 'wobbly' from plugin '_ebmkit_mine'" in line


def test_a_plugin_command_that_raises_is_one_line_naming_the_plugin(cli):
    line = _one_error_line(cli("mine-boom"))
    assert line.startswith("error: plugin '_ebmkit_mine' (local) failed: OSError: disk on fire")
    assert "report it to the plugin's authors" in line


def test_a_users_own_module_keeps_its_traceback(reg):
    """Containment names plugins; a researcher's own energy in a script is not one, and its bug
    keeps its traceback (what they need to fix it)."""

    class Mine(torch.nn.Module):
        def forward(self, x):
            if x.shape[0] > 2:  # passes the check on two examples, fails in the chain
                raise KeyError("my bug")
            return x.pow(2).sum(1)

    model = ebmkit.model_from(Mine(), "langevin", "noise", shape=(2,), registry=reg)
    with pytest.raises(KeyError, match="my bug"):
        model.sample(8, steps=2)


def test_the_load_failure_line_names_the_plugin(ebmkit_cli, tmp_path, monkeypatch):
    (tmp_path / "_ebmkit_sour.py").write_text("raise RuntimeError('sour at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from importlib import metadata

    from ebmkit import plugins as P

    @dataclass
    class EP:
        name: str = "sour"
        value: str = "_ebmkit_sour"
        group: str = "ebmkit"

        @property
        def dist(self):
            from types import SimpleNamespace

            return SimpleNamespace(name="ebmkit-sour", version="0.1")

        def load(self):
            return importlib.import_module(self.value)

    real = list(metadata.entry_points(group=P.GROUP))
    monkeypatch.setattr(P.metadata, "entry_points", lambda group=None: [*real, EP()])
    ebmkit_cli.fresh()
    res = ebmkit_cli("run", *TOY, "--dry-run")
    assert res.exit_code == 0, res.stdout + res.stderr
    assert "warning: 1 plugin(s) failed to load: sour (RuntimeError: sour at import" in res.stderr
    line = _one_error_line(ebmkit_cli("run", *TOY, "--sampler", "sour-sampler", "--dry-run"))
    assert "unknown sampler 'sour-sampler'" in line and "sour (RuntimeError" in line
    sys.modules.pop("_ebmkit_sour", None)


# ---------------------------------------------------------------------------------------------
# the energy's shape, checked before anything runs
# ---------------------------------------------------------------------------------------------
def test_an_energy_returning_b_by_1_fails_before_the_first_step(tmp_path, one_thread):
    class Forgot(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def forward(self, x):
            return self.lin(x)  # [B, 1]: the squeeze is missing

    out = tmp_path / "run"
    with pytest.raises(ConfigError) as e:
        ebmkit.fit(energy=Forgot(), data=torch.randn(64, 2) * 0.5, iterations=2, batch_size=8,
                   out_dir=out, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "Forgot" in msg and "[2, 1]" in msg
    assert not out.exists()  # nothing written, not even the directory


# ---------------------------------------------------------------------------------------------
# the objective kind
# ---------------------------------------------------------------------------------------------
class Centred(ebmkit.Objective):
    """ML plus a penalty on the mean positive energy; logs it (tests)."""

    name = "centred"
    summary = "tests"

    @dataclass(frozen=True, kw_only=True)
    class Config:
        weight: float = ebmkit.param(0.5, "penalty weight")

    calls = 0

    def __call__(self, energy, x_pos, x_neg, *, labels=None):
        type(self).calls += 1
        u = energy(torch.cat([x_pos, x_neg]))
        u_pos, u_neg = u[: len(x_pos)], u[len(x_pos):]
        pen = u_pos.mean() ** 2
        loss = u_pos.mean() - u_neg.mean() + self.config.weight * pen
        return ebmkit.ObjectiveOutput(loss, u_pos, u_neg, {"penalty": pen.detach()})


class NeedsLabels(ebmkit.Objective):
    name = "needs-labels"
    summary = "tests"
    needs_labels = True
    seen: list = []

    def __call__(self, energy, x_pos, x_neg, *, labels=None):
        type(self).seen.append(labels.clone())
        u = energy(torch.cat([x_pos, x_neg]))
        return ebmkit.ObjectiveOutput(u[: len(x_pos)].mean() - u[len(x_pos):].mean(),
                                      u[: len(x_pos)], u[len(x_pos):])


TOY_FIT = dict(energy={"name": "mlp", "hidden": 16, "layers": 2}, data="gmm2d",
               sampler={"name": "langevin", "steps": 3, "grad_coef": 0.01, "noise_std": 0.05},
               iterations=3, batch_size=16, plots=False, tensorboard="off", progress=False)


def test_a_custom_objective_is_called_and_its_metrics_reach_the_csv(tmp_path, one_thread):
    Centred.calls = 0
    out = tmp_path / "run"
    ebmkit.fit(**TOY_FIT, objective=Centred(Centred.default_config()), out_dir=out)
    assert Centred.calls == 3
    header, *rows = (out / "diagnostics.csv").read_text().splitlines()
    cols = header.split(",")
    assert "penalty" in cols and len(rows) == 3
    assert all(float(r.split(",")[cols.index("penalty")]) >= 0 for r in rows)


def test_the_builtin_ml_penalty_is_configurable_and_recorded(tmp_path, one_thread):
    out = tmp_path / "run"
    ebmkit.fit(**TOY_FIT, objective={"name": "ml", "alpha": 0.1}, out_dir=out)
    assert tomllib.loads((out / "run.toml").read_text())["objective"] == {"name": "ml", "alpha": 0.1}


def test_an_objective_that_needs_labels_gets_the_batch_labels(one_thread):
    NeedsLabels.seen = []
    x = torch.randn(64, 2) * 0.5
    y = torch.arange(64) % 4
    data = torch.utils.data.TensorDataset(x, y)
    ebmkit.fit(**{**TOY_FIT, "data": data}, objective=NeedsLabels(None))
    assert len(NeedsLabels.seen) == 3 and all(len(s) == 16 for s in NeedsLabels.seen)
    assert all(set(s.tolist()) <= {0, 1, 2, 3} for s in NeedsLabels.seen)
    with pytest.raises(ConfigError, match="needs labels") as e:
        ebmkit.fit(**{**TOY_FIT, "data": x}, objective=NeedsLabels(None))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# callback state and the checkpoint manager
# ---------------------------------------------------------------------------------------------
class Counter(ebmkit.Callback):
    state_key = "counter"

    def __init__(self):
        self.n, self.trace = 0, torch.zeros(0)

    def on_step_end(self, run, out):
        self.n += 1
        self.trace = torch.cat([self.trace, out.u_pos.detach().mean().reshape(1)])

    def state_dict(self):
        return {"n": self.n, "trace": self.trace}

    def load_state_dict(self, state):
        self.n, self.trace = state["n"], state["trace"]


def test_callback_state_round_trips_through_a_checkpoint(tmp_path, one_thread):
    out = tmp_path / "run"
    first = Counter()
    ebmkit.fit(**{**TOY_FIT, "iterations": 5}, out_dir=out, callbacks=[first], checkpoint_every=1,
               stop_after=3)
    assert first.n == 3
    mgr = ebmkit.CheckpointManager(out)
    assert mgr.latest_step() == 3 and mgr.steps()[0] == 3
    again = Counter()
    ebmkit.fit(out_dir=out, resume=True, callbacks=[again])
    assert again.n == 5 and len(again.trace) == 5
    assert torch.equal(again.trace[:3], first.trace)  # a tensor in the state, bit for bit


def test_the_manager_keeps_the_newest_and_says_why_each_was_rejected(tmp_path, one_thread):
    out = tmp_path / "run"
    ebmkit.fit(**{**TOY_FIT, "iterations": 4}, out_dir=out, checkpoint_every=1, keep=2)
    mgr = ebmkit.CheckpointManager(out)
    assert mgr.steps() == [4, 3] and mgr.latest() == out / "checkpoints" / "step-000004"
    for step in mgr.steps():  # damage every checkpoint
        (out / "checkpoints" / f"step-{step:06d}" / "state.json").write_text("{not json")
    assert mgr.latest() is None
    with pytest.raises(ebmkit.CheckpointError) as e:
        ebmkit.fit(out_dir=out, resume=True)
    msg = str(e.value)
    assert "step-000004" in msg and "step-000003" in msg and "\n" not in msg


def test_capacity_below_the_batch_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="initializer 'persistent' holds 8 chains but every "
                                          "iteration needs train.batch_size = 16") as e:
        ebmkit.fit(**TOY_FIT, init={"name": "persistent", "buffer_size": 8}, out_dir=out)
    assert "\n" not in str(e.value) and not out.exists()
