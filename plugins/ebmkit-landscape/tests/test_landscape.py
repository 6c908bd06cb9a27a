"""ADELM against known answers: analytic energies whose minima and saddles are known exactly.

Common settings: T = 0.1 (the authors' value), MALA with step 0.03 (the toy model's
ε = 0.125 times √T is 0.04; 0.03 keeps the acceptance high in the sd-0.15 wells, whose
low-temperature width is 0.15·√0.1 ≈ 0.047 per coordinate).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from ebmkit_landscape import LandscapeMap, ad_trials, find_minima, map_landscape, write_figures
from ebmkit_landscape.tree import single_linkage
from landscape_energies import DoubleWell, FourWells, RingOfWells, model

MALA = {"name": "mala", "step_size": 0.03}
T = 0.1


def _eight_wells(**kw):
    gen = torch.Generator().manual_seed(1)
    starts = 1.5 * torch.randn(64, 2, generator=gen)
    return map_landscape(model(RingOfWells()), n_minima=64, starts=starts, sampler=MALA,
                         temperature=T, delta=0.1, seed=0, **kw)


def _check_eight(lmap):
    b = lmap.bracket
    assert b is not None and b["alpha_max"] is not None and b["alpha_min"] < b["alpha_max"]
    lv = lmap.primary
    assert lv.alpha == pytest.approx(b["alpha_min"])
    assert len(lv.basins) == 8
    means = RingOfWells().means
    reps = lmap.minima[[bs.representative for bs in lv.basins]]
    dist = torch.cdist(reps, means)
    nearest = dist.argmin(dim=1)
    assert sorted(nearest.tolist()) == list(range(8))  # each true mode matched once
    assert float(dist.min(dim=1).values.max()) < 0.1
    # every member sits in its basin's well (the basins are the wells)
    for bs in lv.basins:
        wells = torch.cdist(lmap.minima[bs.members], means).argmin(dim=1)
        assert set(wells.tolist()) == {int(nearest[bs.id])}
    # The graph joins the 8 at the ring's saddles, the midpoints between neighbours:
    # U_s = a²/(2σ²) − log 2 = 2.561 (a = sin(π/8) = 0.3827, σ = 0.15; the other wells add
    # < 1e-5). Upper tolerance +0.8 as in the double-well test (transverse thermal excess).
    # Lower: along the path U ≈ U_s − (a²/σ⁴ − 1/σ²)s²/2 = U_s − 122 s² at distance s from the
    # saddle; a MALA step near it moves < (ε²/2)α_max + 4ε = 0.18 (α_max ≈ 124, ε = 0.03), so
    # some state of the crossing lies within s = 0.09 of the saddle: U ≥ U_s − 0.99.
    heights = [m.barrier for m in lv.tree.merges]
    assert len(heights) == 7 and all(2.561 - 0.99 <= h <= 2.561 + 0.8 for h in heights), heights


def test_eight_wells_give_eight_basins_at_the_true_modes():
    """Acceptance: the toy GMM's 8 wells -> 8 basins at α_min (inside the bracket), one per
    true mode, each representative within 0.1 of its mode.

    Why 0.1: a representative is the lowest state its chains visited at T = 0.1, where a well
    is N(μ, T·sd²), sd_T = 0.047 per coordinate; one equilibrium state lies farther than r from
    μ with probability exp(−r²/(2 sd_T²)) = exp(−2.2) = 0.11 at r = 0.1. The lowest state of a
    chain that ran ≥ 30 steps (patience) after its last improvement, with a mixing time of
    (sd_T/ε)² ≈ 2.5 steps, is the closest of ≥ 5 effectively independent states:
    0.11⁵ ≈ 1.6e-5 per basin, 1.3e-4 for any of the 8.

    Why 64 starts: each lands in a given well with probability ≈ 1/8 (Gaussian N(0, 1.5²)
    starts are rotation invariant), so a well is missed with probability (7/8)^64 = 1.9e-4,
    any of the 8 with ≤ 1.5e-3.

    Speed: each new minimum tries only its best-ranked basin (n_targets=1, one level); the
    slow test below runs the defaults (10 targets, 4 levels).
    """
    lmap = _eight_wells(n_alpha=1, n_targets=1)
    _check_eight(lmap)


@pytest.mark.slow
def test_eight_wells_with_the_default_search():
    """The same with the authors' defaults: 10 targets, 3 rounds, 4 levels across the bracket."""
    lmap = _eight_wells()
    _check_eight(lmap)
    assert lmap.n_basins == sorted(lmap.n_basins, reverse=True)
    assert lmap.n_basins[-1] < 8  # α_max of the bracket joins wells


