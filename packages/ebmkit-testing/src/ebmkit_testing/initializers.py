"""Conformance suite for initializers: ``sample(n) -> [n, *shape]``, reproducible with a
generator, ``update`` accepts end states, ``state_dict`` is tensors only and round-trips (a
restored initializer goes on exactly like the original: resume), and the properties the
trainer, the loader and the evaluators read: ``needs_data``, ``prior``, ``capacity`` and
``standalone()``."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from ebmkit.errors import EbmkitError
from ebmkit.interfaces import Initializer, Prior
from torch import Tensor

from ._base import ComponentConformance, require


class InitializerConformance(ComponentConformance):
    """Subclass and set ``component`` (and ``shape``, ``config``)::

        class TestMyInit(InitializerConformance):
            component = MyInit
            config = {"buffer_size": 64}

    ``random = False`` declares an initializer that is deterministic given its data. The suite
    passes a data batch to ``sample`` everywhere except in the checks of ``needs_data`` (the
    component's own class attribute) and ``standalone()``. ``resume_iterations`` (3): how many
    iterations the resume check follows the original and the restored initializer.
    """

    kind = "initializer"
    shape: ClassVar[tuple[int, ...]] = (2,)
    n: ClassVar[int] = 8
    random: ClassVar[bool] = True
    resume_iterations: ClassVar[int] = 3

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

    def end_states(self, x: Tensor, iteration: int) -> Tensor:
        """Stand-in end states of chains started at ``x`` (deterministic, in the data range)."""
        return torch.tanh(x + 0.3 * (iteration + 1))

    def test_resume_after_update_continues_identically(self):
        """What resuming a run relies on. A checkpoint is written between iterations, after
        ``setup`` + ``sample`` + ``update``; a resumed run builds a fresh initializer, loads that
        ``state_dict()`` (no ``setup``) and goes on with the saved generator state. The restored
        initializer must then go on exactly like the original, iteration after iteration: the
        same generator state draws the same chain starts, and the same end states leave the same
        ``state_dict()``. A state the initializer keeps but does not save (per-chain ages, a read
        cursor) passes a single draw after the round trip and diverges here."""
        init, g = self._ready()
        init.update(self.end_states(self._sample(init, g), 0))
        other = self.make_initializer()
        other.load_state_dict({k: v.detach().clone() for k, v in init.state_dict().items()})
        g_other = torch.Generator().set_state(g.get_state())
        for it in range(1, self.resume_iterations + 1):
            data = self.make_data(self.n)
            a = init.sample(self.n, data=data.clone(), generator=g, device="cpu")
            b = other.sample(self.n, data=data.clone(), generator=g_other, device="cpu")
            require(torch.equal(a, b),
                    f"iteration {it} after load_state_dict(state_dict()): the restored initializer"
                    " draws other chain starts than the original with the same generator state;"
                    " state_dict() must hold everything sample() and update() depend on (resume"
                    " diverges otherwise)")
            end = self.end_states(a, it)
            init.update(end.clone())
            other.update(end.clone())
            sa, sb = init.state_dict(), other.state_dict()
            require(sorted(sa) == sorted(sb) and all(torch.equal(sa[k], sb[k]) for k in sa),
                    f"iteration {it} after load_state_dict(state_dict()): the same end states"
                    " leave the restored initializer in another state than the original"
                    f" (keys {sorted(sb)} vs {sorted(sa)}); state_dict() must hold everything"
                    " update() depends on")

    # the properties the trainer, the loader and the evaluators read ----------------------------
    def test_needs_data_is_declared_truthfully(self):
        """``needs_data = True``: ``sample`` without data raises a clear error (a ``ValueError``
        or an ``EbmkitError`` saying so, not a ``TypeError`` from indexing ``None``).
        ``needs_data = False``: ``sample`` works without data (after ``setup``)."""
        needs = self.component.needs_data
        require(isinstance(needs, bool), f"`needs_data` is a bool class attribute; got {needs!r}")
        init, g = self._ready()
        if needs:
            try:
                init.sample(self.n, generator=g, device="cpu")
            except (ValueError, EbmkitError) as exc:
                require(str(exc).strip(), "the error for a missing data batch says what is missing")
                return
            except Exception as exc:  # noqa: BLE001 - the wrong kind of error
                raise AssertionError(
                    "ebmkit contract: with needs_data = True, sample() without data raises a clear"
                    " ValueError (or ebmkit error) saying it needs the data batch; got"
                    f" {type(exc).__name__}: {exc}") from exc
            raise AssertionError("ebmkit contract: needs_data = True, but sample() without data"
                                 " worked: declare needs_data = False (then standalone sampling"
                                 " uses this initializer itself)")
        try:
            x = init.sample(self.n, generator=g, device="cpu")
        except Exception as exc:  # noqa: BLE001 - reported as a contract failure
            raise AssertionError(
                "ebmkit contract: needs_data = False, so sample(n) must work without a data batch"
                f" (or declare needs_data = True); it raised {type(exc).__name__}: {exc}") from exc
        require(isinstance(x, Tensor) and tuple(x.shape) == (self.n, *self.shape),
                f"sample(n) without data returns [n, *shape] = {(self.n, *self.shape)}")

    def test_prior(self):
        """``prior`` is ``None`` or an :class:`ebmkit.Prior` of this shape, whose ``sample(n)`` is
        ``[n, *shape]`` with finite ``log_prob``."""
        for init in (self.make_initializer(), self._ready()[0]):
            prior = init.prior
            if prior is None:
                continue
            require(isinstance(prior, Prior),
                    f"`prior` is None or an ebmkit.Prior (the noise law p0 of fresh chains); got"
                    f" {type(prior).__name__}")
            require(tuple(prior.shape) == tuple(self.shape),
                    f"the prior's shape is one example's shape {tuple(self.shape)}; got"
                    f" {tuple(prior.shape)}")
            z = prior.sample(self.n, generator=torch.Generator().manual_seed(0))
            require(tuple(z.shape) == (self.n, *self.shape),
                    f"prior.sample(n) is [n, *shape]; got {tuple(z.shape)}")
            lp = prior.log_prob(z)
            require(tuple(lp.shape) == (self.n,) and bool(torch.isfinite(lp).all()),
                    "prior.log_prob of the prior's own draws is finite, one value per draw")

    def test_capacity(self):
        """``capacity`` is ``None`` (any number of chains) or a positive int, and ``sample``
        returns that many chains."""
        init, g = self._ready()
        cap = init.capacity
        require(cap is None or (isinstance(cap, int) and not isinstance(cap, bool) and cap > 0),
                f"`capacity` is None or a positive int (the most chains one sample() call can"
                f" return); got {cap!r}")
        if cap is None:
            return
        x = init.sample(cap, data=self.make_data(cap), generator=g, device="cpu")
        require(tuple(x.shape) == (cap, *self.shape),
                f"sample(capacity) returns capacity = {cap} chains; got {tuple(x.shape)}")

    def test_standalone(self):
        """``standalone()`` (chain starts for a trained model: ``ebmkit sample``, ``ebmkit.load``)
        returns an Initializer whose ``sample(n)`` works without data, for a fresh initializer
        (a model file alone) and for one that was set up (a restored run), in the dtype of the
        chain starts it gives in training."""
        dtype = self._sample(*self._ready()).dtype
        for what, init in (("a fresh", self.make_initializer()), ("a set-up", self._ready()[0])):
            alone = init.standalone()
            require(isinstance(alone, Initializer),
                    f"standalone() of {what} initializer returns an ebmkit.Initializer; got"
                    f" {type(alone).__name__}")
            n = min(self.n, alone.capacity or self.n)
            try:
                x = alone.sample(n, generator=torch.Generator().manual_seed(1), device="cpu")
            except Exception as exc:  # noqa: BLE001 - reported as a contract failure
                raise AssertionError(
                    f"ebmkit contract: standalone() of {what} initializer must start chains"
                    " without data (fall back to the prior when this initializer cannot);"
                    f" sample() raised {type(exc).__name__}: {exc}") from exc
            require(isinstance(x, Tensor) and tuple(x.shape) == (n, *self.shape),
                    f"standalone().sample(n) returns [n, *shape] = {(n, *self.shape)}")
            require(x.dtype == dtype and bool(torch.isfinite(x).all()),
                    f"standalone chain starts are finite, in the dtype of the training starts"
                    f" ({dtype}); got {x.dtype}")
