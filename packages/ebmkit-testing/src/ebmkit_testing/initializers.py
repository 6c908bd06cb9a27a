"""Conformance suite for initializers: ``sample(n) -> [n, *shape]``, reproducible with a
generator, ``update`` accepts end states, ``state_dict`` is tensors only and round-trips."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from ._base import ComponentConformance, require


class InitializerConformance(ComponentConformance):
    """Subclass and set ``component`` (and ``shape``, ``config``)::

        class TestMyInit(InitializerConformance):
            component = MyInit
            config = {"buffer_size": 64}

    ``random = False`` declares an initializer that is deterministic given its data.
    ``needs_data = True`` says ``sample`` needs the data batch (the suite always passes one).
    """

    kind = "initializer"
    shape: ClassVar[tuple[int, ...]] = (2,)
    n: ClassVar[int] = 8
    random: ClassVar[bool] = True

    def make_initializer(self) -> Any:
        return self.component(self.make_config(), tuple(self.shape))

    def make_data(self, n: int) -> Tensor:
        g = torch.Generator().manual_seed(7)
        return torch.rand((n, *self.shape), generator=g) * 2 - 1

    def _ready(self, seed: int = 0) -> tuple[Any, torch.Generator]:
        init = self.make_initializer()
        g = torch.Generator().manual_seed(seed)
        init.setup(draw_data=self.make_data, generator=g, device="cpu")
        return init, g

    def _sample(self, init: Any, g: torch.Generator, n: int | None = None) -> Tensor:
        n = self.n if n is None else n
        return init.sample(n, data=self.make_data(n), generator=g, device="cpu")

    def test_sample_shape_and_range(self):
        init, g = self._ready()
        x = self._sample(init, g)
        require(isinstance(x, Tensor) and tuple(x.shape) == (self.n, *self.shape),
                f"sample(n) returns [n, *shape] = {(self.n, *self.shape)};"
                f" got {tuple(x.shape) if isinstance(x, Tensor) else type(x)}")
        require(x.is_floating_point() and torch.isfinite(x).all(),
                "chain starts are finite floating-point tensors")
        require(not x.requires_grad, "chain starts carry no autograd graph")

    def test_reproducible_with_generator(self):
        a = self._sample(*self._ready(seed=3))
        b = self._sample(*self._ready(seed=3))
        require(torch.equal(a, b), "all randomness comes from the `generator` argument: the same"
                " seed gives the same chain starts (do not use the global RNG)")
        if self.random:
            c = self._sample(*self._ready(seed=4))
            require(not torch.equal(a, c), "different generator seeds give different chain starts"
                    " (set `random = False` if the initializer is deterministic by design)")

    def test_does_not_alias_data(self):
        init, g = self._ready()
        data = self.make_data(self.n)
        x = init.sample(self.n, data=data, generator=g, device="cpu")
        x += 1.0
        require(torch.equal(data, self.make_data(self.n)),
                "sample() must not return a view of the data batch: chains write to their states")

    def test_update_accepts_end_states(self):
        init, g = self._ready()
        x = self._sample(init, g)
        init.update(x + 0.5)  # must not raise
        y = self._sample(init, g)
        require(tuple(y.shape) == tuple(x.shape), "after update(), sample() keeps working")

    def test_state_dict_is_tensors_and_round_trips(self, tmp_path):
        from safetensors.torch import load_file, save_file

        init, g = self._ready()
        x = self._sample(init, g)
        init.update(x + 0.25)
        sd = init.state_dict()
        require(isinstance(sd, dict) and all(isinstance(v, Tensor) for v in sd.values()),
                "state_dict() returns {name: Tensor} only (stored with safetensors, never pickled)")
        path = tmp_path / "init.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        other = self.make_initializer()
        other.load_state_dict(load_file(str(path)))
        a = init.sample(self.n, data=self.make_data(self.n),
                        generator=torch.Generator().manual_seed(9), device="cpu")
        b = other.sample(self.n, data=self.make_data(self.n),
                         generator=torch.Generator().manual_seed(9), device="cpu")
        require(torch.equal(a, b), "load_state_dict(state_dict()) restores the initializer: the"
                " same generator then gives the same chain starts (resume depends on it)")
