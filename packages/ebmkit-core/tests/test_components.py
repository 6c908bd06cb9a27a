"""Built-in energies and initializers against their contracts."""

import pytest
import torch
from ebmkit.errors import ConfigError


@pytest.mark.parametrize("name, res, n_convs", [("convnet32", 32, 5), ("convnet64", 64, 6), ("convnet128", 128, 7)])
def test_shortrun_convnets_follow_the_appendix_tables(registry, name, res, n_convs):
    e = registry.create("energy", name, {"nf": 8}, (3, res, res))
    convs = [m for m in e.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == n_convs
    assert (convs[0].kernel_size, convs[0].stride, convs[0].out_channels) == ((3, 3), (1, 1), 8)
    widths = [c.out_channels for c in convs[1:-1]]
    assert widths == [16, 32, 64, 64, 64][: n_convs - 2]
    assert all(c.kernel_size == (4, 4) and c.stride == (2, 2) for c in convs[1:-1])
    assert convs[-1].out_channels == 1 and convs[-1].kernel_size == (4, 4)
    u = e(torch.randn(5, 3, res, res))
    assert u.shape == (5,)


@pytest.mark.parametrize("name, shape", [("nonlocal", (3, 32, 32)), ("nonlocal", (1, 64, 64)), ("mlp", (2,)), ("mlp", (1,))])
def test_other_energies_map_batches_to_vectors(registry, name, shape):
    e = registry.create("energy", name, {}, shape)
    x = torch.randn(4, *shape, requires_grad=True)
    u = e(x)
    assert u.shape == (4,)
    (g,) = torch.autograd.grad(u.sum(), x)
    assert g.shape == x.shape and torch.isfinite(g).all()


def test_wrong_shape_is_a_one_line_config_error(registry):
    with pytest.raises(ConfigError, match=r"convnet64' expects images \[C, 64, 64\]"):
        registry.create("energy", "convnet64", {}, (1, 32, 32))


def test_scale_multiplies_the_output(registry):
    torch.manual_seed(0)
    a = registry.create("energy", "convnet32", {"nf": 4}, (1, 32, 32))
    b = registry.create("energy", "convnet32", {"nf": 4, "scale": 3.0}, (1, 32, 32))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(b(x), 3 * a(x))


def test_noise_init_ranges(registry):
    g = torch.Generator().manual_seed(0)
    x = registry.create("initializer", "noise", {}, (3, 8, 8)).sample(1000, generator=g)
    assert x.shape == (1000, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    # uniform on [-1, 1]: mean 0, var 1/3; 192,000 values -> s.e. of the mean 0.0013
    assert abs(x.mean().item()) < 5 * (1 / 3) ** 0.5 / x.numel() ** 0.5
    y = registry.create("initializer", "noise", {"distribution": "gaussian", "std": 2.0}, (4,)).sample(20000, generator=g)
    assert abs(y.std().item() - 2.0) < 5 * 2.0 / (2 * y.numel()) ** 0.5


def test_data_init_is_contrastive_divergence(registry):
    init = registry.create("initializer", "data", {}, (2,))
    data = torch.randn(8, 2)
    torch.testing.assert_close(init.sample(8, data=data), data)
    with pytest.raises(ValueError, match="needs the data batch"):
        init.sample(8)


def test_persistent_buffer_reads_and_writes_the_same_slots(registry):
    init = registry.create("initializer", "persistent", {"buffer_size": 50}, (3,))
    g = torch.Generator().manual_seed(1)
    init.setup(generator=g)
    before = init.buffer.clone()
    x = init.sample(10, generator=g)
    idx = init._idx.clone()
    torch.testing.assert_close(x, before[idx])
    init.update(torch.full_like(x, 7.0))
    assert (init.buffer[idx] == 7).all()
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[idx] = False
    torch.testing.assert_close(init.buffer[untouched], before[untouched])
    # tensors-only state round-trips
    other = registry.create("initializer", "persistent", {"buffer_size": 50}, (3,))
    other.load_state_dict(init.state_dict())
    torch.testing.assert_close(other.buffer, init.buffer)


def test_persistent_rejuvenation_rate(registry):
    init = registry.create("initializer", "persistent", {"buffer_size": 4000, "rejuvenation": 0.25}, (1,))
    g = torch.Generator().manual_seed(2)
    init.setup(generator=g)
    init.buffer.fill_(5.0)  # anything not 5 was restarted from noise
    x = init.sample(4000, generator=g)
    frac = (x != 5).float().mean().item()
    # binomial(4000, 0.25): s.e. = sqrt(.25*.75/4000) = 0.0068; allow 4 s.e.
    assert abs(frac - 0.25) < 4 * 0.0068


def test_persistent_from_data(registry):
    init = registry.create("initializer", "persistent", {"buffer_size": 20, "init_from": "data"}, (2,))
    data = torch.arange(40.0).reshape(20, 2)
    init.setup(draw_data=lambda n: data[:n])
    torch.testing.assert_close(init.buffer, data)