def test_double_well_barrier_matches_the_closed_form_saddle():
    """U = h(x² − 1)² + k y²/2, h = 4: the minimum-energy path crosses the saddle (0, 0) at
    U = h exactly. The AD barrier estimate must lie in [h − 0.02h, h + 0.8].

    Lower bound: any path from x = −1 to x = +1 crosses x = 0. MALA's step is
    −(ε²/2)∇V + εz with ε = 0.03; on the crossing step the magnet's drift is (ε²/2)α = 0.045
    (α = 100) and the slope of U/T vanishes at the saddle, so the two states around the crossing
    are < 0.045 + 4ε = 0.165 apart (4σ of the noise), one of them within 0.083 of x = 0 where
    U ≥ h(1 − 0.083²)² = 0.986h.
    Upper bound: along x, U ≤ h between the minima; the excess comes from the transverse
    k y²/2, which at temperature T is T·χ²₁/2 per state (the magnet only narrows it). Over the
    ≤ 200 states of a trial near the top, P(max > c) ≤ 200·P(χ²₁ > 2c/T); c = 0.8 gives
    200·P(χ²₁ > 16) = 0.013 per trial, and the matrix keeps the lower of the two directions:
    1.6e-4.
    """
    h = 4.0
    gen = torch.Generator().manual_seed(3)
    starts = torch.tensor([[-1.0, 0.0], [1.0, 0.0]]).repeat(4, 1) + 0.2 * torch.randn(8, 2, generator=gen)
    # α = 1: the mapping keeps the wells apart (the slope of U/T reaches 1.54h/T = 62 between
    # them); barrier α = 100 > 62: the magnetized path runs downhill, every trial succeeds.
    lmap = map_landscape(model(DoubleWell(h=h)), n_minima=8, starts=starts, sampler=MALA,
                         temperature=T, delta=0.05, alpha=1.0, barrier_alpha=100.0, seed=0)
    assert len(lmap.basins) == 2
    xs = sorted(float(lmap.minima[b.representative][0]) for b in lmap.basins)
    assert xs[0] == pytest.approx(-1, abs=0.1) and xs[1] == pytest.approx(1, abs=0.1)
    barrier = lmap.barriers[0][1]
    assert barrier == lmap.barriers[1][0]
    assert h - 0.02 * h <= barrier <= h + 0.8, barrier
    assert lmap.tree.merges[0].barrier == pytest.approx(barrier)


def test_ad_trials_fail_without_magnet_and_record_the_path_maximum():
    """A trial cannot cross a barrier of 40 T with α = 0.5 (the patience gives it up), and a
    successful trial's barrier is ≥ max(U_a, U_b) and finite only on success."""
    energy = DoubleWell(h=4.0)
    sampler = model(energy).component("sampler", "mala", {"step_size": 0.03})
    a = torch.tensor([[-1.0, 0.0]]).repeat(16, 1)
    b = torch.tensor([[1.0, 0.0]]).repeat(16, 1)
    gen = torch.Generator().manual_seed(0)
    weak = ad_trials(energy, sampler, a, b, 0.5, temperature=T, delta=0.05, generator=gen)
    assert not weak.success.any() and torch.isinf(weak.barrier).all()
    strong = ad_trials(energy, sampler, a, b, 100.0, temperature=T, delta=0.05, generator=gen)
    assert strong.success.all() and (strong.barrier >= 0).all()
    assert (strong.steps < 5000).all() and (strong.closest <= 0.05).all()


def test_minima_search_keeps_the_lowest_state_and_its_well():
    """The minima chains return the lowest state they visited (its U, recomputed) in the well
    they started in, after at least `patience` steps. With the default patience 30 a shallow
    direction may stay unfinished (y here: drift (ε²/2)·(k/T)·y = 0.018y per step against noise
    0.03), which is the authors' rule; with patience 300 the chain reaches the bottom: at
    equilibrium a state has U < T/2 = 0.05 with probability 1 − e^{−1/2} = 0.39 (U/T ~ χ²₂/2), so
    the lowest of ≥ 300 states is below 0.05 except with probability ≪ 1e-6."""
    energy = DoubleWell(h=4.0)
    sampler = model(energy).component("sampler", "mala", {"step_size": 0.03})
    x0 = torch.tensor([[-0.6, 0.5], [0.7, -0.4]])
    for patience in (30, 300):
        gen = torch.Generator().manual_seed(0)
        res = find_minima(energy, sampler, x0, temperature=T, generator=gen, patience=patience)
        assert res.x[0, 0] < 0 < res.x[1, 0]
        assert torch.allclose(res.energy, energy(res.x), atol=1e-5)
        assert (res.energy < energy(x0)).all() and (res.steps >= patience).all()
    assert (res.energy < 0.05).all() and (res.x[:, 0].abs() - 1).abs().max() < 0.1


def _four_wells(alphas, seed=0):
    gen = torch.Generator().manual_seed(5)
    wells = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]])
    starts = wells.repeat(2, 1) + 0.2 * torch.randn(8, 2, generator=gen)
    return map_landscape(model(FourWells(hx=1.0, hy=4.0)), n_minima=8, starts=starts,
                         sampler=MALA, temperature=T, delta=0.05, alpha=alphas, seed=seed,
                         barrier_alpha=150.0)


def _partition(lmap, level):
    return {frozenset(b.members) for b in level.basins}


