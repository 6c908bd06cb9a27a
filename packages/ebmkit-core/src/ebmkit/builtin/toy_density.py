"""Evaluators for low-dimensional models: densities on a grid, sample KDEs, distances, entropy.

``toy_density`` checks the papers' toy claims (anatomy Fig. 6, short-run App. 7.7) on a model
whose data has an exact density (``gmm2d``, ``rings2d``, ``gmm1d``):

* the learned density ``exp(-U)`` normalised on a grid, against the true density (total
  variation, KL(true ‖ model), differential entropy);
* a Gaussian KDE of short-run samples (the model's own initializer and K) and of long-run
  samples (the same chains continued for ``long_steps`` more steps), each against the true
  density smoothed with the same kernel (the KDE's expectation under the truth, so the kernel's
  blur is no error) and against the smoothed learned density;
* the unbiased MMD² between samples and exact data draws, and the same numbers for a set of exact
  draws (``*_data``): the sampling-noise floor every sample metric should be read against.

All grid integrals are Riemann sums over the cell volume; every density is renormalised on the
grid before it is compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..errors import ConfigError
from ..evaluation import write_json
from ..hookspecs import hookimpl
from ..interfaces import DataSource, EvalResult, Evaluator
from ..model import EBM
from ..params import param


# --------------------------------------------------------------------------------------------
# grid arithmetic (float64 throughout)
# --------------------------------------------------------------------------------------------
@dataclass
class Grid:
    """A regular grid on ``[lo, hi]^dim``: ``axis`` [m] and the flattened ``points`` [m^dim, dim]
    (2-D: row-major with the first coordinate varying slowest)."""

    axis: Tensor
    dim: int

    @property
    def cell(self) -> float:
        return float(self.axis[1] - self.axis[0]) ** self.dim

    @property
    def points(self) -> Tensor:
        if self.dim == 1:
            return self.axis[:, None]
        a, b = torch.meshgrid(self.axis, self.axis, indexing="ij")
        return torch.stack([a.reshape(-1), b.reshape(-1)], dim=1)

    @classmethod
    def make(cls, bounds: tuple[float, float], dim: int, m: int) -> Grid:
        if dim not in (1, 2):
            raise ConfigError(f"toy evaluators handle 1-D and 2-D data, not {dim}-D")
        lo, hi = bounds
        return cls(torch.linspace(lo, hi, m, dtype=torch.float64), dim)


def normalize_log(logp: Tensor, cell: float) -> Tensor:
    """Shift a log-density so that ``Σ exp(logp) · cell = 1`` on the grid."""
    logp = logp.double()
    return logp - torch.logsumexp(logp, dim=0) - math.log(cell)


def total_variation(logp: Tensor, logq: Tensor, cell: float) -> float:
    """``½ ∫ |p − q|``, in [0, 1]."""
    return float(0.5 * (logp.exp() - logq.exp()).abs().sum() * cell)


def kl_divergence(logp: Tensor, logq: Tensor, cell: float) -> float:
    """``KL(p ‖ q) = ∫ p log(p/q)``."""
    p = logp.exp()
    return float((p * (logp - logq)).sum() * cell)


def entropy(logp: Tensor, cell: float) -> float:
    """Differential entropy ``−∫ p log p`` (nats)."""
    return float(-(logp.exp() * logp).sum() * cell)


@torch.no_grad()
def energy_log_density(energy: torch.nn.Module, grid: Grid, *, batch: int = 8192) -> Tensor:
    """``log exp(-U)`` normalised on the grid: the learned density as a log-density [m^dim]."""
    p = next(energy.parameters())
    pts = grid.points
    u = torch.cat([energy(pts[i:i + batch].to(p.device, p.dtype)).double().cpu()
                   for i in range(0, pts.shape[0], batch)])
    return normalize_log(-u, grid.cell)


def kde_log_density(samples: Tensor, grid: Grid, bandwidth: float, *, chunk: int = 1024) -> Tensor:
    """Log of an isotropic Gaussian KDE of ``samples`` [n, dim] on the grid, normalised there."""
    x = samples.detach().double().cpu().reshape(samples.shape[0], -1)
    x = x[torch.isfinite(x).all(dim=1)]
    if x.shape[0] == 0:
        raise ConfigError("every sample is non-finite; the sampler diverged (try a smaller step)")
    pts = grid.points
    out = []
    for i in range(0, pts.shape[0], chunk):
        d2 = torch.cdist(pts[i:i + chunk], x) ** 2
        out.append(torch.logsumexp(-d2 / (2 * bandwidth**2), dim=1))
    return normalize_log(torch.cat(out), grid.cell)


def smooth_log_density(logp: Tensor, grid: Grid, bandwidth: float) -> Tensor:
    """``log (p * N(0, h² I))`` on the grid (the expectation of a KDE of samples of p)."""
    a = grid.axis
    k = torch.exp(-((a[:, None] - a[None, :]) ** 2) / (2 * bandwidth**2))  # [m, m] separable
    p = logp.exp()
    if grid.dim == 1:
        s = k @ p
    else:
        m = a.shape[0]
        s = (k @ p.reshape(m, m) @ k.T).reshape(-1)
    return normalize_log(torch.log(s.clamp_min(1e-300)), grid.cell)


def mmd2(x: Tensor, y: Tensor, bandwidths: tuple[float, ...]) -> float:
    """Unbiased MMD² between sample sets with a sum of Gaussian kernels ``exp(-d²/2h²)``."""
    x, y = x.double().flatten(1), y.double().flatten(1)
    n, m = x.shape[0], y.shape[0]

    def k(a, b):
        d2 = torch.cdist(a, b) ** 2
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())


def exact_samples(data: DataSource, n: int, *, seed: int) -> Tensor:
    """``n`` draws from the data's distribution, independent of the training set."""
    g = torch.Generator().manual_seed(seed)
    if data.has_sampler:
        return data.sample(n, generator=g)
    x = data.open(split="test").tensors[0]
    return x[torch.randint(0, x.shape[0], (n,), generator=g)]


