"""The ``nuts`` sampler: the conformance kit, plus its own exact checks (tree depth cap, one
gradient per leapfrog step, step-size adaptation, a diagonal mass matrix)."""

from __future__ import annotations

import math

import ebmkit_likelihood
import pytest
import torch
from ebmkit.params import build
from ebmkit_likelihood.nuts import NUTS, NUTSConfig, NUTSStepInfo
from ebmkit_testing import SamplerConformance
from ebmkit_testing.samplers import DiagonalGaussianEnergy, mc_tolerance
from torch import nn


@pytest.fixture(autouse=True)
def _one_thread(ebmkit_one_thread):
    """One torch thread for every test here (ebmkit_testing's fixture)."""


class TestNUTS(SamplerConformance):
    component = NUTS
    plugin = ebmkit_likelihood
    entry_point = "likelihood"
    # ε = 1.1 on the kit's N(μ, diag(0.25, 2)): the narrow coordinate (sd 0.5) is near the
    # leapfrog's stability edge (2·sd), so trajectories are short and the chain stays put about
    # half the time at T = 1 and ~15 % at T = 2 (the kit's Gaussian check needs acceptance ≤ 0.9,
    # where the multinomial weights matter): the check tests the Metropolis-like correction.
    config = {"step_size": 1.1}
    grad_coef_is_step = True  # from rest the U-turn criterion stops after one leapfrog step


def make(**values) -> NUTS:
    return NUTS(build(NUTSConfig, values, where="sampler"))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class CountingGaussian(DiagonalGaussianEnergy):
    """Counts the rows it evaluates (each evaluation is one gradient: ``energy_and_grad`` calls
    the energy once per gradient)."""

    rows = 0

    def forward(self, x):
        self.rows += x.shape[0]
        return super().forward(x)


def test_tree_depth_cap_is_respected():
    """A tiny step on N(0, 1): no trajectory of ≤ 2^depth − 1 steps of size 1e-3 can U-turn
    (half a period is π/ε ≈ 3000 steps), so every tree grows to max_depth exactly and costs
    2^max_depth − 1 leapfrog steps."""
    e = DiagonalGaussianEnergy(torch.ones(3))
    x0 = torch.randn(16, 3, generator=gen(0))
    for depth in (1, 3, 5):
        s = make(step_size=1e-3, max_depth=depth)
        state = s.init(e, x0)
        for _ in range(3):
            state, info = s.step(e, state, generator=gen(depth))
            assert isinstance(info, NUTSStepInfo)
            assert torch.equal(info.tree_depth, torch.full((16,), depth))
            assert torch.equal(info.n_leapfrog, torch.full((16,), 2**depth - 1))


def test_tree_depth_never_exceeds_the_cap_on_a_long_orbit():
    """With a moderate step the trees would grow deeper than the cap; they stop at it."""
    e = DiagonalGaussianEnergy(torch.ones(4))
    s = make(step_size=0.05, max_depth=4)
    r = s.run(e, torch.randn(64, 4, generator=gen(1)), 5, generator=gen(2))
    d = r.state.extra["tree_depth"]
    assert int(d.max()) == 4 and bool((r.state.extra["n_leapfrog"] <= 15).all())


@pytest.mark.parametrize("seed", range(6))
def test_one_gradient_per_leapfrog_step_single_chain(seed):
    """One chain: the energy is evaluated exactly once per leapfrog step the transition reports
    (trees end by U-turns, divergences and the depth cap alike), and once by ``init``."""
    e = CountingGaussian(torch.tensor([0.05, 1.0, 4.0]))  # condition number 80: varied trees
    s = make(step_size=0.35 if seed % 2 else 0.7, max_depth=6)
    state = s.init(e, torch.randn(1, 3, generator=gen(seed)))
    assert e.rows == 1
    total = 1
    for _ in range(8):
        before = e.rows
        state, info = s.step(e, state, generator=gen(100 + seed))
        n = int(info.n_leapfrog)
        assert 1 <= n <= 2**6 - 1
        assert e.rows - before == n
        total += n
    assert int(state.extra["grad_evals"]) == total


