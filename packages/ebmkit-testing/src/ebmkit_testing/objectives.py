"""Conformance suite for objectives: ``objective(energy, x_pos, x_neg, labels=) ->
ObjectiveOutput`` with a finite scalar loss differentiable w.r.t. the energy's parameters,
energies ``[B]``, scalar metrics; the energy called only through the function it is given (so
DDP reduces the gradient), no ``backward`` and no optimizer step; the inputs' device and dtype
kept; labels for the objectives that declare ``needs_labels``."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pytest
import torch
from ebmkit.errors import EbmkitError
from ebmkit.interfaces import ObjectiveOutput, classes_of
from torch import Tensor, nn

from ._base import ComponentConformance, require


class SmallEnergy(nn.Module):
    """The suite's default energy: a two-layer MLP ``[B, *shape] -> [B]`` (several parameter
    tensors, a non-linear map, so gradient checks mean something)."""

    def __init__(self, shape: tuple[int, ...], hidden: int = 8):
        super().__init__()
        d = math.prod(shape)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(-1)


class Replica(nn.Module):
    """Stands in for ``DistributedDataParallel`` around ``module``: ``forward`` evaluates the
    module with the replica's own copy of its parameters (``replica_parameters``) and counts the
    calls. A gradient that reaches the copy went through the function the objective was given;
    one that reaches ``module``'s own parameters went around it (DDP would not reduce it)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.replica_parameters = {n: p.detach().clone().requires_grad_(True)
                                   for n, p in module.named_parameters()}
        self.calls = 0
        k = classes_of(module)
        if k is not None:  # a conditional energy stays one through the wrapper (as through DDP)
            self.n_classes = k

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        self.calls += 1  # further arguments pass through, as DDP's do (a conditional energy's y)
        return torch.func.functional_call(self.module, self.replica_parameters, (x, *args), kwargs)


def _grads(loss: Tensor, params: list[Tensor]) -> list[Tensor | None]:
    return list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))