def data_bounds(data: DataSource) -> tuple[float, float]:
    """The data's plotting box, or its sample range plus 10 % on each side."""
    if data.bounds is not None:
        return tuple(data.bounds)
    x = data.open(split="train").tensors[0]
    lo, hi = float(x.min()), float(x.max())
    pad = 0.1 * (hi - lo)
    return (lo - pad, hi + pad)


# --------------------------------------------------------------------------------------------
# the evaluator
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ToyDensityConfig:
    grid: int | None = param(None, "Grid points per axis (default: 200 in 2-D, 1000 in 1-D).", min=8)
    n_samples: int = param(10_000, "Chains for the sample KDEs (anatomy code: 10,000).", min=2)
    short_steps: int | None = param(None, "K of the short-run samples (default: the model's K).", min=0)
    long_steps: int = param(2000, "Steps the short-run chains are continued for the long-run samples (0 = none).", min=0)
    kde_bandwidth: float = param(0.05, "Gaussian KDE bandwidth h (absolute, isotropic).", min=0.0,
                                 min_exclusive=True)
    mmd_samples: int = param(2000, "Points per set in the MMD estimates.", min=2)
    mmd_bandwidths: tuple[float, ...] = param((0.05, 0.2, 1.0), "Gaussian kernel widths summed in the MMD.")
    seed: int = param(0, "Seed of the chains and of the exact reference draws.")
    plot: bool = param(True, "Draw the panel figure (density and log-density).")

    def __post_init__(self):
        if not self.mmd_bandwidths or any(h <= 0 for h in self.mmd_bandwidths):
            raise ValueError("mmd_bandwidths must be positive numbers")


