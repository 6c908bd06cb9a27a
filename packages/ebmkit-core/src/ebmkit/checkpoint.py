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
import re
import shutil
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

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
    """Fill ``module`` with the weights stored in ``path`` (one-line errors): names and shapes
    must match the module's, and every floating-point value must be finite."""
    path = Path(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read weights ({exc})") from None
    own = module.state_dict()
    missing = [k for k in own if k not in tensors]
    extra = [k for k in tensors if k not in own]
    if strict and (missing or extra):
        what = (f"missing tensor '{missing[0]}'" if missing else f"unexpected tensor '{extra[0]}'")
        more = len(missing) + len(extra) - 1
        raise CheckpointError(
            f"{path}: the weights do not fit this energy ({what}"
            f"{f' and {more} more' if more else ''}); was it saved from another energy or size?")
    for k, v in tensors.items():
        if k in own and tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(
                f"{path}: the weights do not fit this energy (tensor '{k}' has shape "
                f"{tuple(v.shape)}, the energy expects {tuple(own[k].shape)}); was the energy's "
                "size changed?")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{path}: tensor '{k}' holds NaN or inf values; the model is "
                                  "damaged (use an earlier checkpoint)")
    try:
        module.load_state_dict(tensors, strict=strict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: the weights do not fit this energy ({first})") from None


class KillAt:
    """Fault injection for the kill tests: ``KillAt("save-model", nth=2)`` SIGKILLs this process
    the ``nth`` time a save reaches that point (the points are :data:`KILL_POINTS`, in the order a
    save reaches them). Handed to :class:`CheckpointManager` (``fault=``); ``ebmkit run`` builds
    one from ``EBMKIT_TEST_KILL_AT=POINT[@N]`` (:meth:`from_environment`), which is how
    tests/test_kill.py stops a run between any two writes of a checkpoint."""

    ENV = "EBMKIT_TEST_KILL_AT"

    def __init__(self, point: str, nth: int = 1):
        if point not in KILL_POINTS:
            raise ConfigError(f"kill point {point!r} is not one of {', '.join(KILL_POINTS)}")
        self.point, self.nth, self.count = point, int(nth), 0

    @classmethod
    def from_environment(cls) -> KillAt | None:
        spec = os.environ.get(cls.ENV, "")
        if not spec:
            return None
        want, _, nth = spec.partition("@")
        return cls(want, int(nth or 1))

    def __call__(self, point: str) -> None:
        if point != self.point:
            return
        self.count += 1
        if self.count == self.nth:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


def _no_fault(point: str) -> None:
    """No fault injection (the default)."""


TMP_SUFFIX = ".tmp"


def _new_temp(path: Path) -> Path:
    """Create an empty temporary file next to ``path`` with the user's umask (``mkstemp`` would
    make it 0600); the name starts with ``.`` and ends with ``.tmp`` so stale ones are found."""
    import secrets

    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"cannot create a temporary file next to {path}")  # pragma: no cover


