"""Conformance suite for evaluators: ``evaluate(model, data, out_dir) -> EvalResult`` with
finite float metrics and figure files inside ``out_dir``, leaving the model untouched."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import torch
from ebmkit.interfaces import EvalResult
from ebmkit.model import EBM
from ebmkit.plugins import build_registry

from ._base import ComponentConformance, require
from .toys import gaussian_energy, gaussian_points


class EvaluatorConformance(ComponentConformance):
    """Subclass and set ``component`` (and ``config``, ``shape``)::

        class TestMyMetric(EvaluatorConformance):
            component = MyMetric
            config = {"n": 64}

    By default the model is a Gaussian energy on ``shape`` with a short ``langevin`` sampler and
    ``noise`` chain starts (built by name from the registry of the installed plugins, as a run
    builds them), and the data a fixed Gaussian point set; override ``make_model`` /
    ``make_data`` for an evaluator that needs images or a specific energy.
    ``needs_data = False`` also calls it with no data.
    """

    kind = "evaluator"
    shape: ClassVar[tuple[int, ...]] = (2,)
    needs_data: ClassVar[bool] = True

    def make_evaluator(self) -> Any:
        return self.component(self.make_config())

    def make_model(self) -> EBM:
        torch.manual_seed(0)
        reg = build_registry()
        energy = gaussian_energy(tuple(self.shape), variance=0.25)
        sampler = reg.create("sampler", "langevin", {"steps": 20, "step_size": 0.1})
        init = reg.create("initializer", "noise", None, tuple(self.shape))
        return EBM(energy=energy, sampler=sampler, initializer=init, steps=20, registry=reg)

    def make_data(self) -> Any:
        return gaussian_points(tuple(self.shape), n=256)

    def _evaluate(self, out_dir: Path, *, data: Any = "default") -> tuple[EBM, EvalResult]:
        model = self.make_model()
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        res = self.make_evaluator().evaluate(model, self.make_data() if data == "default" else data,
                                             out_dir)
        return model, res

    def test_returns_finite_float_metrics(self, tmp_path):
        _, res = self._evaluate(tmp_path / "out")
        require(isinstance(res, EvalResult), f"evaluate() returns an ebmkit.EvalResult; got {type(res)}")
        require(res.metrics or res.figures, "an evaluation produces at least one metric or figure")
        for k, v in res.metrics.items():
            require(isinstance(k, str) and isinstance(v, float) and math.isfinite(v),
                    f"metrics map names to finite Python floats (call float(...) on tensors);"
                    f" {k!r}: {v!r}")

    def test_figures_are_files_in_out_dir(self, tmp_path, monkeypatch):
        out = tmp_path / "out"
        cwd = tmp_path / "cwd"
        cwd.mkdir(parents=True)
        monkeypatch.chdir(cwd)
        _, res = self._evaluate(out)
        for k, p in res.figures.items():
            p = Path(p)
            require(p.is_file(), f"figure {k!r} is an existing file; {p} does not exist")
            require(out.resolve() in p.resolve().parents,
                    f"figures are written inside out_dir ({out}); {k!r} is at {p}")
        require(not any(cwd.iterdir()),
                f"evaluate() writes only into out_dir; it left {sorted(x.name for x in cwd.iterdir())}"
                " in the working directory")

    def test_leaves_model_untouched(self, tmp_path):
        model = self.make_model()
        before = {k: v.clone() for k, v in model.energy.state_dict().items()}
        self.make_evaluator().evaluate(model, self.make_data(), tmp_path)
        after = model.energy.state_dict()
        require(all(torch.equal(before[k], after[k]) for k in before),
                "evaluate() must not change the energy's parameters")
        require(all(p.grad is None for p in model.energy.parameters()),
                "evaluate() must not accumulate gradients into the energy's parameters"
                " (sample under ebmkit.frozen / the sampler's run)")

    def test_without_data(self, tmp_path):
        if self.needs_data:
            import pytest

            pytest.skip("needs_data = True")
        _, res = self._evaluate(tmp_path, data=None)
        require(isinstance(res, EvalResult), "with data=None evaluate() still returns an EvalResult")
