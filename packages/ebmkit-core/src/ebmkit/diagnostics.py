"""Per-iteration diagnostics (anatomy paper §3): CSV log and the Figure-4 style plots.

``d_t = mean U(x+) - mean U(x-)``: > 0 contraction, < 0 expansion.
``v_t`` = mean ‖∇ₓU‖₂ along the chain; ``r_t`` = gradient displacement per step (ε²/2 · v_t).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: ``grad_evals`` (cumulative energy-gradient evaluations in examples: chains + loss passes),
#: ``image_steps`` (cumulative chain steps × chains), ``cpu_sec`` (process CPU seconds of the
#: iteration) and ``cpu_total`` (cumulative): the compute axis, independent of the wall clock.
COLUMNS = ("iter", "d_t", "v_t", "r_t", "e_pos", "e_neg", "accept", "lr", "steps",
           "data_noise", "sec", "cpu_sec", "grad_evals", "image_steps", "cpu_total")


class CSVLog:
    """Appends one row per logged step.

    ``columns`` are the first columns (``None``: the first row's keys, in order); a row with a
    key not seen before adds a column, and the file is rewritten once with the wider header (so
    an objective's or a plugin's metrics land in their own columns, never dropped). Reopening an
    existing file (resume) keeps its columns and its rows up to ``keep_until`` (rows past the
    resumed step are dropped, as they were never checkpointed)."""

    def __init__(self, path: Path, *, columns: Sequence[str] | None = COLUMNS,
                 keep_until: int | None = None):
        self.path = Path(path)
        self.columns: list[str] = list(columns or ())
        self._rows: list[dict[str, str]] = []
        if keep_until is not None and self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                for c in reader.fieldnames or ():
                    if c not in self.columns:
                        self.columns.append(c)
                self._rows = [r for r in reader if r.get("iter") and _iter(r["iter"]) <= keep_until]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = None
        if self.columns:
            self._rewrite()

    def _rewrite(self) -> None:
        if self._f is not None:
            self._f.close()
        self._f = open(self.path, "w", newline="")  # noqa: SIM115 - kept open for the run
        self._w = csv.writer(self._f)
        self._w.writerow(self.columns)
        self._w.writerows([[r.get(c) or "" for c in self.columns] for r in self._rows])
        self._f.flush()

    def write(self, row: dict) -> None:
        cells = {k: _fmt(v) for k, v in row.items()}
        self._rows.append(cells)
        new = [k for k in cells if k not in self.columns]
        if new or self._f is None:
            self.columns += new
            self._rewrite()
        else:
            self._w.writerow([cells.get(c, "") for c in self.columns])

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def _iter(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return math.inf


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def read_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for c in COLUMNS:
        out[c] = np.array([float(r[c]) if r.get(c) not in (None, "") else math.nan for r in rows])
    return out


def cross_correlation(a: np.ndarray, b: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised cross-correlation corr(a_t, b_{t+lag}) for lag in [-max_lag, max_lag]."""
    n = len(a)
    lags = np.arange(-max_lag, max_lag + 1)
    out = np.full(len(lags), np.nan)
    for i, k in enumerate(lags):
        x, y = (a[: n - k], b[k:]) if k >= 0 else (a[-k:], b[: n + k])
        if len(x) > 2 and np.std(x) > 0 and np.std(y) > 0:
            out[i] = np.mean(x * y) / (np.sqrt(np.mean(x * x)) * np.sqrt(np.mean(y * y)))
    return lags, out


def pacf(x: np.ndarray, max_lag: int) -> np.ndarray:
    """Partial autocorrelation (Durbin–Levinson) for lags 1..max_lag."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    r = np.array([np.sum(x[: n - k] * x[k:]) / n for k in range(max_lag + 1)])
    if r[0] <= 0:
        return np.full(max_lag, np.nan)
    rho = r / r[0]
    phi = np.zeros((max_lag + 1, max_lag + 1))
    out = np.zeros(max_lag)
    phi[1, 1] = rho[1]
    out[0] = rho[1]
    for k in range(2, max_lag + 1):
        num = rho[k] - np.sum(phi[k - 1, 1:k] * rho[1:k][::-1])
        den = 1 - np.sum(phi[k - 1, 1:k] * rho[1:k])
        phi[k, k] = num / den if den != 0 else np.nan
        phi[k, 1:k] = phi[k - 1, 1:k] - phi[k, k] * phi[k - 1, 1:k][::-1]
        out[k - 1] = phi[k, k]
    return out


def plot_diagnostics(csv_path: Path, out_dir: Path, *, burn_in: float = 0.2) -> list[Path]:
    """Write ``diagnostics.png`` (d_t, r_t, energies over training) and ``oscillation.png``
    (cross-correlation of d_t and centred v_t, PACF of both, after ``burn_in`` of the run)."""
    from .plotting import new_figure, save_figure

    d = read_csv(csv_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    it = d["iter"]
    paths = []

    fig = new_figure(figsize=(8, 8))
    axes = fig.subplots(3, 1, sharex=True)
    axes[0].plot(it, d["d_t"], lw=0.8)
    axes[0].axhline(0, color="k", lw=0.5)
    axes[0].set_ylabel("d_t = U(x+) - U(x-)")
    axes[0].set_title("d_t < 0 expansion, d_t > 0 contraction")
    axes[1].plot(it, d["r_t"], lw=0.8, color="C1")
    axes[1].set_ylabel("r_t (grad displacement / step)")
    axes[1].set_yscale("log") if np.nanmin(d["r_t"]) > 0 else None
    axes[2].plot(it, d["e_pos"], lw=0.8, label="U(x+)")
    axes[2].plot(it, d["e_neg"], lw=0.8, label="U(x-)")
    axes[2].legend()
    axes[2].set_ylabel("energy")
    axes[2].set_xlabel("iteration")
    paths.append(save_figure(fig, out_dir / "diagnostics.png"))

    start = int(len(it) * burn_in)
    dt, vt = d["d_t"][start:], d["v_t"][start:]
    ok = np.isfinite(dt) & np.isfinite(vt)
    dt, vt = dt[ok], vt[ok]
    if len(dt) >= 12:
        max_lag = min(10, len(dt) // 3)
        fig = new_figure(figsize=(10, 3.5))
        axes = fig.subplots(1, 2)
        lags, cc = cross_correlation(dt, vt - vt.mean(), max_lag)
        axes[0].bar(lags, cc, width=0.6)
        axes[0].set_title("cross-correlation d_t (uncentred) vs v_t (centred)")
        axes[0].set_xlabel("lag")
        ks = np.arange(1, max_lag + 1)
        axes[1].bar(ks - 0.2, pacf(dt, max_lag), width=0.4, label="d_t")
        axes[1].bar(ks + 0.2, pacf(vt - vt.mean(), max_lag), width=0.4, label="v_t")
        conf = 1.96 / math.sqrt(len(dt))
        for s in (conf, -conf):
            axes[1].axhline(s, color="k", ls="--", lw=0.5)
        axes[1].set_title("partial autocorrelation")
        axes[1].set_xlabel("lag")
        axes[1].legend()
        paths.append(save_figure(fig, out_dir / "oscillation.png"))
    return paths


def summarize(values: Sequence[float]) -> str:
    a = np.asarray(values, dtype=float)
    return f"mean {np.nanmean(a):.4g}, std {np.nanstd(a):.4g}"
