"""``ebmkit.train_step`` alone, on an energy whose maximum-likelihood update is known in closed
form.

``U(x) = ½‖x − μ‖²`` with a learnable ``μ``: the loss ``L = mean U(x+) − mean U(x−)`` has
``∂L/∂μ = mean(x−) − mean(x+)``, so one SGD step with learning rate ``η`` gives exactly
``μ' = μ + η (mean x+ − mean x−)``: the energy of the data goes down (μ moves towards the data)
and that of the samples up. A flipped loss sign moves μ the other way and fails these tests.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from ebmkit import Initializer, StepOutput, train_step
from ebmkit.builtin.samplers import Langevin, LangevinConfig
from torch import nn

D = 3


class Quadratic(nn.Module):
    """``U(x) = ½‖x − μ‖²`` (plain torch); records how each forward was called."""

    def __init__(self, mu):
        super().__init__()
        self.mu = nn.Parameter(torch.as_tensor(mu, dtype=torch.float32).clone())
        self.calls: list[dict] = []

    def forward(self, x):
        self.calls.append({"training": self.training, "mu_requires_grad": self.mu.requires_grad,
                           "n": x.shape[0]})
        return 0.5 * (x - self.mu).pow(2).sum(dim=1)


class FixedStarts(Initializer):
    """Chains start at fixed points ``x0``; records what the trainer gives it."""

    name = "test-fixed-starts"

    def __init__(self, x0):
        super().__init__(None, tuple(x0.shape[1:]))
        self.x0 = x0
        self.sample_calls: list[dict] = []
        self.updates: list[torch.Tensor] = []

    def sample(self, n, *, data=None, generator=None, device=None):
        self.sample_calls.append({"n": n, "data": None if data is None else data.clone()})
        return self.x0[:n].clone()

    def update(self, x_final):
        self.updates.append(x_final.clone())


def langevin(steps=0, grad_coef=0.5, noise_std=0.0):
    return Langevin(LangevinConfig(steps=steps, grad_coef=grad_coef, noise_std=noise_std))


def batch(center, n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.as_tensor(center, dtype=torch.float32) + 0.3 * torch.randn(n, D, generator=g)


def setup(mu=(0.0, 0.0, 0.0), pos=(1.0, 2.0, -1.0), neg=(-1.0, 0.5, 3.0), n=5, lr=0.5):
    energy = Quadratic(mu)
    x_pos = batch(pos, n, seed=1)
    x0 = batch(neg, n, seed=2)
    init = FixedStarts(x0)
    opt = torch.optim.SGD(energy.parameters(), lr=lr)
    return energy, x_pos, x0, init, opt


def expected_mu(mu, x_pos, x_neg, lr):
    return mu + lr * (x_pos.mean(0) - x_neg.mean(0))


# ---------------------------------------------------------------------------------------------
def test_one_sgd_step_moves_mu_towards_the_data_and_away_from_the_samples():
    """K = 0: x− are the starts themselves; the closed-form update, sign included."""
    energy, x_pos, x0, init, opt = setup(mu=(0.0, 0.0, 0.0), pos=(1.0, 1.0, 1.0),
                                         neg=(-1.0, -1.0, -1.0), lr=0.5)
    mu0 = energy.mu.detach().clone()
    out = train_step(energy, x_pos, sampler=langevin(steps=0), initializer=init, optimizer=opt,
                     steps=0)
    assert isinstance(out, StepOutput)
    assert torch.equal(out.x_neg, x0)  # K = 0: the chains did not move
    want = expected_mu(mu0, x_pos, x0, 0.5)
    torch.testing.assert_close(energy.mu.detach(), want)
    # the direction, stated plainly: the data's mean is ~+1, the samples' ~-1, η = 0.5
    assert (energy.mu.detach() - mu0 > 0.5).all()
    # the gradient left on μ is exactly mean(x−) − mean(x+)
    torch.testing.assert_close(energy.mu.grad, x0.mean(0) - x_pos.mean(0))


def test_update_with_a_chain_whose_output_is_known():
    """Noise-free Langevin on U: x_{k+1} = x_k − a(x_k − μ), so x_K = μ + (1 − a)^K (x0 − μ),
    run with the parameters as they were *before* the update."""
    a, k, lr = 0.5, 3, 0.2
    energy, x_pos, x0, init, opt = setup(mu=(0.5, -0.5, 1.0), lr=lr)
    mu0 = energy.mu.detach().clone()
    out = train_step(energy, x_pos, sampler=langevin(steps=k, grad_coef=a), initializer=init,
                     optimizer=opt, steps=k)
    x_neg = mu0 + (1 - a) ** k * (x0 - mu0)
    torch.testing.assert_close(out.x_neg, x_neg)
    torch.testing.assert_close(energy.mu.detach(), expected_mu(mu0, x_pos, x_neg, lr))
    assert out.steps == k and out.chain.steps == k


def test_no_gradient_flows_through_the_chain():
    """The chains run on ``energy`` with its parameters frozen and in eval mode; x− is detached,
    so the parameter gradient is only the loss's ``mean(x−) − mean(x+)`` (were the K-step chain
    differentiated, x− would depend on μ and the gradient would differ)."""
    a, k = 0.5, 4
    energy, x_pos, x0, init, opt = setup(lr=0.1)
    out = train_step(energy, x_pos, sampler=langevin(steps=k, grad_coef=a), initializer=init,
                     optimizer=opt, steps=k)
    assert not out.x_neg.requires_grad
    torch.testing.assert_close(energy.mu.grad, out.x_neg.mean(0) - out.x_pos.mean(0))
    chain_calls = energy.calls[:-1]
    loss_call = energy.calls[-1]
    assert len(chain_calls) >= k  # at least one gradient evaluation per step
    assert all(not c["training"] and not c["mu_requires_grad"] for c in chain_calls)
    assert loss_call == {"training": True, "mu_requires_grad": True, "n": 2 * x_pos.shape[0]}
    assert energy.training and energy.mu.requires_grad  # both restored


def test_returned_statistics_are_consistent():
    energy, x_pos, x0, init, opt = setup()
    mu0 = energy.mu.detach().clone()
    out = train_step(energy, x_pos, sampler=langevin(steps=2), initializer=init, optimizer=opt,
                     steps=2)

    def u(x):
        return 0.5 * (x - mu0).pow(2).sum(1)

    torch.testing.assert_close(out.u_pos, u(out.x_pos))  # energies before the update
    torch.testing.assert_close(out.u_neg, u(out.x_neg))
    assert out.loss.shape == () and not out.loss.requires_grad
    torch.testing.assert_close(out.loss, out.u_pos.mean() - out.u_neg.mean())
    assert out.chain.x is out.x_neg or torch.equal(out.chain.x, out.x_neg)
    assert out.u_pos.shape == (x_pos.shape[0],) and out.u_neg.shape == (x0.shape[0],)


def test_data_noise_is_added_to_the_positives_with_the_generator():
    sigma, seed = 0.25, 123
    energy, x_pos, x0, init, opt = setup(lr=0.5)
    x_orig = x_pos.clone()
    mu0 = energy.mu.detach().clone()
    out = train_step(energy, x_pos, sampler=langevin(steps=0), initializer=init, optimizer=opt,
                     steps=0, data_noise=sigma, generator=torch.Generator().manual_seed(seed))
    z = torch.randn(x_pos.shape, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(out.x_pos, x_orig + sigma * z)  # the first draw of the generator
    assert torch.equal(x_pos, x_orig)  # the caller's batch is not modified
    assert torch.equal(init.sample_calls[0]["data"], out.x_pos)  # CD starts see the noised batch
    torch.testing.assert_close(energy.mu.detach(), expected_mu(mu0, out.x_pos, x0, 0.5))
    # σ = 0 leaves the batch as it is
    energy2, _, _, init2, opt2 = setup()
    out2 = train_step(energy2, x_pos, sampler=langevin(steps=0), initializer=init2,
                      optimizer=opt2, steps=0, data_noise=0.0)
    assert torch.equal(out2.x_pos, x_pos)


def test_initializer_gets_n_chains_and_receives_the_end_states():
    energy, x_pos, x0, init, opt = setup(n=6, lr=0.3)
    x0 = batch((2.0, 2.0, 2.0), n=6, seed=5)
    init = FixedStarts(x0)
    mu0 = energy.mu.detach().clone()
    out = train_step(energy, x_pos, sampler=langevin(steps=1), initializer=init, optimizer=opt,
                     steps=1, n_chains=4)
    assert [c["n"] for c in init.sample_calls] == [4]
    assert out.x_neg.shape == (4, D) and out.u_neg.shape == (4,)
    assert len(init.updates) == 1 and torch.equal(init.updates[0], out.x_neg)
    # means over 6 positives and 4 negatives
    torch.testing.assert_close(energy.mu.detach(), expected_mu(mu0, x_pos, out.x_neg, 0.3))


def test_forward_backward_and_autocast_hooks_are_used():
    energy, x_pos, x0, init, opt = setup(lr=0.5)
    mu0 = energy.mu.detach().clone()
    seen: dict[str, list] = {"forward": [], "backward": [], "autocast": []}

    def forward(x):
        seen["forward"].append(x.shape[0])
        return energy(x)

    def backward(loss):
        seen["backward"].append(loss.detach().clone())
        loss.backward()

    @contextlib.contextmanager
    def autocast():
        seen["autocast"].append("enter")
        yield
        seen["autocast"].append("exit")

    out = train_step(energy, x_pos, sampler=langevin(steps=2), initializer=init, optimizer=opt,
                     steps=2, forward=forward, backward=backward, autocast=autocast())
    assert seen["forward"] == [2 * x_pos.shape[0]]  # one forward on cat([x+, x−])
    assert len(seen["backward"]) == 1 and torch.equal(seen["backward"][0], out.loss)
    assert seen["autocast"] == ["enter", "exit"]
    torch.testing.assert_close(energy.mu.detach(), expected_mu(mu0, x_pos, out.x_neg, 0.5))


def test_backward_hook_replaces_the_default_backward():
    """A ``backward`` that does not backpropagate leaves the parameters as they were: the hook
    really is used instead of ``loss.backward()``."""
    energy, x_pos, x0, init, opt = setup()
    mu0 = energy.mu.detach().clone()
    calls = []
    train_step(energy, x_pos, sampler=langevin(steps=0), initializer=init, optimizer=opt,
               steps=0, backward=calls.append)
    assert len(calls) == 1
    assert torch.equal(energy.mu.detach(), mu0) and energy.mu.grad is None


@pytest.mark.parametrize("flip", [False, True])
def test_a_flipped_sign_is_detected(flip):
    """The sign check itself: a loop with the opposite loss (mean U(x−) − mean U(x+)) would move
    μ the wrong way; here we flip it through the ``backward`` hook and see the test's criterion
    reject it."""
    energy, x_pos, x0, init, opt = setup(pos=(1.0, 1.0, 1.0), neg=(-1.0, -1.0, -1.0), lr=0.5)
    mu0 = energy.mu.detach().clone()
    train_step(energy, x_pos, sampler=langevin(steps=0), initializer=init, optimizer=opt,
               steps=0, backward=(lambda loss: (-loss).backward()) if flip else None)
    right = torch.allclose(energy.mu.detach(), expected_mu(mu0, x_pos, x0, 0.5))
    assert right is not flip
