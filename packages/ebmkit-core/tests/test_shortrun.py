"""Short-run generator evaluators against a quadratic energy whose chain is known in closed form.

U(x) = a/2 ‖x‖². Noise-free Langevin x <- x - c a x is linear: M(z) = (1 - c a)^K z, so the
reconstruction is exact, the Jacobian is (1 - c a)^K I and log|det| = D K log|1 - c a|.
"""

import json
import math
from dataclasses import dataclass

import pytest
import torch
from ebmkit import EBM, Energy, param
from ebmkit.builtin.datasets import MNIST5k
from ebmkit.builtin.generator import (
    FlowConfig,
    FlowLikelihood,
    Interpolation,
    InterpolationConfig,
    Reconstruction,
    ReconstructionConfig,
)
from ebmkit.builtin.initializers import NoiseConfig, NoiseInit
from ebmkit.builtin.longrun import LongRun, LongRunConfig
from ebmkit.builtin.samplers import Langevin, LangevinConfig
from torch import nn


@dataclass(frozen=True, kw_only=True)
class QCfg:
    a: float = param(1.0, "curvature")


class Quadratic(Energy):
    name = "test-quadratic"
    Config = QCfg

    def __init__(self, config, shape):
        super().__init__(config, shape)
        self.a = nn.Parameter(torch.tensor(config.a))

    def forward(self, x):
        return 0.5 * self.a * x.flatten(1).pow(2).sum(1)


class Digits8(MNIST5k):
    """The embedded digits at 8x8 (64 dimensions: a full Jacobian is cheap)."""


def model(shape, *, a=1.0, coef=0.1, steps=5):
    e = Quadratic(QCfg(a=a), shape)
    s = Langevin(LangevinConfig(grad_coef=coef, noise_std=0.0, steps=steps))
    return EBM(energy=e, sampler=s, initializer=NoiseInit(NoiseConfig(), shape), steps=steps)


def digits(res=8, n=64):
    return Digits8(Digits8.Config(resolution=res, channels=1, limit=n))


def test_interpolation_strip_and_linearity(tmp_path):
    m = model((1, 8, 8))
    r = Interpolation(InterpolationConfig(pairs=3, points=5)).evaluate(m, None, tmp_path)
    assert (tmp_path / "interpolation.png").is_file() and r.figures["strip"].is_file()
    # M is linear and z_rho moves on a circle arc: finite, positive steps
    assert 0 < r.metrics["mean_step_l2"] <= r.metrics["max_step_l2"]
    assert json.loads((tmp_path / "interpolation_metrics.json").read_text()) == r.metrics


def test_reconstruction_inverts_a_linear_generator(tmp_path):
    # (1 - 0.1)^5 = 0.59: x = 0.59 z is reachable from z in [-1, 1] for |x| <= 0.59
    m = model((1, 8, 8))
    data = digits()
    ev = Reconstruction(ReconstructionConfig(n=4, iterations=300, lr=0.05))
    r = ev.evaluate(m, _Scaled(data, 0.5), tmp_path)
    assert r.metrics["mse_last_iteration"] < 1e-3 * r.metrics["mse_first_iteration"]
    assert r.metrics["mse"] < 1e-4 and r.metrics["psnr_db"] > 40
    assert (tmp_path / "reconstruction.png").is_file()
    assert m.energy.a.grad is None  # nothing leaked into the energy's parameters


class _Scaled:
    """A data source wrapper scaling images into the generator's reachable range."""

    name = "scaled"

    def __init__(self, inner, s):
        self.inner, self.s = inner, s

    def open(self, *, split="train"):
        ds = self.inner.open(split=split)
        return torch.utils.data.TensorDataset(ds.tensors[0] * self.s)


def test_flow_likelihood_matches_the_closed_form(tmp_path):
    a, coef, k = 1.0, 0.1, 5
    m = model((1, 8, 8), a=a, coef=coef, steps=k)
    ev = FlowLikelihood(FlowConfig(n=2, iterations=300, lr=0.05))
    r = ev.evaluate(m, _Scaled(digits(), 0.5), tmp_path)
    d = 64
    expected_logdet = d * k * math.log(abs(1 - coef * a))
    assert r.metrics["logdet_jacobian"] == pytest.approx(expected_logdet, rel=1e-6)
    log_px = -d * math.log(2.0) - expected_logdet
    bpd = (-log_px + d * math.log(127.5)) / (d * math.log(2))
    assert r.metrics["bits_per_dim"] == pytest.approx(bpd, rel=1e-6)


def test_flow_likelihood_refuses_huge_inputs(tmp_path):
    from ebmkit.errors import ConfigError

    m = model((1, 8, 8))
    with pytest.raises(ConfigError, match="max_dim"):
        FlowLikelihood(FlowConfig(n=1, max_dim=10)).evaluate(m, digits(), tmp_path)


def test_longrun_reaches_the_stationary_energy(tmp_path):
    # ULA on U = a/2 x^2 with x <- x - c a x + b z: stationary variance b^2 / (1 - (1 - c a)^2)
    shape = (1, 8, 8)
    e = Quadratic(QCfg(a=1.0), shape)
    s = Langevin(LangevinConfig(grad_coef=0.1, noise_std=0.1, steps=5))
    m = EBM(energy=e, sampler=s, initializer=NoiseInit(NoiseConfig(), shape), steps=5)
    r = LongRun(LongRunConfig(n=256, steps=300, snapshots=4)).evaluate(m, digits(), tmp_path)
    var = 0.01 / (1 - 0.9**2)
    expected = 0.5 * 64 * var  # E[U] = a/2 * D * var
    # 256 chains x 64 dims: U is a/2 * var * chi2_64 per chain, sd sqrt(2*64)*var/2; s.e. over 256 chains
    se = math.sqrt(2 * 64) * var / 2 / math.sqrt(256)
    assert abs(r.metrics["energy_long"] - expected) < 4 * se
    assert r.metrics["energy_long"] < r.metrics["energy_short"]
    assert "energy_data" in r.metrics
    assert (tmp_path / "longrun_energy.png").is_file() and (tmp_path / "longrun_snapshots.png").is_file()


def test_eval_cli_on_a_trained_checkpoint(cli, tmp_path):
    run = tmp_path / "run"
    code, _, err = cli("run", "--preset", "quick", "-n", "2", "--no-progress", "--out", run,
                       "--set", "energy.nf=4", "--set", "sampler.steps=3", "--set", "data.limit=32",
                       "--set", "train.batch_size=8")
    assert code == 0, err
    code, out, err = cli("eval", run / "model.safetensors", "-e", "interpolation", "-e", "longrun",
                         "--set", "longrun.steps=20", "--set", "interpolation.pairs=2", "-o", tmp_path / "ev")
    assert code == 0, err
    assert "energy_long" in out and (tmp_path / "ev" / "interpolation.png").is_file()
    code, _, err = cli("eval", run / "model.safetensors", "-e", "longrun", "--set", "lonrun.steps=2")
    assert code == 2 and "must be one of the chosen evaluators" in err
    code, _, err = cli("eval", run / "model.safetensors", "-e", "fid")
    assert code == 2 and "unknown evaluator 'fid'" in err
