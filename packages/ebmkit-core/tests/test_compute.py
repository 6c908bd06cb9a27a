"""The compute axis of every run (``grad_evals``, ``image_steps``, ``cpu_sec``, ``cpu_total`` in
``diagnostics.csv`` and the metrics sink): exact counts for each built-in sampler, continued
across a resume, so quality can be plotted against compute independent of the machine."""

from __future__ import annotations

import csv

import ebmkit
import pytest
import torch

TOY = dict(energy={"name": "mlp", "hidden": 8, "layers": 2}, data="gmm2d", iterations=4,
           batch_size=16, plots=False, tensorboard="off", progress=False)
SAMPLERS = {
    # name: (config, gradient evaluations per chain for K steps)
    "langevin": ({"steps": 5, "grad_coef": 0.01, "noise_std": 0.05}, lambda k: k),
    "mala": ({"steps": 5, "step_size": 0.05}, lambda k: k + 1),
    "hmc": ({"steps": 5, "step_size": 0.05, "leapfrog_steps": 3}, lambda k: 3 * k + 1),
}


def _rows(run_dir):
    with open(run_dir / "diagnostics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_gradient_evaluations_are_counted_exactly(name, tmp_path, one_thread):
    config, per_chain = SAMPLERS[name]
    ebmkit.fit(**TOY, sampler={"name": name, **config}, out_dir=tmp_path / "run")
    rows = _rows(tmp_path / "run")
    b, k = 16, 5
    per_iter = b * per_chain(k) + 2 * b  # the chains, then one pass over x+ and x-
    assert [int(r["grad_evals"]) for r in rows] == [per_iter * i for i in (1, 2, 3, 4)]
    assert [int(r["image_steps"]) for r in rows] == [b * k * i for i in (1, 2, 3, 4)]
    cpu = [float(r["cpu_sec"]) for r in rows]
    assert all(c >= 0 for c in cpu)
    assert float(rows[-1]["cpu_total"]) == pytest.approx(sum(cpu), rel=1e-4, abs=1e-4)


def test_the_counters_continue_across_a_resume_and_reach_the_sink(tmp_path, one_thread):
    out = tmp_path / "run"
    ebmkit.fit(**TOY, sampler={"name": "langevin", "steps": 5}, out_dir=out, checkpoint_every=1,
               stop_after=2)
    seen = []
    ebmkit.fit(out_dir=out, resume=True,
               callbacks=[ebmkit.LambdaCallback(on_log=lambda run, m, step: seen.append(dict(m)))])
    per_iter = 16 * 5 + 32
    assert [int(r["grad_evals"]) for r in _rows(out)] == [per_iter * i for i in (1, 2, 3, 4)]
    assert [m["grad_evals"] for m in seen] == [per_iter * 3, per_iter * 4]
    state = ebmkit.CheckpointManager(out).describe()
    assert state["compute"]["grad_evals"] == per_iter * 4


def test_an_objective_reports_its_own_passes(one_thread):
    class Twice(ebmkit.Objective):
        name = "twice"

        def __call__(self, energy, x_pos, x_neg, *, labels=None):
            u = energy(torch.cat([x_pos, x_neg]))
            extra = energy(x_pos).mean()  # one more pass over the positives
            b = len(x_pos)
            return ebmkit.ObjectiveOutput(u[:b].mean() - u[b:].mean() + 0 * extra, u[:b], u[b:],
                                          grad_evals=3 * b)

    seen = []
    ebmkit.fit(**{**TOY, "iterations": 2}, sampler={"name": "langevin", "steps": 5},
               objective=Twice(None),
               callbacks=[ebmkit.LambdaCallback(on_log=lambda run, m, step: seen.append(m["grad_evals"]))])
    assert seen == [16 * 5 + 48, 2 * (16 * 5 + 48)]


def test_a_cpu_budget_ends_the_run_like_a_completed_one(tmp_path, one_thread):
    out = tmp_path / "run"
    ebm = ebmkit.fit(**{**TOY, "iterations": 10_000}, sampler={"name": "langevin", "steps": 5},
                     out_dir=out, cpu_budget=0.3)
    rows = _rows(out)
    totals = [float(r["cpu_total"]) for r in rows]
    assert ebm.completed and ebm.step == len(rows) < 10_000
    assert totals[-1] >= 0.3 > totals[-2]  # stopped at the first iteration past the budget
    assert ebmkit.CheckpointManager(out).latest_step() == ebm.step  # the final checkpoint


def test_a_time_budget_stops_and_a_resume_gets_a_new_one(tmp_path, one_thread):
    out = tmp_path / "run"
    ebm = ebmkit.fit(**{**TOY, "iterations": 10_000}, sampler={"name": "langevin", "steps": 5},
                     out_dir=out, time_budget=0.2)
    first = ebm.step
    assert ebm.completed and 0 < first < 10_000
    again = ebmkit.fit(out_dir=out, resume=True, time_budget=0.2)
    assert again.completed and again.step > first
