"""Correctness of the numbers: Fréchet distance against closed forms, FID/KID of a set against
itself and against shifted sets, KID's unbiasedness, and equality with an independent textbook
implementation (numpy / scipy ``sqrtm``) on the same features. All with the weight-free
``ebmkit-pixels`` extractor, registered through torch-fidelity's ``register_feature_extractor``."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from ebmkit_fid import PIXELS, Setup, score, to_uint8
from ebmkit_fid.fidelity import _tf, frechet_distance, pixel_extractor_class


def _images(n, seed, shift=0.0, channels=1, size=16):
    """Smooth random images: a low-resolution Gaussian field upsampled, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, channels, 4, 4, generator=g) * 0.5 + shift
    x = torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)
    return x.clamp(-1, 1)


def _setup(**kw):
    return Setup(feature_extractor=PIXELS, **{"kid_subset_size": 100, **kw})


def _features(x):
    """The extractor's features of ``x``, computed outside torch-fidelity's pipeline."""
    net = pixel_extractor_class()(PIXELS, ["pixels"])
    with torch.no_grad():
        (f,) = net(to_uint8(x))
    return f.double().numpy()


def test_extractor_is_registered_with_torch_fidelity():
    tf = _tf()
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    assert FEATURE_EXTRACTORS_REGISTRY[PIXELS].__name__ == "PixelFeatures"
    assert "inception-v3-compat" in FEATURE_EXTRACTORS_REGISTRY
    assert tf is not None


# -- Fréchet distance: closed forms ------------------------------------------------------------
def test_frechet_distance_diagonal_gaussians_closed_form():
    # N(mu1, diag a) vs N(mu2, diag b): FID = |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2
    rng = np.random.default_rng(0)
    d = 20
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    exact = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(exact, rel=1e-9)


def test_frechet_distance_general_gaussians_closed_form():
    # tr (S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), the symmetric form, via scipy sqrtm
    rng = np.random.default_rng(1)
    d = 12
    m1, m2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = m1 @ m1.T + 0.1 * np.eye(d), m2 @ m2.T + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    r1 = scipy.linalg.sqrtm(s1).real
    exact = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(r1 @ s2 @ r1).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(exact, rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8 * np.trace(s1))


# -- sets of images ----------------------------------------------------------------------------
def test_fid_kid_of_a_set_against_itself_and_shifted_sets():
    x = _images(300, 0)
    same = score(x, x, ["fid", "kid"], _setup())
    # identical statistics: FID is 0 up to float error in the eigenvalues (tr Σ ≈ 10 here)
    assert abs(same["fid"]) < 1e-6
    # KID draws its two subsets independently from the same 300 images, so they share items
    # and E[mean k(X, Y)] includes the diagonal: given the set (N items, kernel matrix k with
    # total S and trace D), E[KID] = 2 [(S − D)/(N(N−1)) − S/N²] exactly, slightly below 0. The
    # subsets are i.i.d. given the set, so the mean of 100 is within 4 SE = 4 std/√100 of it.
    f = _features(x)
    k = (f @ f.T / f.shape[1] + 1) ** 3
    n, big_s, big_d = len(f), k.sum(), np.trace(k)
    expected = 2 * ((big_s - big_d) / (n * (n - 1)) - big_s / n**2)
    assert abs(same["kid_mean"] - expected) < 4 * same["kid_std"] / np.sqrt(100)
    near = score(_images(300, 1, shift=0.2), x, ["fid", "kid"], _setup())
    far = score(_images(300, 1, shift=0.5), x, ["fid", "kid"], _setup())
    assert 0 < near["fid"] < far["fid"]
    assert 0 < near["kid_mean"] < far["kid_mean"]
    assert abs(same["kid_mean"]) < 0.05 * near["kid_mean"]  # "≈ 0" on the scale of a shift
    # a shift s of every pixel moves the pooled-pixel mean by ~s in each of 192 dimensions
    # (less where clamping at ±1 bites): FID ≥ |Δμ|² ≈ 192 s² up to clamping; at s = 0.5: ≈ 48
    assert far["fid"] > 0.5 * 192 * 0.5**2


def test_fid_equals_textbook_implementation():
    x, y = _images(400, 2), _images(300, 3, shift=0.1)
    fx, fy = _features(x), _features(y)
    mu1, mu2 = fx.mean(0), fy.mean(0)
    s1, s2 = np.cov(fx, rowvar=False), np.cov(fy, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    textbook = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    got = score(x, y, ["fid"], _setup())["fid"]
    assert got == pytest.approx(textbook, rel=1e-4)


def _mmd2_unbiased(a, b):
    d = a.shape[1]
    k = lambda u, v: (u @ v.T / d + 1) ** 3  # noqa: E731 - KID's cubic kernel
    m = len(a)
    kxx, kyy, kxy = k(a, a), k(b, b), k(a, b)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean())