def test_basins_merge_monotonically_as_alpha_rises():
    """Four wells, barriers h_x = 1 (across x = 0) and h_y = 4 (across y = 0). The steepest
    slope of U/T on the way over is 1.54·h/T: 15.4 across x, 62 across y. α = 2: no pair joins
    (the magnetized barrier across x is still ≈ 8 in units of T) → 4 basins; α = 30 joins
    across x only (across y the magnetized barrier stays ≈ 13) → 2 basins, the two rows;
    α = 150 > 62 joins all → 1. The partitions are nested: merging only coarsens as α rises."""
    lmap = _four_wells([2.0, 30.0, 150.0])
    assert lmap.n_basins == [4, 2, 1]
    fine, mid, coarse = (_partition(lmap, lv) for lv in lmap.levels)
    for small, big in ((fine, mid), (mid, coarse)):
        assert all(any(s <= b for b in big) for s in small)
    rows = {frozenset(int(i) for i in range(8) if lmap.minima[i, 1] < 0),
            frozenset(int(i) for i in range(8) if lmap.minima[i, 1] > 0)}
    assert mid == rows
    # the disconnectivity graph of the finest level: two merges at ≈ h_x, then one at ≈ h_y
    heights = sorted(m.barrier for m in lmap.primary.tree.merges)
    assert len(heights) == 3
    assert heights[0] == pytest.approx(1.0, abs=0.8) and heights[1] == pytest.approx(1.0, abs=0.8)
    assert heights[2] == pytest.approx(4.0, abs=0.8)


def _double_well_map(seed, barrier_alpha):
    gen = torch.Generator().manual_seed(3)
    starts = torch.tensor([[-1.0, 0.0], [1.0, 0.0]]).repeat(3, 1) + 0.2 * torch.randn(6, 2, generator=gen)
    return map_landscape(model(DoubleWell()), n_minima=6, starts=starts, sampler=MALA,
                         temperature=T, delta=0.05, alpha=1.0, barrier_alpha=barrier_alpha,
                         seed=seed, rounds=1, ad_steps=300)


def test_same_seed_same_map_and_json(tmp_path):
    a, b = _double_well_map(7, 1.0), _double_well_map(7, 1.0)
    da, db = a.to_dict(), b.to_dict()
    da.pop("timings"), db.pop("timings")
    assert da == db and torch.equal(a.minima, b.minima)
    # barrier α = 1 cannot cross: the barrier stays unknown (inf), the graph is a forest
    assert math.isinf(a.barriers[0][1]) and sorted(a.tree.roots) == [0, 1]
    text = json.dumps(da, allow_nan=False)  # inf is written as null
    level = json.loads(text)["levels"][0]
    assert level["n_basins"] == 2 and level["barriers"][0][1] is None
    assert level["tree"]["merges"] == [] and level["tree"]["roots"] == [0, 1]
    path = a.save(tmp_path)
    doc = json.loads(path.read_text())
    assert doc["format"] == "ebmkit.landscape/1" and doc["params"]["seed"] == 7
    assert doc["minima"] == a.minima.tolist() and (tmp_path / "minima.safetensors").is_file()
    back = LandscapeMap.load(tmp_path)  # the saved map round-trips (figures can be redrawn)
    assert back.to_dict() == a.to_dict() and torch.equal(back.minima, a.minima)
    figs = write_figures(a, tmp_path, DoubleWell())
    assert set(figs) == {"tree", "sizes", "contour"}
    assert all(p.stat().st_size > 1000 for p in figs.values())
    c = _double_well_map(8, 1.0)
    assert not torch.equal(c.minima, a.minima)  # the seed drives the chains


def test_single_linkage_forest():
    inf = math.inf
    bar = [[0.0, 1.0, inf, inf], [1.0, 0.5, inf, inf], [inf, inf, 0.2, 3.0], [inf, inf, 3.0, 0.1]]
    tree = single_linkage(bar, [0.0, 0.5, 0.2, 0.1])
    assert [(m.children, m.barrier) for m in tree.merges] == [((0, 1), 1.0), ((2, 3), 3.0)]
    assert sorted(tree.roots) == [4, 5]  # a forest: no barrier joins {0, 1} and {2, 3}
    assert tree.groups_below(2.0) == [[0, 1], [2], [3]]
    order = tree.leaves_in_order()
    assert sorted(order) == [0, 1, 2, 3] and abs(order.index(0) - order.index(1)) == 1


def test_image_shaped_energy_figures(tmp_path):
    """Image energies get the member grid and image columns under the tree."""

    class Pixels(torch.nn.Module):
        def forward(self, x):  # two wells: all pixels at −0.5 or all at +0.5
            f = x.flatten(1)
            return 20 * torch.minimum((f - 0.5).square().sum(1), (f + 0.5).square().sum(1))

    import ebmkit

    ebm = ebmkit.model_from(Pixels(), "mala", shape=(1, 4, 4))
    lmap = map_landscape(ebm, n_minima=6, starts="noise", sampler={"name": "mala",
                         "step_size": 0.02}, alpha=1.0, ad_steps=300, minima_steps=300, seed=0)
    assert isinstance(lmap, LandscapeMap) and 1 <= len(lmap.basins) <= 6
    figs = write_figures(lmap, tmp_path)
    assert set(figs) == {"tree", "sizes", "members"}
