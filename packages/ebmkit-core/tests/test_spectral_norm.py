"""``spectral_norm = true`` on the built-in energies (Miyato et al. 2018; IGEBM): every conv /
linear weight divided by its largest singular value, estimated by power iteration in training
forwards only, and saved / loaded / averaged (EMA) / resumed with the model."""

from __future__ import annotations

import ebmkit
import torch
from ebmkit.builtin.energies import ConvNet32, ConvNetConfig, MLPConfig, MLPEnergy
from torch import nn

TOY = dict(data="gmm2d", batch_size=16,
           sampler={"name": "langevin", "steps": 3, "grad_coef": 0.01, "noise_std": 0.05},
           plots=False, tensorboard="off", progress=False, lr=1e-2)


def _linears(energy: nn.Module) -> list[nn.Linear]:
    return [m for m in energy.modules() if isinstance(m, nn.Linear)]


def _settle(energy: nn.Module, shape, n: int = 200) -> None:
    """Training-mode forwards: each runs one power iteration per layer."""
    energy.train()
    with torch.no_grad():
        for _ in range(n):
            energy(torch.randn(4, *shape))
    energy.eval()


def test_mlp_layers_have_unit_spectral_norm_and_the_energy_is_1_lipschitz(one_thread):
    """With ReLU (1-Lipschitz) and every W at ‖W‖₂ = 1, |U(x) − U(y)| ≤ ‖x − y‖ exactly; the
    power iteration converges to σ_max, so after 200 steps each effective ‖W‖₂ is 1 to 1e-4."""
    torch.manual_seed(0)
    e = MLPEnergy(MLPConfig(hidden=32, layers=3, activation="relu", spectral_norm=True), (6,))
    _settle(e, (6,))
    for lin in _linears(e):
        assert abs(float(torch.linalg.matrix_norm(lin.weight.detach(), ord=2)) - 1) < 1e-4
    x, y = torch.randn(2000, 6), torch.randn(2000, 6)
    with torch.no_grad():
        du = (e(x) - e(y)).abs()
    assert bool((du <= (x - y).norm(dim=1) * (1 + 1e-4)).all())
    plain = MLPEnergy(MLPConfig(hidden=32, layers=3, activation="relu"), (6,))
    assert not any(hasattr(m, "parametrizations") for m in plain.modules())


def test_the_normalised_energy_ignores_the_weights_scale(one_thread):
    """W / σ(W) is invariant to W → cW, and so are the power iteration's vectors: scaling every
    raw weight by 7 leaves the energy unchanged (the biases are not normalised: zeroed here)."""
    torch.manual_seed(1)
    e = MLPEnergy(MLPConfig(hidden=16, layers=2, activation="relu", spectral_norm=True), (3,))
    for lin in _linears(e):
        nn.init.zeros_(lin.bias)
    _settle(e, (3,))
    x = torch.randn(64, 3)
    with torch.no_grad():
        before = e(x)
        for lin in _linears(e):
            lin.parametrizations.weight.original.mul_(7.0)
        after = e(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


def test_chains_do_not_move_the_estimate_training_forwards_do(one_thread):
    """The chains run in eval mode: no power iteration, so the energy is one fixed function
    during a chain (MH samplers need that); a training forward updates the estimate."""
    torch.manual_seed(2)
    e = ConvNet32(ConvNetConfig(nf=4, spectral_norm=True), (1, 32, 32))
    conv = e.f[0]
    u0 = conv.parametrizations.weight[0]._u.clone()
    x = torch.randn(2, 1, 32, 32)
    e.eval()
    with torch.no_grad():
        a, b = e(x), e(x)
    assert torch.equal(a, b) and torch.equal(conv.parametrizations.weight[0]._u, u0)
    e.train()
    with torch.no_grad():
        e(x)
    assert not torch.equal(conv.parametrizations.weight[0]._u, u0)


def test_fit_save_load_and_ema_keep_the_normalisation(tmp_path, one_thread):
    energy = {"name": "mlp", "hidden": 8, "layers": 2, "spectral_norm": True}
    ebm = ebmkit.fit(**TOY, energy=energy, iterations=4, ema=0.9, out_dir=tmp_path / "run")
    loaded = ebmkit.load(tmp_path / "run")
    assert loaded.energy.config.spectral_norm
    x = torch.randn(32, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ebm(x))
    for lin in _linears(loaded.energy):
        sigma = float(torch.linalg.matrix_norm(lin.weight.detach(), ord=2))
        assert sigma < 1.5  # normalised (the power-iteration estimate after 4 updates)