def test_gradient_count_many_chains():
    """Many chains: ``grad_evals`` per chain is 1 + Σ n_leapfrog, each transition's n_leapfrog
    lies between 2^(depth) − 1 ... 2^(depth+1) − 1 (a kept tree of depth d has 2^d − 1 steps, an
    invalid last doubling adds at most 2^d more), and the energy evaluates at least that many
    rows (chains that go invalid inside a subtree may ride along)."""
    e = CountingGaussian(torch.tensor([0.05, 1.0, 4.0]))
    s = make(step_size=0.6, max_depth=6)
    state = s.init(e, torch.randn(200, 3, generator=gen(3)))
    counted = torch.ones(200, dtype=torch.int64)
    for _ in range(5):
        state, info = s.step(e, state, generator=gen(4))
        lo, hi = 2**info.tree_depth - 1, 2 ** (info.tree_depth + 1) - 1
        assert bool(((info.n_leapfrog >= lo) & (info.n_leapfrog <= hi)).all())
        counted += info.n_leapfrog
    assert torch.equal(state.extra["grad_evals"], counted)
    assert e.rows >= int(counted.sum())
    assert s.gradient_evals(5) == 5 * (2**6 - 1) + 1  # no run() yet: the cap
    r = s.run(e, torch.randn(200, 3, generator=gen(3)), 5, generator=gen(4))
    mean = float(r.state.extra["grad_evals"].float().mean())
    assert s.gradient_evals(5) == math.ceil(mean - 1) + 1


def test_step_size_adaptation_reaches_the_target():
    """Dual averaging on N(0, diag(0.25..4)) in 10-D, 400 chains, 150 warm-up transitions.

    After the warm-up the step size is frozen; over the next 60 transitions the chains' mean
    accept_stat must be within 4 standard errors plus the adaptation's resolution of
    target_accept = 0.8. Standard error: the 400 chains are independent, so the spread of their
    60-transition means gives it (~0.001). Resolution: dual averaging ends at the averaged
    iterate ε̄, not at the exact solution; near it the acceptance statistic falls by ~0.8 per
    unit of log ε (measured: 0.82 → 0.67 from ε = 0.67 to 0.82), and ε̄ lands within a few
    percent of the step giving 0.8 (0.732 and 0.742 from the two starts below), so 4 % in ε —
    0.03 in acceptance — is allowed on top. The run from a step 35x too small and the one 4x too
    large must both get there.
    """
    e = DiagonalGaussianEnergy(torch.linspace(0.25, 4.0, 10))
    x0 = e.sample(400, generator=gen(5))
    for eps0 in (0.02, 3.0):
        s = make(step_size=eps0, adapt_steps=150, target_accept=0.8)
        state = s.init(e, x0)
        g = gen(6)
        for _ in range(150):
            state, _ = s.step(e, state, generator=g)
        eps = float(state.extra["step_size"])
        stats = []
        for _ in range(60):
            state, info = s.step(e, state, generator=g)
            stats.append(info.accept_stat)
        assert float(state.extra["step_size"]) == eps  # frozen after the warm-up
        per_chain = torch.stack(stats).mean(0)
        se = float(per_chain.std() / math.sqrt(per_chain.numel()))
        err = abs(float(per_chain.mean()) - 0.8)
        assert err < 4 * se + 0.03, (eps0, eps, float(per_chain.mean()), se)


def test_run_reports_acceptance_after_the_warm_up():
    """``run`` with a warm-up: acceptance over the later transitions; the early dual-averaging
    iterates overshoot (ε ≈ 7 on N(0, 1): divergent trees, as in Stan's warm-up), the adapted
    step makes none."""
    e = DiagonalGaussianEnergy(torch.ones(2))
    s = make(step_size=0.5, adapt_steps=30)
    x0 = torch.randn(50, 2, generator=gen(7))
    r = s.run(e, x0, 60, generator=gen(8))
    assert r.accept_rate is not None and 0 < float(r.accept_rate) <= 1
    state = r.state
    for _ in range(20):
        state, info = s.step(e, state, generator=gen(9))
        assert not bool(info.divergent.any())


def test_diagonal_mass_matrix_is_exact_and_helps():
    """inv_mass = the target's variances (perfect preconditioning) on a badly scaled Gaussian:
    the chains stay exact (4,000 chains from exact draws, 10 transitions, means and variances
    within 4 standard errors) and need far shorter trajectories than with the identity mass."""
    var = torch.tensor([0.01, 0.1, 1.0, 10.0])
    e = DiagonalGaussianEnergy(var, torch.tensor([1.0, -1.0, 0.5, 0.0]))
    x0 = e.sample(4000, generator=gen(9))
    pre = make(step_size=0.9, inv_mass=tuple(var.tolist()))
    r = pre.run(e, x0, 10, generator=gen(10))
    tol_m, tol_v = mc_tolerance(r.x, var)
    assert bool(((r.x.mean(0) - e.mean.detach()).abs() < tol_m).all())
    assert bool(((r.x.var(0) - var).abs() < tol_v).all())
    plain = make(step_size=0.09)  # the stable identity-mass step for sd 0.1 at similar acceptance
    r2 = plain.run(e, x0[:200], 5, generator=gen(10))
    n_pre = float(r.state.extra["n_leapfrog"].float().mean())
    n_plain = float(r2.state.extra["n_leapfrog"].float().mean())
    assert n_pre * 4 < n_plain
    with pytest.raises(ValueError, match="inv_mass has 3 values"):
        make(inv_mass=(1.0, 2.0, 3.0)).run(e, x0[:4], 1)


