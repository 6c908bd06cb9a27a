"""Figures: ``matplotlib.figure.Figure`` objects, written as PNG (no display needed).

The library never imports ``matplotlib.pyplot`` and never changes the matplotlib backend, so a
user's interactive or Jupyter-inline setup survives training and evaluation. A bare ``Figure``
is not registered with pyplot (nothing to close, freed like any object) and ``savefig`` draws it
with a canvas picked by the file's format (Agg for PNG), whatever backend is active::

    fig = new_figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(x, y)
    save_figure(fig, out_dir / "curve.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(figsize: tuple[float, float] | None = None, **kwargs: Any) -> Figure:
    """A fresh ``Figure`` of ``figsize`` inches (rcParams' default if None), outside pyplot.

    Extra keyword arguments go to ``Figure`` (e.g. ``layout="constrained"``). Add axes with
    ``fig.subplots(...)``, colorbars with ``fig.colorbar(...)``; write with :func:`save_figure`.
    """
    from matplotlib.figure import Figure  # lazy: matplotlib is slow to import

    return Figure(figsize=figsize, **kwargs)


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 100) -> Path:
    """Lay out ``fig`` (``tight_layout`` unless it has a layout engine already) and write it to
    ``path`` (parents created; the format follows the suffix, PNG for ``.png``); returns the path.
    """
    path = Path(path)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
