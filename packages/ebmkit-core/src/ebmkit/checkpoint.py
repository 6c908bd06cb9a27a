"""Checkpoints: one ``.safetensors`` file per energy, plus tensor-only training state for resume.

An energy checkpoint holds the energy's weights and, in the safetensors header metadata
(strings only):

* ``format``          ``ebmkit.energy/1``
* ``ebmkit_version``  the version that wrote it
* ``step``            the training iteration
* ``energy``          the registered energy name
* ``shape``           JSON list, one example's shape
* ``config``          JSON of the whole run document (energy, sampler, init, data, train)

Loading needs no pickle and rebuilds the energy by name through the registry. Training state
(optimizer tensors, persistent buffer, RNG states) is also written with safetensors; its
non-tensor parts (step, optimizer hyper-parameters) go into JSON. Every file is written to a
temporary name and renamed, so an interrupted write never replaces a good file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .errors import CheckpointError, ConfigError, UnknownComponentError

FORMAT = "ebmkit.energy/1"
STATE_FORMAT = "ebmkit.state/1"


def ebmkit_version() -> str:
    """The installed ebmkit-core version (without importing the package root)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ebmkit-core")
    except PackageNotFoundError:  # pragma: no cover - a source tree
        return "0.0.0+local"


def load_weights(path: Path, module: torch.nn.Module, *, strict: bool = True) -> None:
    """Fill ``module`` with the weights stored in ``path`` (one-line errors)."""
    path = Path(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read weights ({exc})") from None
    try:
        module.load_state_dict(tensors, strict=strict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: the weights do not fit this energy ({first})") from None


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path`` (same directory, atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: Path(p).write_text(text))


def save_energy(path: Path, energy: torch.nn.Module, *, doc: Mapping[str, Any] | None, step: int,
                shape: tuple[int, ...] | None = None, extra_meta: Mapping[str, str] | None = None) -> Path:
    """Write ``energy``'s weights and metadata to ``path`` atomically.

    ``doc`` is the run document (``None`` for a hand-built model: the energy is then recorded
    as ``custom``); ``shape`` one example's shape (default ``energy.shape``)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in energy.state_dict().items()}
    name = getattr(energy, "name", "") or "custom"
    if doc is None:
        cls = type(energy)
        doc = {"energy": {"name": "custom", "class": f"{cls.__module__}.{cls.__qualname__}"}}
    shape = shape if shape is not None else getattr(energy, "shape", None)
    if shape is None:
        raise ConfigError("save_energy needs the shape of one example (shape=...)")
    meta = {
        "format": FORMAT,
        "ebmkit_version": ebmkit_version(),
        "step": str(int(step)),
        "energy": str(doc.get("energy", {}).get("name", name)),
        "shape": json.dumps([int(s) for s in shape]),
        "config": json.dumps(doc, sort_keys=False),
    }

    meta.update(extra_meta or {})
    atomic_write(Path(path), lambda p: save_file(tensors, p, metadata=meta))
    return Path(path)


def read_metadata(path: Path) -> dict[str, str]:
    """The header metadata of a safetensors file (raises CheckpointError if unreadable)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({exc}); it may be truncated or corrupt"
        ) from None


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The validated metadata of an energy checkpoint: ``config`` (the run document, a dict),
    ``shape`` (tuple), ``step`` (int), ``energy`` (name), plus
    the raw string fields."""
    path = Path(path)
    meta = read_metadata(path)
    if meta.get("format") != FORMAT:
        found = meta.get("format", "no ebmkit metadata")
        raise CheckpointError(
            f"{path} is not an ebmkit energy checkpoint (format: {found}); "
            "expected a file written by `ebmkit run` or EBM.save"
        )
    try:
        doc = json.loads(meta["config"])
        shape = tuple(int(s) for s in json.loads(meta["shape"]))
        name = str(meta["energy"])
        step = int(meta.get("step", 0))
        if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
            raise ValueError("config is not a document of tables")
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: damaged ebmkit metadata ({exc})") from None
    out: dict[str, Any] = dict(meta)
    out.update(config=doc, shape=shape, step=step, energy=name)
    return out


def load_energy(path: Path, registry, *, device: str | torch.device = "cpu",
                energy: torch.nn.Module | None = None):
    """Rebuild an energy from a checkpoint: by its registered name, or into ``energy`` (a module
    you built, e.g. a custom ``nn.Module``). Returns ``(energy, meta)`` (see
    :func:`read_checkpoint`)."""
    from .params import build

    path = Path(path)
    meta = read_checkpoint(path)
    doc, shape, name = meta["config"], meta["shape"], meta["energy"]
    if name != "custom" and doc.get("energy", {}).get("name") == "custom":
        name = "custom"
    if energy is None:
        if name == "custom":
            cls_name = doc.get("energy", {}).get("class", "a custom nn.Module")
            raise CheckpointError(
                f"{path} holds a custom energy ({cls_name}); load it from Python with "
                "ebmkit.load(path, energy=<a module of that class>)")
        try:
            cls = registry.get("energy", name)
        except UnknownComponentError as exc:
            raise CheckpointError(f"{path} needs energy '{name}', which is not installed: {exc}") from None
        params = {k: v for k, v in doc.get("energy", {}).items() if k != "name"}
        try:
            cfg = build(cls.Config, params, where="energy")
        except ConfigError as exc:
            raise CheckpointError(f"{path}: its energy config does not fit this ebmkit ({exc})") from None
        try:
            energy = cls(cfg, shape)
        except ConfigError as exc:
            raise CheckpointError(f"{path}: cannot rebuild energy '{name}' ({exc})") from None
    load_weights(path, energy)
    energy.to(device).eval()
    return energy, meta


# ---------------------------------------------------------------------------------------------
# Training state (resume)
# ---------------------------------------------------------------------------------------------
def flatten_optimizer(state: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON-able rest."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in state["state"].items():
        for k, v in st.items():
            key = f"optim.{pid}.{k}"
            if isinstance(v, Tensor):
                tensors[key] = v.detach().to("cpu").contiguous()
            else:
                scalars[key] = v
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: Mapping[str, Tensor], rest: Mapping[str, Any]) -> dict[str, Any]:
    st: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, k = key.split(".", 2)
            st.setdefault(int(pid), {})[k] = v
    for key, v in rest.get("scalars", {}).items():
        _, pid, k = key.split(".", 2)
        st.setdefault(int(pid), {})[k] = v
    return {"state": st, "param_groups": rest["param_groups"]}


def save_state(path: Path, tensors: Mapping[str, Tensor], *, step: int) -> None:
    t = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {"format": STATE_FORMAT, "step": str(int(step)), "ebmkit_version": ebmkit_version()}
    atomic_write(Path(path), lambda p: save_file(t, p, metadata=meta))


def load_state(path: Path, *, step: int | None = None) -> dict[str, Tensor]:
    meta = read_metadata(path)
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not an ebmkit training-state file")
    if step is not None and int(meta.get("step", -1)) != step:
        raise CheckpointError(
            f"{path} is from step {meta.get('step')} but the run is at step {step}; "
            "the run directory is inconsistent (was a save interrupted?)"
        )
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read ({exc})") from None
