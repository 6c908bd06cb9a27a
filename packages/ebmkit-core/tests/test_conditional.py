"""Labels and conditional energies in core: EBM.sample(n, y=...) samples p(x | y) through a
closure (samplers unchanged), class grids, DataSource.n_classes, labels kept by shards."""

from __future__ import annotations

import math

import ebmkit
import pytest
import torch
from ebmkit import ConfigError
from ebmkit.interfaces import classes_of
from torch import nn

MU = (-2.0, 3.0, 0.5)


class GaussClasses(nn.Module):
    """U(x, y) = (x - mu_y)^2 / (2 s^2) on R^1 (three classes), U(x) the marginal."""

    n_classes = 3

    def __init__(self, s: float = 0.5):
        super().__init__()
        self.mu = nn.Parameter(torch.tensor(MU))
        self.s = s
        self.shape = (1,)

    def forward(self, x, y=None):
        joint = (x - self.mu[None, :]).pow(2) / (2 * self.s**2)  # [B, 3]
        if y is None:
            return -torch.logsumexp(-joint, dim=1)
        return joint.gather(1, y.reshape(-1, 1)).squeeze(1)


def _model():
    return ebmkit.model_from(GaussClasses(), sampler={"name": "mala", "steps": 150,
                                                      "step_size": 0.4, "adapt_steps": 0})


def test_conditional_samples_follow_p_x_given_y():
    """MALA on the closure x -> U(x, y) is exact for N(mu_y, s^2): the mean and variance of 3,000
    chains per class agree within 4 Monte-Carlo standard errors."""
    ebm = _model()
    n, s = 3000, 0.5
    for c, mu in enumerate(MU):
        x = ebm.sample(n, y=c, seed=c).reshape(-1).double()
        se_mean = s / math.sqrt(n)
        assert abs(float(x.mean()) - mu) < 4 * se_mean, (c, float(x.mean()))
        se_var = s**2 * math.sqrt(2 / (n - 1))
        assert abs(float(x.var()) - s**2) < 4 * se_var, (c, float(x.var()))


def test_mixed_classes_and_info_energies_are_conditional():
    ebm = _model()
    y = torch.tensor([0, 1, 2, 1])
    x, info = ebm.sample(4, y=y, steps=3, seed=0, return_info=True)
    with torch.no_grad():
        torch.testing.assert_close(info.energies, ebm.energy(x, y=y))
    assert x.shape == (4, 1)


def test_unconditional_sampling_is_unchanged():
    ebm = _model()
    a = ebm.sample(8, steps=5, seed=1)
    b = ebm.sample(8, steps=5, seed=1, y=None)
    assert torch.equal(a, b)


@pytest.mark.parametrize("y,match", [
    (3, r"y = 3 is not a class of this model: classes are 0 \.\. 2"),
    ([0, 1], "y holds 2 classes but n=4 samples"),
    (torch.tensor([0.0, 1, 1, 1]), "class indices"),
    ("a", "y must be a class index"),
    (True, "y must be a class index"),
])
def test_bad_y_is_one_line(y, match):
    with pytest.raises(ConfigError, match=match) as exc:
        _model().sample(4, y=y, steps=1)
    assert "\n" not in str(exc.value)


def test_y_for_an_unconditional_energy_is_refused():
    ebm = ebmkit.model_from(nn.Sequential(nn.Linear(1, 1), nn.Flatten(0)), shape=(1,))
    assert ebm.n_classes is None and classes_of(ebm.energy) is None
    with pytest.raises(ConfigError, match="unconditional"):
        ebm.sample(2, y=0, steps=1)
    with pytest.raises(ConfigError, match="needs a conditional energy"):
        ebm.class_grid(2)


class ImageClasses(nn.Module):
    n_classes = 2

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))
        self.shape = (1, 4, 4)

    def forward(self, x, y=None):
        joint = (x.flatten(1).mean(1, keepdim=True) - torch.tensor([-0.5, 0.5])).pow(2) * 50 + self.w
        if y is None:
            return -torch.logsumexp(-joint, 1)
        return joint.gather(1, y[:, None]).squeeze(1)


def test_class_grid_is_a_row_per_class(tmp_path):
    from PIL import Image

    ebm = ebmkit.model_from(ImageClasses(), sampler={"name": "langevin", "steps": 100,
                                                     "grad_coef": 0.05, "noise_std": 0.01})
    x = ebm.class_grid(3, seed=0, path=tmp_path / "grid.png")
    assert x.shape == (6, 1, 4, 4)
    means = x.flatten(1).mean(1)
    assert (means[:3] < 0).all() and (means[3:] > 0).all()  # row 0 class 0 (dark), row 1 class 1
    img = Image.open(tmp_path / "grid.png")
    assert img.size == (3 * 6 + 2, 2 * 6 + 2)  # 3 columns, 2 rows of 4 px + 2 px padding


def test_datasets_say_how_many_classes():
    reg = ebmkit.plugins.build_registry()
    assert reg.create("dataset", "mnist5k", {}).n_classes == 10
    pytest.importorskip("sklearn")
    d = reg.create("dataset", "digits8", {})
    assert d.n_classes == 10
    assert int(d.open(split="all").tensors[1].max()) == 9
    from ebmkit.interfaces import DataSource

    assert DataSource(None).n_classes is None


def test_shards_keep_labels(tmp_path):
    pytest.importorskip("webdataset")
    from ebmkit.datastream import batch_stream
    from ebmkit.shards import ShardDataset, write_shards

    g = torch.Generator().manual_seed(0)
    xs = torch.rand(12, 1, 8, 8, generator=g) * 2 - 1
    ys = torch.arange(12) % 5
    write_shards(zip(xs, ys.tolist(), strict=True), tmp_path, shard_size=5)
    pattern = str(tmp_path / "train-{000000..000002}.tar")
    plain = ShardDataset(pattern, shuffle=False)
    assert len(next(iter(plain))) == 2  # (x, key) as before
    ds = ShardDataset(pattern, shuffle=False, labels=True)
    got = sorted((int(key), int(y)) for _, y, key in ds)
    assert got == [(i, int(ys[i])) for i in range(12)]
    xb, yb = next(batch_stream(ds, 4, generator=torch.Generator(), labels=True))
    assert xb.shape == (4, 1, 8, 8) and yb.dtype == torch.int64