class ObjectiveConformance(ComponentConformance):
    """Subclass and set ``component`` (and ``config``)::

        class TestMyLoss(ObjectiveConformance):
            component = MyLoss
            config = {"alpha": 0.1}

    The suite calls the objective with a small MLP energy (:class:`SmallEnergy`) on ``shape``,
    ``batch`` positives and ``n_neg`` negatives (a different number, so a mix-up of the two
    shows), and labels in ``range(num_classes)`` when the objective ``needs_labels``. Override
    ``make_energy`` for an objective that needs more of the energy (class logits for a JEM-style
    loss), ``make_inputs`` for other inputs.

    Other attributes: ``energy_calls`` (1: the energy is called once per iteration, on everything
    the objective needs, as DDP requires; ``None`` skips the count), ``energies_of_inputs``
    (``True``: ``u_pos``/``u_neg`` are the energies of ``x_pos``/``x_neg`` themselves; ``False``
    for an objective that scores transformed inputs), ``other_device`` (``"meta"``: the device
    the device check moves everything to; ``None`` skips it), ``maximum_likelihood`` (``False``;
    ``True``: with ``config`` the loss is the papers' ``mean U(x+) − mean U(x−)``, checked in
    closed form on a linear energy).
    """

    kind = "objective"
    shape: ClassVar[tuple[int, ...]] = (3,)
    batch: ClassVar[int] = 6
    n_neg: ClassVar[int] = 5
    num_classes: ClassVar[int] = 3
    energy_calls: ClassVar[int | None] = 1
    energies_of_inputs: ClassVar[bool] = True
    other_device: ClassVar[str | None] = "meta"
    maximum_likelihood: ClassVar[bool] = False
    rtol: ClassVar[float] = 1e-5
    atol: ClassVar[float] = 1e-6

    # helpers ------------------------------------------------------------------------------
    def make_objective(self) -> Any:
        return self.component(self.make_config())

    def make_energy(self) -> nn.Module:
        """A fresh energy, the same every call (seeded; the global RNG is left as it was)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return SmallEnergy(tuple(self.shape))

    def make_inputs(self, *, labels: bool | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(x_pos, x_neg, labels)``; labels when the objective needs them (or ``labels``)."""
        g = torch.Generator().manual_seed(11)
        x_pos = torch.rand((self.batch, *self.shape), generator=g) * 2 - 1
        x_neg = torch.rand((self.n_neg, *self.shape), generator=g) * 2 - 1
        want = self.component.needs_labels if labels is None else labels
        y = torch.randint(0, self.num_classes, (self.batch,), generator=g) if want else None
        return x_pos, x_neg, y

    def _call(self, energy: Any, x_pos: Tensor, x_neg: Tensor, labels: Tensor | None) -> Any:
        return self.make_objective()(energy, x_pos, x_neg, labels=labels)

    def _output(self) -> tuple[nn.Module, ObjectiveOutput, tuple[Tensor, Tensor, Tensor | None]]:
        energy = self.make_energy()
        inputs = self.make_inputs()
        return energy, self._call(energy, *inputs), inputs

    # checks -------------------------------------------------------------------------------
    def test_needs_labels_is_a_bool(self):
        needs = self.component.needs_labels
        require(isinstance(needs, bool), "`needs_labels` is a bool class attribute (the trainer"
                f" refuses unlabelled data when it is True); got {needs!r}")

    def test_returns_objective_output(self):
        """An :class:`ebmkit.interfaces.ObjectiveOutput`: a finite floating-point 0-d ``loss``,
        ``u_pos`` ``[batch]`` and ``u_neg`` ``[n_neg]``, ``metrics`` a dict of names to finite
        scalars (0-d tensors without a graph, or numbers)."""
        _, out, (x_pos, x_neg, _) = self._output()
        require(isinstance(out, ObjectiveOutput),
                f"an objective returns an ebmkit.interfaces.ObjectiveOutput; got {type(out).__name__}")
        loss = out.loss
        require(isinstance(loss, Tensor) and loss.dim() == 0 and loss.is_floating_point(),
                "`loss` is a floating-point scalar (0-d) tensor, the one number the optimizer"
                f" minimises; got {_describe(loss)}")
        require(bool(torch.isfinite(loss)), f"`loss` is finite on inputs in [-1, 1]; got {loss}")
        for what, u, n in (("u_pos", out.u_pos, x_pos.shape[0]), ("u_neg", out.u_neg, x_neg.shape[0])):
            require(isinstance(u, Tensor) and tuple(u.shape) == (n,),
                    f"`{what}` holds one energy per example, shape [B] = ({n},) (not [B, 1]);"
                    f" got {_describe(u)}")
            require(u.is_floating_point() and bool(torch.isfinite(u).all()),
                    f"`{what}` is finite and floating-point")
        require(isinstance(out.metrics, dict), f"`metrics` is a dict; got {type(out.metrics).__name__}")
        for k, v in out.metrics.items():
            require(isinstance(k, str) and k, f"metric names are non-empty strings; got {k!r}")
            if isinstance(v, Tensor):
                require(v.dim() == 0, f"metric {k!r} is a scalar (0-d tensor or number); got shape"
                        f" {tuple(v.shape)}")
                require(not v.requires_grad, f"metric {k!r} carries no autograd graph (detach it:"
                        " a logged tensor would keep the iteration's graph alive)")
                ok = bool(torch.isfinite(v))
            else:
                require(isinstance(v, int | float) and not isinstance(v, bool),
                        f"metric {k!r} is a 0-d tensor or a number; got {type(v).__name__}")
                ok = math.isfinite(v)
            require(ok, f"metric {k!r} is finite; got {v!r}")

    def test_energies_are_those_of_the_inputs(self):
        """``u_pos`` / ``u_neg`` are the energies of ``x_pos`` / ``x_neg`` (what the trainer logs
        as ``e_pos`` / ``e_neg`` and the divergence guard watches)."""
        if not self.energies_of_inputs:
            pytest.skip("energies_of_inputs = False")
        energy, out, (x_pos, x_neg, _) = self._output()
        with torch.no_grad():
            ref = (energy(x_pos), energy(x_neg))
        for what, u, r in (("u_pos", out.u_pos, ref[0]), ("u_neg", out.u_neg, ref[1])):
            require(isinstance(u, Tensor) and u.shape == r.shape
                    and torch.allclose(u.detach().to(r.dtype), r, rtol=self.rtol, atol=self.atol),
                    f"`{what}` is the energy of the {'positives' if what == 'u_pos' else 'negatives'}"
                    f" in their order (set energies_of_inputs = False for an objective that scores"
                    f" transformed inputs)")

    def test_loss_is_differentiable(self):
        """The loss has a graph to the energy's parameters, with a finite gradient that is not
        zero everywhere."""
        energy, out, _ = self._output()
        params = list(energy.parameters())
        require(out.loss.requires_grad, "`loss` is differentiable w.r.t. the energy's parameters"
                " (do not compute it under torch.no_grad() or from detached energies)")
        grads = _grads(out.loss, params)
        require(any(g is not None for g in grads), "the loss depends on the energy's parameters")
        require(all(g is None or bool(torch.isfinite(g).all()) for g in grads),
                "the loss' gradient is finite")
        require(any(g is not None and bool(g.abs().sum() > 0) for g in grads),
                "the loss' gradient is not zero everywhere")

    def test_calls_the_energy_it_is_given(self):
        """The objective evaluates the energy only through the function it is given (during
        training: the DDP-wrapped energy, which reduces gradients across processes in its
        forward), ``energy_calls`` times. Checked with a :class:`Replica`: the gradient reaches
        the replica's parameters, equal to the gradient of a plain call, and nothing reaches the
        wrapped module's own parameters (the objective did not go around the wrapper, e.g. by
        ``energy.module`` or a reference it kept)."""
        x_pos, x_neg, labels = self.make_inputs()
        plain = self.make_energy()
        ref = self._call(plain, x_pos, x_neg, labels)
        ref_grads = _grads(ref.loss, list(plain.parameters()))

        module = self.make_energy()
        wrapper = Replica(module)
        out = self._call(wrapper, x_pos, x_neg, labels)
        require(wrapper.calls > 0, "the objective calls the energy it is given (`energy`), not"
                " another reference to the module: in training that function is the DDP wrapper")
        if self.energy_calls is not None:
            require(wrapper.calls == self.energy_calls,
                    f"the objective calls `energy` {self.energy_calls} time(s) per iteration, on"
                    " everything it needs at once (e.g. energy(torch.cat([x_pos, x_neg]))), so DDP"
                    f" reduces the gradient once; it called it {wrapper.calls} times")
        names = [n for n, _ in module.named_parameters()]
        around = _grads(out.loss, list(module.parameters()))
        leaked = [n for n, g in zip(names, around, strict=True)
                  if g is not None and bool(g.abs().sum() > 0)]
        require(not leaked, "the loss' gradient flows only through the function `energy` the"
                " objective is given; it also reached the module's own parameters"
                f" ({', '.join(leaked)}): the objective called the module around the wrapper"
                " (e.g. energy.module(x)), which DDP would not reduce")
        through = _grads(out.loss, [wrapper.replica_parameters[n] for n in names])
        for n, g, r in zip(names, through, ref_grads, strict=True):
            same = (g is None and r is None) or (
                g is not None and r is not None
                and torch.allclose(g, r, rtol=self.rtol, atol=self.atol))
            require(same, f"through the wrapper the loss' gradient equals that of a plain call;"
                    f" it differs for parameter {n!r}")
        require(torch.allclose(out.loss.detach(), ref.loss.detach(), rtol=self.rtol,
                               atol=self.atol),
                "the loss through the wrapper equals the loss of a plain call")

    def test_does_not_call_backward_or_step(self):
        """``train_step`` calls ``backward(loss)`` and steps the optimizer; the objective does
        neither: after the call the parameters have no ``.grad`` and their values are unchanged,
        and the inputs are not written to."""
        energy = self.make_energy()
        before = {n: p.detach().clone() for n, p in energy.named_parameters()}
        x_pos, x_neg, labels = self.make_inputs()
        saved = (x_pos.clone(), x_neg.clone())
        self._call(energy, x_pos, x_neg, labels)
        with_grad = [n for n, p in energy.named_parameters() if p.grad is not None]
        require(not with_grad, "an objective never calls backward (train_step does, through"
                f" Accelerate under DDP): parameters {', '.join(with_grad)} have a .grad after"
                " the call")
        changed = [n for n, p in energy.named_parameters() if not torch.equal(p, before[n])]
        require(not changed, "an objective never steps an optimizer nor writes parameters:"
                f" {', '.join(changed)} changed")
        require(torch.equal(x_pos, saved[0]) and torch.equal(x_neg, saved[1]),
                "an objective does not write to x_pos / x_neg (the trainer logs them and hands"
                " x_neg to the initializer)")

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_keeps_dtype(self, dtype):
        """With an energy and inputs in ``dtype``, ``loss``, ``u_pos`` and ``u_neg`` are in
        ``dtype`` (float64 stays float64; only half-precision energies, as under bf16
        autocast, are upcast to float32)."""
        energy = self.make_energy().to(dtype)
        x_pos, x_neg, labels = self.make_inputs()
        out = self._call(energy, x_pos.to(dtype), x_neg.to(dtype), labels)
        want = torch.promote_types(dtype, torch.float32)
        for what, t in (("loss", out.loss), ("u_pos", out.u_pos), ("u_neg", out.u_neg)):
            require(isinstance(t, Tensor) and t.dtype == want,
                    f"`{what}` keeps the energy's dtype {want} (upcast half precision only, e.g."
                    f" `u if u.dtype in (torch.float32, torch.float64) else u.float()`, never"
                    f" `.float()` on everything); got {_describe(t)}")

    def test_keeps_device_without_host_sync(self):
        """With the energy and the inputs on ``other_device`` (``meta`` by default: tensors
        without data, on any machine), the outputs are on that device. On ``meta`` this also
        checks that nothing syncs with the host (``.item()``, ``float(t)``, ``bool(t)``,
        ``.cpu()``): metrics are 0-d tensors on the device, read by the trainer when it logs."""
        if self.other_device is None:
            pytest.skip("other_device = None")
        dev = torch.device(self.other_device)
        energy = self.make_energy().to(dev)
        x_pos, x_neg, labels = self.make_inputs()
        try:
            out = self._call(energy, x_pos.to(dev), x_neg.to(dev),
                             None if labels is None else labels.to(dev))
        except Exception as exc:  # noqa: BLE001 - reported as a contract failure
            raise AssertionError(
                f"ebmkit contract: the objective runs on the inputs' device ({dev}) without"
                " syncing with the host (no .item(), float(tensor), bool(tensor), .cpu(), no"
                f" tensor created on the default device); it raised {type(exc).__name__}: {exc}"
                " (set other_device = None if an operation has no kernel on that device)"
            ) from exc
        tensors = [("loss", out.loss), ("u_pos", out.u_pos), ("u_neg", out.u_neg),
                   *((f"metrics[{k!r}]", v) for k, v in out.metrics.items()
                     if isinstance(v, Tensor))]
        for what, t in tensors:
            require(isinstance(t, Tensor) and t.device.type == dev.type,
                    f"`{what}` is on the inputs' device {dev}; got {_describe(t)}")

    def test_needs_labels_is_declared_truthfully(self):
        """``needs_labels = True``: with labels it works (every other check passes them); without
        them it raises a clear ``ValueError`` or ebmkit error, not a ``TypeError`` from indexing
        ``None``. ``needs_labels = False``: it works with ``labels=None`` (the trainer passes
        no labels then)."""
        energy = self.make_energy()
        x_pos, x_neg, _ = self.make_inputs(labels=False)
        if not self.component.needs_labels:
            try:
                self._call(energy, x_pos, x_neg, None)
            except Exception as exc:  # noqa: BLE001 - reported as a contract failure
                raise AssertionError(
                    "ebmkit contract: needs_labels = False, so the objective must work with"
                    " labels=None (the trainer passes labels only to objectives that declare"
                    f" needs_labels = True); it raised {type(exc).__name__}: {exc}") from exc
            return
        try:
            self._call(energy, x_pos, x_neg, None)
        except (ValueError, EbmkitError) as exc:
            require(str(exc).strip(), "the error for missing labels says what is missing")
            return
        except Exception as exc:  # noqa: BLE001 - the wrong kind of error
            raise AssertionError(
                "ebmkit contract: with needs_labels = True, calling the objective without labels"
                " raises a clear ValueError (or ebmkit error) saying it needs them; got"
                f" {type(exc).__name__}: {exc}") from exc
        raise AssertionError("ebmkit contract: needs_labels = True, but the objective worked"
                             " without labels: declare needs_labels = False")

    def test_linear_energy_closed_form(self):
        """Opt-in (``maximum_likelihood = True``): on a linear energy ``U(x) = w·x`` the loss is
        ``w·(mean x+ − mean x−)`` and its gradient w.r.t. ``w`` is ``mean x+ − mean x−`` (the ML
        gradient estimate of both papers), in float64."""
        if not self.maximum_likelihood:
            pytest.skip("set `maximum_likelihood = True` for an objective whose loss is"
                        " mean U(x+) - mean U(x-)")
        d = math.prod(self.shape)
        w = nn.Parameter(torch.linspace(-1.0, 2.0, d, dtype=torch.float64))

        def linear(x: Tensor) -> Tensor:
            return x.flatten(1) @ w

        x_pos, x_neg, labels = self.make_inputs()
        x_pos, x_neg = x_pos.double(), x_neg.double()
        out = self._call(linear, x_pos, x_neg, labels)
        diff = x_pos.flatten(1).mean(0) - x_neg.flatten(1).mean(0)
        expected = (w.detach() * diff).sum()
        require(torch.allclose(out.loss.detach().double(), expected, rtol=1e-5, atol=1e-6),
                f"for U(x) = w·x the ML loss is w·(mean x+ − mean x−) = {float(expected):.6g};"
                f" got {float(out.loss.detach()):.6g}")
        (g,) = torch.autograd.grad(out.loss, [w])
        require(torch.allclose(g.double(), diff, rtol=1e-5, atol=1e-6),
                "for U(x) = w·x the gradient of the ML loss w.r.t. w is mean x+ − mean x−;"
                f" got {g.tolist()} instead of {diff.tolist()}")


def _describe(t: Any) -> str:
    if isinstance(t, Tensor):
        return f"Tensor(shape={tuple(t.shape)}, dtype={t.dtype}, device={t.device})"
    return type(t).__name__