def fsync_file(path: Path) -> None:
    """Flush a file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (renames, new files) to the disk, where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except (OSError, AttributeError):  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - e.g. some network file systems
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write, *, fault: str | None = None, inject=_no_fault) -> None:
    """Call ``write(tmp_path)``, fsync, then rename onto ``path`` (atomic on POSIX): a reader
    sees the old file or the new one, never a part. The new file gets the user's umask.
    ``inject(f"{fault}-tmp")`` is called once the temporary exists (fault injection)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path)
    try:
        mode = stat.S_IMODE(tmp.stat().st_mode)  # 0o666 less the umask
        if fault:
            inject(f"{fault}-tmp")
        write(str(tmp))
        os.chmod(tmp, mode)  # some writers (safetensors) replace the file with a 0600 one
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, *, fault: str | None = None, inject=_no_fault) -> None:
    atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"), fault=fault,
                 inject=inject)


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Remove what interrupted writes left in ``directory`` (not recursive): ``.NAME.XXXX.tmp``
    files of :func:`atomic_write` and ``.tmp-*`` directories of a checkpoint being written.
    Returns what was removed."""
    directory = Path(directory)
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        if p.name.startswith(".tmp-") and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
        elif p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def save_energy(path: Path, energy: torch.nn.Module, *, doc: Mapping[str, Any] | None, step: int,
                shape: tuple[int, ...] | None = None, extra_meta: Mapping[str, str] | None = None,
                fault: str | None = None, inject=_no_fault) -> Path:
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
    atomic_write(Path(path), lambda p: save_file(tensors, p, metadata=meta), fault=fault,
                 inject=inject)
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


_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:+-]{0,199}$")


def _bad(path: Path, field: str, problem: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: metadata field '{field}' {problem}; the file is damaged or was not written by "
        "ebmkit (write it again with EBM.save or ebmkit run)")


def _int_field(path: Path, meta: Mapping[str, str], field: str, *, low: int = 0,
               default: str | None = None) -> int:
    raw = meta.get(field, default)
    if raw is None:
        raise _bad(path, field, "is missing")
    if not (isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise _bad(path, field, f"must be a non-negative integer, not {_show(raw)}")
    value = int(raw)
    if value < low:
        raise _bad(path, field, f"must be at least {low}, not {value}")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _json_field(path: Path, meta: Mapping[str, str], field: str) -> Any:
    raw = meta.get(field)
    if raw is None:
        raise _bad(path, field, "is missing")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise _bad(path, field, "is not valid JSON") from None


def validate_shape(path: Path, value: Any, field: str = "shape") -> tuple[int, ...]:
    if not (isinstance(value, list) and 1 <= len(value) <= 8):
        raise _bad(path, field, f"must be a list of 1 to 8 sizes, not {_show(value)}")
    if not all(type(v) is int and 1 <= v <= 1 << 20 for v in value):
        raise _bad(path, field, f"must hold positive integer sizes, not {_show(value)}")
    return tuple(value)


def validate_document(path: Path, doc: Any, field: str = "config") -> dict[str, dict[str, Any]]:
    """A run document: a JSON object of tables (string keys), each section's ``name`` a name."""
    if not isinstance(doc, dict):
        raise _bad(path, field, f"must be a JSON object of tables, not {type(doc).__name__}")
    for section, table in doc.items():
        if not isinstance(table, dict):
            raise _bad(path, f"{field}.{section}", f"must be a table, not {type(table).__name__}")
        name = table.get("name")
        if name is not None and not (isinstance(name, str) and _NAME_RE.match(name)):
            raise _bad(path, f"{field}.{section}.name", f"is not a component name: {_show(name)}")
    return doc


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The validated metadata of an energy checkpoint: ``config`` (the run document, a dict),
    ``shape`` (tuple), ``step`` (int), ``energy`` (name), plus the raw string fields.

    Every field is checked (format version, names, types, shapes) before any tensor is read;
    a malformed one is a one-line :class:`CheckpointError` naming the file and the field."""
    path = Path(path)
    meta = read_metadata(path)
    fmt = meta.get("format")
    if fmt != FORMAT:
        if isinstance(fmt, str) and fmt.startswith("ebmkit.energy/"):
            raise CheckpointError(
                f"{path}: format {_show(fmt)} is not one this ebmkit reads ({FORMAT}); "
                "upgrade ebmkit-core or export the model again")
        found = _show(fmt) if fmt is not None else "no ebmkit metadata"
        raise CheckpointError(
            f"{path} is not an ebmkit energy checkpoint (format: {found}); "
            "expected a file written by `ebmkit run` or EBM.save"
        )
    name = meta.get("energy")
    if name is None:
        raise _bad(path, "energy", "is missing")
    if not (isinstance(name, str) and _NAME_RE.match(name)):
        raise _bad(path, "energy", f"is not a component name: {_show(name)}")
    step = _int_field(path, meta, "step", default="0")
    shape = validate_shape(path, _json_field(path, meta, "shape"))
    doc = validate_document(path, _json_field(path, meta, "config"))
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


def write_tensors(path: Path, tensors: Mapping[str, Tensor], meta: Mapping[str, str]) -> None:
    """Write a safetensors file in place and fsync it (inside a directory not yet committed)."""
    t = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o666)  # the user's umask
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    os.close(fd)
    save_file(t, str(path), metadata=dict(meta))
    os.chmod(path, mode)
    fsync_file(Path(path))


def state_meta(step: int) -> dict[str, str]:
    return {"format": STATE_FORMAT, "step": str(int(step)), "ebmkit_version": ebmkit_version()}


def save_state(path: Path, tensors: Mapping[str, Tensor], *, step: int) -> None:
    """One training-state file written atomically (a standalone file, not a checkpoint dir)."""
    t = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(Path(path), lambda p: save_file(t, p, metadata=state_meta(step)))


def load_state(path: Path, *, step: int | None = None) -> dict[str, Tensor]:
    path = Path(path)
    meta = read_metadata(path)
    if meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not an ebmkit training-state file")
    found = _int_field(path, meta, "step")
    if step is not None and found != step:
        raise CheckpointError(
            f"{path} is from step {found} but the run is at step {step}; "
            "the run directory is inconsistent (was a save interrupted?)"
        )
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read ({exc})") from None


# ---------------------------------------------------------------------------------------------
# The run directory's checkpoints: crash-consistent (write in full, fsync, rename, pointer last)
# ---------------------------------------------------------------------------------------------
CHECKPOINTS = "checkpoints"
LATEST = "LATEST"
MODEL = "model.safetensors"
STATE_JSON = "state.json"
#: Where ``EBMKIT_TEST_KILL_AT`` can stop a save, in the order they are reached.
KILL_POINTS = ("save-tmpdir", "save-rank", "save-model-tmp", "save-model", "save-state", "save-renamed",
               "save-latest-tmp", "save-latest", "save-link-tmp", "save-link", "save-rotated")
_STEP_RE = re.compile(r"^step-(\d{6,12})$")


def step_dir_name(step: int) -> str:
    return f"step-{int(step):06d}"


def validate_state_info(path: Path, info: Any) -> dict[str, Any]:
    """``state.json``: ``step`` (int >= 0), ``world_size`` (int >= 1), ``optimizer``
    (``param_groups``: a list of tables, ``scalars``: a table), optional ``callbacks`` (tables)
    and ``compute`` (non-negative numbers)."""
    def bad(field, problem):
        return CheckpointError(f"{path}: field '{field}' {problem}; this checkpoint is damaged "
                               "(resume picks an older complete one, if any)")

    if not isinstance(info, dict):
        raise bad("(top level)", f"must be a JSON object, not {type(info).__name__}")
    for field, low in (("step", 0), ("world_size", 1)):
        v = info.get(field, 1 if field == "world_size" else None)
        if type(v) is not int or v < low:
            raise bad(field, f"must be an integer >= {low}, not {_show(v)}")
    opt = info.get("optimizer")
    if not isinstance(opt, dict):
        raise bad("optimizer", "must be a JSON object")
    groups = opt.get("param_groups")
    if not (isinstance(groups, list) and groups and all(isinstance(g, dict) for g in groups)):
        raise bad("optimizer.param_groups", "must be a non-empty list of tables")
    for g in groups:
        params = g.get("params")
        if not (isinstance(params, list) and all(type(i) is int and i >= 0 for i in params)):
            raise bad("optimizer.param_groups.params", "must be a list of parameter indices")
    if not isinstance(opt.get("scalars", {}), dict):
        raise bad("optimizer.scalars", "must be a JSON object")
    cbs = info.get("callbacks", {})
    if not (isinstance(cbs, dict) and all(isinstance(v, dict) for v in cbs.values())):
        raise bad("callbacks", "must be a JSON object of callback states")
    compute = info.get("compute", {})
    if not (isinstance(compute, dict) and all(type(v) in (int, float) and v >= 0
                                              for v in compute.values())):
        raise bad("compute", "must be a JSON object of non-negative numbers")
    for key in opt.get("scalars", {}):
        parts = key.split(".", 2)
        if len(parts) != 3 or parts[0] != "optim" or not parts[1].isdigit():
            raise bad("optimizer.scalars", f"has a malformed key {_show(key)}")
    return info


def read_state_info(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} cannot be read ({exc})") from None
    try:
        info = json.loads(text)
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path} is not valid JSON; this checkpoint is damaged") from None
    return validate_state_info(path, info)


def check_checkpoint_dir(directory: Path) -> dict[str, Any]:
    """The ``state.json`` of a complete checkpoint directory, after checking that the model and
    every rank's state file are readable and at the same step (CheckpointError otherwise)."""
    directory = Path(directory)
    info = read_state_info(directory / STATE_JSON)
    step = info["step"]
    meta = read_checkpoint(directory / MODEL)
    if meta["step"] != step:
        raise CheckpointError(f"{directory}: the model is at step {meta['step']} but the state at {step}")
    for r in range(info.get("world_size", 1)):
        rpath = directory / f"rank{r}.safetensors"
        rmeta = read_metadata(rpath)
        if rmeta.get("format") != STATE_FORMAT or _int_field(rpath, rmeta, "step") != step:
            raise CheckpointError(f"{rpath} does not belong to step {step}")
    return info


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """Committed-looking checkpoint directories of a run, newest first (not yet checked)."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def read_latest(out_dir: Path) -> str | None:
    """The name the ``LATEST`` pointer holds (``None`` when absent or unreadable)."""
    try:
        text = (Path(out_dir) / CHECKPOINTS / LATEST).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if _STEP_RE.match(text) else None


def find_checkpoint(out_dir: Path) -> tuple[Path, dict[str, Any], list[str]] | None:
    """The newest complete checkpoint of a run: ``(directory, state info, notes)``, where the
    notes say which newer directories were skipped and why; ``None`` when there is none."""
    notes: list[str] = []
    for _step, path in list_checkpoints(out_dir):
        try:
            info = check_checkpoint_dir(path)
        except CheckpointError as exc:
            notes.append(f"skipped {path.name}: {exc}")
            continue
        return path, info, notes
    return None


def save_checkpoint(out_dir: Path, step: int, *, write_rank: Any, write_main: Any,
                    rank: int = 0, is_main: bool = True, barrier: Any = None,
                    keep: int = 2, inject=_no_fault) -> Path:
    """Write the checkpoint of ``step`` so that a kill at any moment leaves the previous one
    intact: every rank writes into ``checkpoints/.tmp-step-N/`` (``write_rank(dir)``), the main
    process adds the model and ``state.json`` (``write_main(dir)``), fsyncs, renames the
    directory to ``checkpoints/step-N``, replaces the ``LATEST`` pointer, then points the
    top-level ``model.safetensors`` at the new model (a hard link, or a copy) and removes all but
    the ``keep`` newest checkpoints. Returns the committed directory."""
    out_dir = Path(out_dir)
    root = out_dir / CHECKPOINTS
    name = step_dir_name(step)
    tmp = root / f".tmp-{name}"
    final = root / name
    wait = barrier or (lambda: None)
    try:
        if is_main:
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            inject("save-tmpdir")
        wait()
        write_rank(tmp)
        inject("save-rank")
        wait()
        if is_main:
            write_main(tmp)  # the model, then state.json (faults inside)
            fsync_dir(tmp)
            if final.exists():  # an uncommitted leftover of this step (or a re-save): replace
                old = root / f".tmp-old-{name}"
                shutil.rmtree(old, ignore_errors=True)
                os.rename(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.rename(tmp, final)
            fsync_dir(root)
            inject("save-renamed")
            atomic_write_text(root / LATEST, name + "\n", fault="save-latest", inject=inject)
            inject("save-latest")
            publish(final / MODEL, out_dir / MODEL, inject=inject)
            inject("save-link")
            rotate(out_dir, keep=keep, current=final)
            inject("save-rotated")
    except OSError as exc:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        prev = find_checkpoint(out_dir)
        kept = f"; the previous checkpoint {prev[0]} is intact" if prev else ""
        raise CheckpointError(
            f"cannot write the checkpoint of step {step} in {root} ({exc.strerror or exc}){kept}; "
            "free space or fix the directory, then resume") from None
    wait()
    return final


def publish(src: Path, dst: Path, *, inject=_no_fault) -> None:
    """Atomically make ``dst`` the same file as ``src`` (a hard link, or a copy)."""
    tmp = _new_temp(dst)
    tmp.unlink()
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            fsync_file(tmp)
        inject("save-link-tmp")
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def rotate(out_dir: Path, *, keep: int, current: Path | None = None) -> list[Path]:
    """Remove all but the ``keep`` newest checkpoint directories (never ``current``); each is
    renamed to a ``.tmp-old-*`` name first, so a kill mid-removal leaves no half directory."""
    removed = []
    root = Path(out_dir) / CHECKPOINTS
    for i, (_step, path) in enumerate(list_checkpoints(out_dir)):
        if i < keep or (current is not None and path == current):
            continue
        old = root / f".tmp-old-{path.name}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(path, old)
        shutil.rmtree(old, ignore_errors=True)
        removed.append(path)
    return removed


# ---------------------------------------------------------------------------------------------
# The manager: one object that owns a run directory's checkpoint protocol
# ---------------------------------------------------------------------------------------------
LEGACY_STATE_DIR = "train_state"  # the resume-state directory of ebmkit < 0.2


class TrainingState(Protocol):
    """What the checkpoint manager saves and restores (:class:`ebmkit.Run` implements it);
    declared here so the checkpoint layer needs nothing from the training layer above it."""

    energy: torch.nn.Module
    optimizer: torch.optim.Optimizer
    initializer: Any  # an ebmkit.Initializer: state_dict() / load_state_dict() of tensors
    generator: torch.Generator
    data_generator: torch.Generator
    accelerator: Any  # wait_for_everyone()
    config: Any  # to_dict(): the run document
    shape: tuple[int, ...]
    step: int
    ema: torch.nn.Module | None  # the moving average of the weights (train.ema), if any
    compute: dict[str, float]  # the compute spent so far (grad_evals, image_steps, cpu_total)
    callbacks: list[Any]  # each with state_key, state_dict(), load_state_dict()

    @property
    def rank(self) -> int: ...

    @property
    def world_size(self) -> int: ...

    @property
    def is_main(self) -> bool: ...

    def say(self, message: str) -> None: ...


def rejection_reasons(out_dir: Path) -> list[str]:
    """Why each step directory of a run is not a usable checkpoint (``step-N: reason``)."""
    reasons = []
    for _step, path in list_checkpoints(out_dir):
        try:
            check_checkpoint_dir(path)
        except CheckpointError as exc:
            reasons.append(f"{path.name}: {_short(str(exc), path)}")
    return reasons


def _short(text: str, path: Path) -> str:
    """A rejection reason without the directory prefix it repeats."""
    return text.replace(f"{path}/", "").replace(f"{path}: ", "").replace(str(path), path.name)


class CheckpointManager:
    """The checkpoints of one run directory: :meth:`save`, :meth:`restore`, :meth:`latest`,
    :attr:`keep` (how many complete ones to keep).

    ``out_dir/checkpoints/step-NNNNNN/`` holds ``model.safetensors`` (weights + run document),
    ``rank<r>.safetensors`` (each process's optimizer, initializer and RNG tensors, and tensors
    of callback state) and ``state.json`` (step, world size, optimizer scalars, callback state);
    nothing is pickled. A save writes a temporary directory in full, fsyncs, renames it, and
    only then replaces ``checkpoints/LATEST`` (crash-consistent: the previous checkpoint stays
    valid until the new one is committed). ``fault`` is a fault injector called at each
    :data:`KILL_POINTS` point (``KillAt`` for the kill tests; default: none).

    ``save``/``restore`` take a :class:`TrainingState` (:class:`ebmkit.Run` is one).
    """

    def __init__(self, out_dir: str | Path, *, keep: int = 2, fault=None):
        if int(keep) < 1:
            raise ConfigError(f"keep must be >= 1, got {keep}")
        self.out_dir = Path(out_dir)
        self.keep = int(keep)
        self.fault = fault or _no_fault
        self.last_saved: Path | None = None

    def __repr__(self) -> str:
        return f"CheckpointManager({str(self.out_dir)!r}, keep={self.keep})"

    # -- reading -------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return self.out_dir / CHECKPOINTS

    def steps(self) -> list[int]:
        """Steps of the committed-looking checkpoint directories, newest first."""
        return [s for s, _ in list_checkpoints(self.out_dir)]

    def latest(self) -> Path | None:
        """The newest complete, readable checkpoint directory (``None`` if there is none)."""
        found = find_checkpoint(self.out_dir)
        return found[0] if found is not None else None

    def latest_step(self) -> int | None:
        found = find_checkpoint(self.out_dir)
        return found[1]["step"] if found is not None else None

    def describe(self) -> dict[str, Any]:
        """``state.json`` of the newest complete checkpoint (``{}`` when there is none)."""
        found = find_checkpoint(self.out_dir)
        return dict(found[1], directory=str(found[0])) if found else {}

    def model_file(self) -> Path | None:
        """The model of the newest complete checkpoint, else the top-level ``model.safetensors``
        (an old layout or a hand-saved file), else ``None``."""
        where = self.latest()
        if where is not None:
            return where / MODEL
        top = self.out_dir / MODEL
        return top if top.is_file() else None

    def initializer_state(self, rank: int = 0) -> dict[str, Tensor]:
        """The initializer's saved tensors (``init.*``, prefix removed) of the newest complete
        checkpoint, for ``ebmkit.load(run_dir)`` (``{}`` when none)."""
        where = self.latest()
        path = where / f"rank{rank}.safetensors" if where is not None else \
            self.out_dir / LEGACY_STATE_DIR / f"rank{rank}.safetensors"
        if not path.is_file():
            return {}
        return {k[5:]: v for k, v in load_state(path).items() if k.startswith("init.")}

    # -- housekeeping --------------------------------------------------------------------------
    def clean(self) -> None:
        """Remove temporaries of interrupted saves (top level, checkpoints/, legacy)."""
        for d in (self.out_dir, self.root, self.out_dir / LEGACY_STATE_DIR):
            remove_stale_temporaries(d)

    def discard(self) -> None:
        """Remove every checkpoint (a forced fresh run: old ones must not mix in)."""
        for name in (CHECKPOINTS, LEGACY_STATE_DIR):
            old = self.out_dir / name
            if old.is_dir():
                trash = self.out_dir / f".tmp-old-{name}"
                shutil.rmtree(trash, ignore_errors=True)
                old.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)

    # -- save ----------------------------------------------------------------------------------
    def save(self, run: TrainingState) -> Path:
        """Commit the checkpoint of ``run.step``; returns its directory."""
        acc = run.accelerator
        inject = self.fault
        opt_tensors, opt_rest = flatten_optimizer(run.optimizer.state_dict())
        tensors = dict(opt_tensors)
        for k, v in run.initializer.state_dict().items():
            tensors[f"init.{k}"] = v
        if run.ema is not None:  # the published model is the average; resume needs the raw weights
            for k, v in run.energy.state_dict().items():
                tensors[f"raw.{k}"] = v.detach()
        tensors["rng.chain"] = run.generator.get_state().clone()
        tensors["rng.data"] = run.data_generator.get_state().clone()
        cb_json: dict[str, Any] = {}
        for key, cb in _callback_keys(run.callbacks):
            state = cb.state_dict() or {}
            plain = {}
            for k, v in state.items():
                if isinstance(v, Tensor):
                    tensors[f"cb.{key}.{k}"] = v
                else:
                    plain[k] = v
            if state:
                cb_json[key] = plain
        try:
            json.dumps(cb_json)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"a callback's state_dict() is not JSON-serialisable ({exc}); "
                                  "return numbers, strings, lists, dicts or tensors") from None

        def write_rank(d: Path) -> None:
            write_tensors(d / f"rank{run.rank}.safetensors", tensors, state_meta(run.step))

        def write_main(d: Path) -> None:
            published = run.ema if run.ema is not None else run.energy
            save_energy(d / MODEL, published, doc=run.config.to_dict(), step=run.step,
                        shape=run.shape, fault="save-model", inject=inject)
            inject("save-model")
            info = {"step": run.step, "world_size": run.world_size, "optimizer": opt_rest,
                    "compute": dict(run.compute)}
            if cb_json:
                info["callbacks"] = cb_json
            (d / STATE_JSON).write_text(json.dumps(info), encoding="utf-8")
            fsync_file(d / STATE_JSON)
            inject("save-state")

        self.last_saved = save_checkpoint(
            self.out_dir, run.step, write_rank=write_rank, write_main=write_main, rank=run.rank,
            is_main=run.is_main, barrier=acc.wait_for_everyone, keep=self.keep, inject=inject)
        return self.last_saved

    # -- restore -------------------------------------------------------------------------------
    def restore(self, run: TrainingState) -> tuple[int, Path] | None:
        """Restore the newest complete checkpoint into ``run`` (weights, optimizer, initializer,
        RNG states, callback states) and set ``run.step``; returns ``(step, directory)``, or
        ``None`` when the run directory has none (a run killed before its first save). When
        step directories exist but none is usable, a :class:`CheckpointError` says why each was
        rejected."""
        found = find_checkpoint(self.out_dir)
        if found is None:
            if (self.out_dir / LEGACY_STATE_DIR / STATE_JSON).is_file():  # ebmkit < 0.2
                step = self._restore_legacy(run)
                run.step = step
                return step, self.out_dir / LEGACY_STATE_DIR
            reasons = rejection_reasons(self.out_dir)
            if reasons:
                raise CheckpointError(
                    f"no checkpoint in {self.root} is complete and readable ({'; '.join(reasons)}); "
                    "start again with --force / force=True (or a new output directory)")
            return None
        where, info, notes = found
        for note in notes:
            run.say(note)
        if run.is_main:  # newer, damaged directories would confuse rotation: remove them
            for step, path in list_checkpoints(self.out_dir):
                if step > info["step"]:
                    shutil.rmtree(path, ignore_errors=True)
        run.accelerator.wait_for_everyone()
        self._restore(where, where / f"rank{run.rank}.safetensors", info, run)
        run.step = info["step"]
        self.last_saved = where
        return info["step"], where

    def _restore(self, where: Path, rank_file: Path, info: dict, run: Any,
                 model_path: Path | None = None) -> None:
        if int(info.get("world_size", 1)) != run.world_size:
            raise CheckpointError(
                f"{where} was saved by {info.get('world_size')} process(es); resume it with the "
                f"same number (got {run.world_size}) so each rank gets its own persistent chains back")
        step = info["step"]
        tensors = load_state(rank_file, step=step)
        if run.ema is not None:
            raw = {k[4:]: v for k, v in tensors.items() if k.startswith("raw.")}
            if not raw:
                raise CheckpointError(f"{where} holds no raw weights beside the averaged model; "
                                      "was it saved with train.ema = 0?")
            load_weights(model_path or where / MODEL, run.ema)
            try:
                run.energy.load_state_dict(raw)
            except RuntimeError as exc:
                raise CheckpointError(f"{rank_file}: the raw weights do not fit the energy "
                                      f"({str(exc).splitlines()[0]})") from None
        else:
            load_weights(model_path or where / MODEL, run.energy)
        try:
            run.optimizer.load_state_dict(unflatten_optimizer(tensors, info["optimizer"]))
        except (ValueError, KeyError, IndexError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{where}: the saved optimizer state does not fit this run "
                                  f"({first}); was the energy or the optimizer changed?") from None
        dev = run.generator.device
        try:
            run.initializer.load_state_dict({k[5:]: v.to(dev) for k, v in tensors.items()
                                             if k.startswith("init.")})
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{where}: cannot restore the initializer ({exc})") from None
        try:
            run.generator.set_state(tensors["rng.chain"])
            run.data_generator.set_state(tensors["rng.data"])
        except (KeyError, RuntimeError, TypeError) as exc:
            raise CheckpointError(f"{rank_file}: the random-number state is missing or damaged "
                                  f"({exc})") from None
        compute = info.get("compute")
        if isinstance(compute, dict):  # checkpoints before ebmkit 0.2 count from the resume
            run.compute.update({k: v for k, v in compute.items() if isinstance(v, (int, float))})
        saved = info.get("callbacks") or {}
        for key, cb in _callback_keys(run.callbacks):
            prefix = f"cb.{key}."
            state = dict(saved.get(key) or {})
            state.update({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
            if state:
                cb.load_state_dict(state)

    def _restore_legacy(self, run: Any) -> int:
        sdir = self.out_dir / LEGACY_STATE_DIR
        info = read_state_info(sdir / STATE_JSON)
        meta = read_checkpoint(self.out_dir / MODEL)
        if meta["step"] != info["step"]:
            raise CheckpointError(f"{self.out_dir}: model.safetensors is at step {meta['step']} but "
                                  f"train_state at {info['step']}; this old-layout run cannot be resumed")
        self._restore(self.out_dir, sdir / f"rank{run.rank}.safetensors", info, run,
                      model_path=self.out_dir / MODEL)
        return info["step"]


def _callback_keys(callbacks) -> list[tuple[str, Any]]:
    """``(key, callback)`` for every callback: its ``state_key`` (default: the class name),
    with ``#2``, ``#3`` … for repeats, so each one's state comes back to it on resume."""
    seen: dict[str, int] = {}
    out = []
    for cb in callbacks:
        base = str(cb.state_key or type(cb).__qualname__)
        seen[base] = seen.get(base, 0) + 1
        out.append((base if seen[base] == 1 else f"{base}#{seen[base]}", cb))
    return out