def test_kid_equals_textbook_implementation():
    x, y = _images(400, 4), _images(300, 5, shift=0.15)
    fx, fy = _features(x), _features(y)
    m, subsets, seed = 100, 20, 7
    rng = np.random.RandomState(seed)  # torch-fidelity's subset draws, replayed
    vals = []
    for _ in range(subsets):
        i = rng.choice(len(fx), m, replace=False)
        j = rng.choice(len(fy), m, replace=False)
        vals.append(_mmd2_unbiased(fx[i], fy[j]))
    got = score(x, y, ["kid"], _setup(kid_subset_size=m, kid_subsets=subsets, seed=seed))
    assert got["kid_mean"] == pytest.approx(np.mean(vals), rel=1e-4)
    assert got["kid_std"] == pytest.approx(np.std(vals), rel=1e-3)


def test_kid_is_unbiased():
    # R independent pairs of sets from ONE distribution: the population MMD² is 0, so the mean
    # of R independent KIDs is 0 within 4 standard errors (SE = sd/sqrt(R) of the R values). A
    # biased (V-statistic) estimate adds ~2(E k(x,x) − E k(x,y))/m > 0 per subset: the same test
    # must reject it, which checks the test has power.
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(11)
    R, n, d, m = 40, 120, 8, 40
    kid, biased = [], []
    for r in range(R):
        fx = rng.normal(size=(n, d)).astype(np.float32)
        fy = rng.normal(size=(n, d)).astype(np.float32)
        out = kid_features_to_metric(torch.from_numpy(fx), torch.from_numpy(fy), kid_subsets=5,
                                     kid_subset_size=m, verbose=False, rng_seed=r)
        kid.append(out["kernel_inception_distance_mean"])
        a, b = fx[:m].astype(np.float64), fy[:m].astype(np.float64)
        kxx = (a @ a.T / d + 1) ** 3
        kyy = (b @ b.T / d + 1) ** 3
        kxy = (a @ b.T / d + 1) ** 3
        biased.append(kxx.mean() + kyy.mean() - 2 * kxy.mean())
    kid, biased = np.array(kid), np.array(biased)
    se = kid.std(ddof=1) / np.sqrt(R)
    assert abs(kid.mean()) < 4 * se, (kid.mean(), se)
    assert biased.mean() > 4 * biased.std(ddof=1) / np.sqrt(R)


def test_isc_and_prc_bounds():
    x = _images(200, 6)
    out = score(x, x, ["isc", "prc"], _setup())
    assert 1.0 <= out["isc_mean"] <= 10.0  # IS lies in [1, number of classes]
    assert out["precision"] == pytest.approx(1.0) and out["recall"] == pytest.approx(1.0)
    far = score(_images(200, 7, shift=0.8), x, ["prc"], _setup())
    assert far["precision"] < 0.5


def test_reference_statistics_are_cached_by_content(monkeypatch, tmp_path):
    root = tmp_path / "stats"
    x, y = _images(200, 8), _images(200, 9)
    first = score(x, y, ["fid"], _setup(cache_root=root))
    refs = sorted(p.name for p in root.glob("ref-*"))
    assert refs and all(first["setup"]["reference_sha256"][:20] in r for r in refs)
    # second run: the reference's features must not be extracted again
    import torch_fidelity.utils as tfu

    calls = []
    real = tfu.get_featuresdict_from_dataset
    monkeypatch.setattr(tfu, "get_featuresdict_from_dataset",
                        lambda inp, *a, **k: calls.append(len(inp)) or real(inp, *a, **k))
    again = score(_images(200, 10), y, ["fid"], _setup(cache_root=root))
    assert calls == [200]  # the new samples only
    assert again["setup"]["reference_sha256"] == first["setup"]["reference_sha256"]


def test_non_images_and_small_sets_are_one_line_errors():
    from ebmkit import ConfigError, DataError

    with pytest.raises(DataError, match="need images") as e:
        score(torch.randn(50, 2), torch.randn(50, 2), ["fid"], _setup())
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="kid_subset_size=100") as e:
        score(_images(50, 0), _images(500, 1), ["kid"], _setup())
    assert "\n" not in str(e.value)