def test_divergences_are_flagged_and_never_sampled():
    """A wall: U = NaN beyond |x| > 2. Trajectories that hit it are divergent, flagged, and the
    chains never land beyond it."""

    class Walled(nn.Module):
        def forward(self, x):
            u = 0.5 * x.square().sum(1)
            return torch.where(x.abs().amax(1) > 2, torch.full_like(u, math.nan), u)

    s = make(step_size=0.4)
    r = s.run(Walled(), torch.zeros(256, 2), 20, generator=gen(11))
    assert bool(r.divergent.any())
    assert bool((r.x.abs() <= 2).all()) and bool(torch.isfinite(r.energy).all())


def test_noise_free_transition_is_one_leapfrog_step_and_differentiable():
    """Zero momentum: the U-turn criterion stops after one step, x − (ε²/2)∇U/T."""
    e = DiagonalGaussianEnergy(torch.tensor([0.5, 2.0]), quartic=0.1).double()
    x0 = torch.randn(5, 2, generator=gen(12), dtype=torch.float64)
    s = make(step_size=0.3, temperature=2.0)
    state, info = s.step(e, s.init(e, x0), noise=False)
    _, g = e(x0.requires_grad_()).sum().div(2.0).backward(), x0.grad
    torch.testing.assert_close(state.x, x0.detach() - 0.045 * g)
    assert torch.equal(info.n_leapfrog, torch.ones(5, dtype=torch.int64))


class Quartic(nn.Module):
    """``U(x) = Σ_i a_i x_i² / 2 + x_i⁴``: separable, anharmonic (leapfrog errors are not
    symmetric in x, trajectories have energy-dependent periods)."""

    def __init__(self, a):
        super().__init__()
        self.register_buffer("a", torch.as_tensor(a, dtype=torch.float64))

    def forward(self, x):
        return (self.a * x.square() / 2 + x.pow(4)).sum(1)


def _quartic_law(a: float, n: int, g: torch.Generator):
    """Exact draws by inverse CDF on a fine grid, and the exact 2nd and 4th moments."""
    grid = torch.linspace(-4, 4, 200_001, dtype=torch.float64)
    dens = torch.exp(-(a * grid.square() / 2 + grid.pow(4)))
    cdf = torch.cumsum(dens, 0)
    cdf = cdf / cdf[-1]
    m2 = float((dens * grid.square()).sum() / dens.sum())
    m4 = float((dens * grid.pow(4)).sum() / dens.sum())
    u = torch.rand(n, generator=g, dtype=torch.float64)
    i = torch.searchsorted(cdf, u).clamp(1, grid.numel() - 1)
    w = (u - cdf[i - 1]) / (cdf[i] - cdf[i - 1])
    return grid[i - 1] + w * (grid[i] - grid[i - 1]), m2, m4


def test_exact_on_an_anharmonic_target():
    """4,000 chains from exact draws of exp(−Σ a x²/2 − x⁴) (a = 0.5, 4, 20: scales ~0.2..0.8),
    8 transitions at a step where the acceptance statistic is ~0.55 (and some trees diverge, in
    the stiff coordinate's walls): per coordinate the mean (0)
    and the second moment stay within 4 standard errors — for the second moment the SE of a
    mean of x² is sqrt((m4 − m2²)/B), with the exact moments by quadrature."""
    a = [0.5, 4.0, 20.0]
    g = gen(13)
    b = 4000
    cols, moments = [], []
    for ai in a:
        x, m2, m4 = _quartic_law(ai, b, g)
        cols.append(x)
        moments.append((m2, m4))
    x0 = torch.stack(cols, 1)
    s = make(step_size=0.4)
    r = s.run(Quartic(a), x0, 8, generator=gen(14))
    stat = float(r.state.extra["accept_stat"].mean())
    assert 0.4 < stat < 0.7, stat
    assert float(r.accept_rate) < 0.9 and bool(r.divergent.any())
    for i, (m2, m4) in enumerate(moments):
        xi = r.x[:, i]
        assert abs(float(xi.mean())) < 4 * math.sqrt(m2 / b), (i, float(xi.mean()))
        se2 = math.sqrt((m4 - m2**2) / b)
        assert abs(float(xi.square().mean()) - m2) < 4 * se2, (i, float(xi.square().mean()), m2)