class ToyDensity(Evaluator):
    name = "toy_density"
    summary = ("1-D/2-D models vs an exact density: learned density on a grid, KDE of short- and "
               "long-run samples, TV/KL/MMD/entropy, the papers' panel figure.")
    Config = ToyDensityConfig

    def evaluate(self, model: EBM, data: DataSource | None, out_dir: Path | None) -> EvalResult:
        c = self.config
        if data is None or not data.has_density:
            raise ConfigError("evaluator 'toy_density' needs a dataset with a known density "
                              "(gmm2d, rings2d, gmm1d)")
        dim = int(math.prod(data.shape))
        grid = Grid.make(data_bounds(data), dim, c.grid or (200 if dim == 2 else 1000))
        h, cell = c.kde_bandwidth, grid.cell
        dev = next(model.energy.parameters()).device

        log_true = normalize_log(data.log_density(grid.points).double(), cell)
        log_true_s = smooth_log_density(log_true, grid, h)
        log_model = energy_log_density(model.energy, grid)
        log_model_s = smooth_log_density(log_model, grid, h)

        n = c.n_samples
        cap = model.initializer.capacity
        if cap is not None:
            n = min(n, cap)
        g = torch.Generator(device=dev).manual_seed(c.seed)
        model.energy.eval()
        short = model.sample(n, steps=c.short_steps, generator=g, batch_size=n)
        samples = {"short": short}
        if c.long_steps:
            samples["long"] = model.sampler.run(model.energy, short, c.long_steps, generator=g).x
        ref = exact_samples(data, n, seed=c.seed + 1)
        samples["data"] = ref

        m: dict[str, float] = {
            "entropy_true": entropy(log_true, cell),
            "entropy_model": entropy(log_model, cell),
            "tv_model": total_variation(log_true, log_model, cell),
            "kl_model": kl_divergence(log_true, log_model, cell),
        }
        m["entropy_gap"] = m["entropy_model"] - m["entropy_true"]
        exact = exact_samples(data, c.mmd_samples, seed=c.seed + 2)
        kdes = {}
        for key, x in samples.items():
            x = x.detach().cpu().reshape(x.shape[0], -1)
            kdes[key] = kde_log_density(x, grid, h)
            m[f"tv_{key}_kde"] = total_variation(log_true_s, kdes[key], cell)
            m[f"kl_{key}_kde"] = kl_divergence(log_true_s, kdes[key], cell)
            if key != "data":
                m[f"tv_{key}_kde_vs_model"] = total_variation(log_model_s, kdes[key], cell)
            finite = x[torch.isfinite(x).all(dim=1)]
            lo, hi = grid.axis[0].item(), grid.axis[-1].item()
            m[f"outside_{key}"] = 1.0 - float(((finite >= lo) & (finite <= hi)).all(dim=1).float().sum()) / x.shape[0]
            m[f"mmd_{key}"] = mmd2(finite[: c.mmd_samples], exact, c.mmd_bandwidths)

        write_json(out_dir, "toy_metrics.json", m)  # nothing written for out_dir=None
        figures = {}
        if c.plot and out_dir is not None:
            out_dir = Path(out_dir)
            title = str(model.meta.get("title", "")) if model.meta else ""
            figures["panel"] = plot_panel(grid, {"ground truth": log_true, "learned EBM": log_model,
                                                 "short-run KDE": kdes["short"],
                                                 **({"long-run KDE": kdes["long"]} if "long" in kdes else {})},
                                          out_dir / "toy_panel.png", title=title)
        return EvalResult(metrics=m, figures=figures)


def plot_panel(grid: Grid, logs: dict[str, Tensor], path: Path, *, title: str = "") -> Path:
    """The papers' panel: density (top) and log-density (bottom) of each field; 1-D as curves."""
    from ..plotting import new_figure, save_figure

    a = grid.axis.numpy()
    if grid.dim == 1:
        fig = new_figure(figsize=(10, 3.6))
        axes = fig.subplots(1, 2)
        styles = {"ground truth": ("k", "-", 2.5), "learned EBM": ("C3", "-", 1.5),
                  "short-run KDE": ("C0", "--", 1.5), "long-run KDE": ("C2", ":", 1.8)}
        for name, lp in logs.items():
            col, ls, lw = styles.get(name, (None, "-", 1.5))
            axes[0].plot(a, lp.exp().numpy(), color=col, ls=ls, lw=lw, label=name)
            axes[1].plot(a, lp.numpy(), color=col, ls=ls, lw=lw, label=name)
        axes[0].set_title("density")
        axes[1].set_title("log-density")
        ymin = float(logs["ground truth"].max()) - 25
        axes[1].set_ylim(ymin, None)
        axes[0].legend(fontsize=8)
    else:
        k = len(logs)
        fig = new_figure(figsize=(2.8 * k, 5.6))
        axes = fig.subplots(2, k, squeeze=False)
        m = a.shape[0]
        ext = (a[0], a[-1], a[0], a[-1])
        for j, (name, lp) in enumerate(logs.items()):
            img = lp.reshape(m, m).numpy().T  # [y, x] for imshow with origin='lower'
            axes[0, j].imshow(torch.from_numpy(img).exp().numpy(), origin="lower", extent=ext, cmap="viridis")
            axes[1, j].imshow(img.clip(min=img.max() - 25), origin="lower", extent=ext, cmap="viridis")
            axes[0, j].set_title(f"{name}\ndensity", fontsize=9)
            axes[1, j].set_title("log-density", fontsize=9)
            for r in (0, 1):
                axes[r, j].set_xticks([])
                axes[r, j].set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=110)


@hookimpl
def ebmkit_register(register):
    register(ToyDensity)
