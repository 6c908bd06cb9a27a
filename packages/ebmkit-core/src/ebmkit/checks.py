"""Checks of what a user hands the library (an energy, data), each failing in one line.

A mistake in a user's energy or data otherwise surfaces deep inside a sampler (a ``[B, 1]``
energy broadcasts against ``[B]`` chains: ``output with shape [32] doesn't match the broadcast
shape [32, 32]``; a scalar one cannot be split into chains). These run once, on a tiny batch,
before training or sampling starts, and say what is wrong and what to do:

* :func:`check_energy` — the energy accepts the data and returns one finite float per example;
* :func:`as_data` — a tensor or numpy array as float32 data (other floats converted, integers
  refused);
* :func:`data_range` — the ``(min, max)`` of the data, for range warnings.

This module sits low in the layers: it imports only :mod:`ebmkit.errors` and torch (numpy only
when the caller already uses it).
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ConfigError, DataError, EbmkitError

__all__ = ["as_data", "check_energy", "data_range", "energy_label"]

#: The longest excerpt of a foreign exception's message quoted in a one-line error.
_EXCERPT = 160


def energy_label(energy: Any) -> str:
    """How messages name an energy: ``energy 'mlp' (MLPEnergy)`` for a registered one,
    ``energy RingMLP`` for a plain module."""
    cls = type(energy).__name__
    name = getattr(energy, "name", "")
    if isinstance(name, str) and name and name != "custom":
        return f"energy '{name}' ({cls})"
    return f"energy {cls}"


def _excerpt(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    if len(text) > _EXCERPT:
        text = text[: _EXCERPT - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _shape(t: Tensor) -> str:
    return str(list(t.shape))


def check_energy(energy: nn.Module, x: Tensor, *, what: str | None = None) -> Tensor:
    """Call ``energy`` once on a small real batch ``x`` (``[B, *shape]``, two examples are
    plenty, on the energy's device) and check what a sampler and a loss rely on: the call
    works, and returns a floating-point, finite tensor of shape ``[B]`` (one energy per example).

    A failure is a one-line :class:`ConfigError` naming the energy and the data's shape: the
    forgotten squeeze (``[B, 1]``) and a batch-reduced scalar are named as such, an exception
    from the forward becomes "energy RingMLP failed on a batch of shape [2, 3] ...". An
    :class:`~ebmkit.EbmkitError` the energy raises itself passes through unchanged.

    Runs under ``torch.no_grad()`` with the module in eval mode (so batch-norm statistics,
    spectral-norm iterations and dropout draws are untouched); every submodule's mode is put
    back afterwards. Nothing else changes: no gradients, no parameters, no global RNG.
    ``what`` is how messages name the energy (default: :func:`energy_label`). Returns the
    energies ``[B]`` (detached).
    """
    label = what or energy_label(energy)
    if not isinstance(x, Tensor) or x.ndim < 1:
        raise ConfigError(f"check_energy needs a batch tensor [B, ...] of data, got {type(x).__name__}")
    b = int(x.shape[0])
    example = list(x.shape[1:])
    batch = "[" + ", ".join(["B", *map(str, example)]) + "]"
    module = energy if isinstance(energy, nn.Module) else None
    modes = [(m, m.training) for m in module.modules()] if module is not None else []
    try:
        if module is not None:
            module.eval()
        with torch.no_grad():
            u = energy(x)
    except EbmkitError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"{label} failed on a batch of shape {_shape(x)} (examples of shape {example}): "
            f"{_excerpt(exc)}; make the energy take inputs {batch} and return [B], or check the "
            "data's shape") from exc
    finally:
        if module is not None:
            module.train(modes[0][1])
            for m, was in modes:  # submodules the user had put in another mode
                if m.training != was:
                    m.training = was
    need = f"an energy must return one value per example, shape [B] = [{b}]"
    if not isinstance(u, Tensor):
        raise ConfigError(f"{label} returned a {type(u).__name__} for a batch of {b}; {need} "
                          "(a tensor)")
    if u.ndim == 0:
        raise ConfigError(f"{label} returned a scalar (shape []) for a batch of {b}; {need} "
                          "(do not sum or average over the batch)")
    if u.ndim == 2 and tuple(u.shape) == (b, 1):
        raise ConfigError(f"{label} returned shape {_shape(u)} for a batch of {b}; {need} "
                          "(squeeze the last dimension: .squeeze(-1))")
    if tuple(u.shape) != (b,):
        raise ConfigError(f"{label} returned shape {_shape(u)} for a batch of {b}; {need}")
    if not torch.is_floating_point(u):
        raise ConfigError(f"{label} returned {u.dtype} values; an energy must return floating "
                          "point (e.g. float32) values")
    if not bool(torch.isfinite(u).all()):
        bad = "NaN" if bool(torch.isnan(u).any()) else "inf"
        raise ConfigError(f"{label} returned {bad} on a batch of the data (shape {_shape(x)}); "
                          "check its forward (log of 0, division by 0) and the data's values")
    return u.detach()


def _numpy_array(data: Any) -> bool:
    np = sys.modules.get("numpy")  # an array implies numpy is imported: never import it here
    return np is not None and isinstance(data, np.ndarray)


def _from_numpy(data: Any, what: str) -> Tensor:
    import numpy as np

    if data.dtype.kind not in "fiub":  # float, int, uint, bool: what torch can hold
        raise ConfigError(f"{what}: a numpy array of dtype {data.dtype} is not numeric data; "
                          "pass floats (images scaled to [-1, 1])")
    if not data.flags.writeable:
        data = data.copy()  # torch.from_numpy warns on read-only memory
    return torch.from_numpy(np.ascontiguousarray(data))  # negative strides need a copy


def as_data(data: Any, *, what: str = "data") -> Any:
    """A tensor or numpy array as float32 data ``[N, ...]``; anything else (a ``Dataset``, a
    :class:`~ebmkit.DataSource`, a name) is returned as it is.

    numpy arrays become tensors (``torch.from_numpy``, sharing memory when they already are
    float32; numpy itself is never imported here). Other floating-point dtypes (float64,
    float16, bfloat16) are converted to float32, silently: the models compute in float32.
    Integer and bool data are refused in one line (images must be floats in ``[-1, 1]``:
    ``x.float() / 127.5 - 1`` for 8-bit pixels), as is complex data. The shape is not checked
    here. ``what`` names the argument in messages (``"data"``, ``"x0"``).
    """
    if _numpy_array(data):
        data = _from_numpy(data, what)
    if not isinstance(data, Tensor):
        return data
    if data.is_complex():
        raise ConfigError(f"{what}: complex values ({data.dtype}) are not data; pass real floats")
    if not torch.is_floating_point(data):
        raise ConfigError(f"{what}: values are {str(data.dtype).replace('torch.', '')}, not floats; "
                          "scale images to [-1, 1] floats first, e.g. x.float() / 127.5 - 1")
    if data.dtype != torch.float32:
        data = data.to(torch.float32)
    return data


def data_range(x: Any) -> tuple[float, float]:
    """``(min, max)`` of a data tensor (or numpy array) as Python floats; ``nan`` when it holds
    a NaN. A :class:`~ebmkit.DataError` for empty data."""
    if _numpy_array(x):
        x = _from_numpy(x, "data")
    if not isinstance(x, Tensor):
        raise ConfigError(f"data_range needs a tensor or numpy array, got {type(x).__name__}")
    if x.numel() == 0:
        raise DataError(f"data of shape {_shape(x)} holds no values")
    t = x.detach()
    if not torch.is_floating_point(t):
        t = t.to(torch.float64)
    lo, hi = torch.aminmax(t)
    return float(lo), float(hi)
