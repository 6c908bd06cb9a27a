"""Figures of a :class:`~ebmkit_landscape.LandscapeMap`, as PNGs (matplotlib ``Figure`` objects,
never ``pyplot``: nothing global changes).

* ``landscape-tree.png`` — the disconnectivity graph as in the anatomy paper's Fig. 9: one
  column per basin, a circle at its minimum energy sized by its member count, vertical lines up
  from the minima and horizontal lines at the barriers where basins merge (single linkage); for
  image energies the basins' lowest members under their columns.
* ``landscape-members.png`` — image energies: a row of members per basin, lowest energy first.
* ``landscape-sizes.png`` — basin sizes at the finest α, and the number of basins per α.
* ``landscape-contour.png`` — 2-D energies: the basins' minima over the energy's contours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .mapping import LandscapeMap, Level


def _figure(figsize):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None and not fig.subplotpars.bottom < 0.05:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _image(x: Tensor):
    """``[C, H, W]`` in ``[-1, 1]`` -> an array for ``imshow``."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def _is_image(lmap: LandscapeMap) -> bool:
    return lmap.minima.ndim == 4 and lmap.minima.shape[1] in (1, 3)


def plot_tree(lmap: LandscapeMap, path: Path, *, level: Level | None = None,
              members: int = 4) -> Path:
    lv = level or lmap.primary
    tree, basins = lv.tree, lv.basins
    k = len(basins)
    order = tree.leaves_in_order()
    xpos: dict[int, float] = {leaf: float(i) for i, leaf in enumerate(order)}
    for m in tree.merges:  # merges come after their children
        xpos[m.node] = (xpos[m.children[0]] + xpos[m.children[1]]) / 2
    parent = {c: m.node for m in tree.merges for c in m.children}
    heights = [tree.height(v) for v in range(k + len(tree.merges))]
    lo, hi = min(heights), max(heights)
    span = max(hi - lo, 1e-6)
    top = hi + 0.15 * span
    show_images = _is_image(lmap) and k <= 40 and members > 0
    rows = min(members, max(b.size for b in basins)) if show_images else 0
    width = max(6.0, 0.55 * k + 2)
    fig = _figure((width, 4.5 + 0.55 * rows))
    if show_images:
        gs = fig.add_gridspec(1 + rows, k, height_ratios=[4.5] + [0.55] * rows, hspace=0.05,
                              wspace=0.05)
        ax = fig.add_subplot(gs[0, :])
    else:
        ax = fig.add_subplot(1, 1, 1)
    sizes = [b.size for b in basins]
    smax = max(sizes)
    for v in range(k + len(tree.merges)):
        up = tree.height(parent[v]) if v in parent else top
        ax.plot([xpos[v], xpos[v]], [tree.height(v), up], color="k", lw=1)
    for m in tree.merges:
        a, b = m.children
        ax.plot([xpos[a], xpos[b]], [m.barrier, m.barrier], color="k", lw=1)
    xs = [xpos[i] for i in range(k)]
    ax.scatter(xs, [b.min_energy for b in basins], s=[40 + 600 * s / smax for s in sizes],
               facecolors="none", edgecolors="tab:blue", zorder=3, lw=1.5)
    for i, b in enumerate(basins):
        ax.annotate(str(b.size), (xpos[i], b.min_energy), textcoords="offset points",
                    xytext=(0, -14), ha="center", fontsize=7, color="tab:blue")
    ax.set_xticks(range(k))
    ax.set_xticklabels([str(leaf) for leaf in order], fontsize=7)
    ax.set_xlim(-0.7, k - 0.3)
    ax.set_ylim(lo - 0.12 * span, top)
    ax.set_ylabel("energy U")
    if not show_images:
        ax.set_xlabel("basin (circle: number of member minima)")
    n_roots = len(tree.roots)
    forest = f", {n_roots} trees (no barrier found between them)" if n_roots > 1 else ""
    under = "; below: each basin's lowest members" if show_images else ""
    ax.set_title(f"disconnectivity graph: {k} basins, α = {lv.alpha:.3g}, "
                 f"T = {lmap.params['temperature']:g}{forest} (circle: members{under})",
                 fontsize=9)
    if show_images:
        for col, leaf in enumerate(order):
            mem = basins[leaf].members
            for r in range(rows):
                iax = fig.add_subplot(gs[1 + r, col])
                iax.set_axis_off()
                if r < len(mem):
                    iax.imshow(_image(lmap.minima[mem[r]]), cmap="gray", vmin=0, vmax=1)
        fig.subplots_adjust(left=0.07, right=0.99, top=0.93, bottom=0.02)
    return _save(fig, path)


def plot_members(lmap: LandscapeMap, path: Path, *, level: Level | None = None,
                 per_basin: int = 10, max_basins: int = 48) -> Path:
    """Members of each basin, lowest energy first; basins side by side in blocks of ``cols``
    images (about 12 images per row of the figure), basin id, size and each member's U above."""
    lv = level or lmap.primary
    basins = lv.basins[:max_basins]
    cols = min(per_basin, max(b.size for b in basins))
    blocks = max(1, 12 // cols)
    rows = -(-len(basins) // blocks)
    width = blocks * cols
    fig = _figure((max(0.95 * width + 0.4, 6.0), 1.15 * rows + 0.5))
    gs = fig.add_gridspec(rows, width, hspace=0.6, wspace=0.1)
    for n, b in enumerate(basins):
        r, c0 = divmod(n, blocks)
        for c in range(cols):
            ax = fig.add_subplot(gs[r, c0 * cols + c])
            ax.set_axis_off()
            if c < b.size:
                m = b.members[c]
                ax.imshow(_image(lmap.minima[m]), cmap="gray", vmin=0, vmax=1)
                head = f"#{b.id} ({b.size})\n" if c == 0 else "\n"
                ax.set_title(f"{head}{float(lmap.energies[m]):.4g}", fontsize=6, pad=1.5,
                             loc="left" if c == 0 else "center")
    more = f" (first {len(basins)} of {len(lv.basins)})" if len(lv.basins) > len(basins) else ""
    fig.suptitle(f"basins{more} at α = {lv.alpha:.3g}: #id (members), then each member's U, "
                 "lowest first", fontsize=9)
    fig.subplots_adjust(left=0.02, right=0.99, top=1 - 0.5 / (1.15 * rows + 0.5), bottom=0.01)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_sizes(lmap: LandscapeMap, path: Path) -> Path:
    lv = lmap.primary
    fig = _figure((9, 3.4))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    ax1.bar(range(len(lv.basins)), [b.size for b in lv.basins], color="tab:blue")
    ax1.set_xlabel("basin (by minimum energy)")
    ax1.set_ylabel("members")
    ax1.set_title(f"basin sizes at α = {lv.alpha:.3g}", fontsize=9)
    al = [x.alpha for x in lmap.levels]
    ax2.plot(al, lmap.n_basins, "o-", color="tab:blue")
    ax2.set_xscale("log")
    ax2.set_xlabel("α")
    ax2.set_ylabel("basins")
    ax2.set_title("basins per α", fontsize=9)
    return _save(fig, path)


def plot_contour(lmap: LandscapeMap, energy: nn.Module, path: Path, *,
                 level: Level | None = None, grid: int = 200) -> Path:
    lv = level or lmap.primary
    pts = lmap.minima.reshape(-1, 2)
    lo = float(pts.min()) - 0.5
    hi = float(pts.max()) + 0.5
    g = torch.linspace(lo, hi, grid)
    xx, yy = torch.meshgrid(g, g, indexing="xy")
    p = next(iter(energy.parameters()), None)
    b = next(iter(energy.buffers()), None)
    dev = p.device if p is not None else (b.device if b is not None else torch.device("cpu"))
    with torch.no_grad():
        u = torch.cat([energy(c.to(dev)).cpu() for c in
                       torch.stack([xx.flatten(), yy.flatten()], 1).split(8192)])
    u = u.reshape(grid, grid)
    u = u.clamp(max=float(u.min()) + 3 * max(1e-6, float(torch.quantile(u.flatten(), 0.5)
                                                            - u.min())))
    fig = _figure((6, 5.4))
    ax = fig.add_subplot(1, 1, 1)
    cs = ax.contourf(xx.numpy(), yy.numpy(), u.numpy(), levels=30, cmap="Greys_r")
    fig.colorbar(cs, ax=ax, label="energy U (clipped)")
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    for bs in lv.basins:
        m = pts[bs.members]
        ax.scatter(m[:, 0], m[:, 1], s=18, color=cmap(bs.id % 20), edgecolors="k", lw=0.3,
                   label=f"{bs.id} ({bs.size})" if bs.id < 20 else None)
        r = pts[bs.representative]
        ax.scatter([r[0]], [r[1]], marker="*", s=160, color=cmap(bs.id % 20), edgecolors="k",
                   lw=0.8, zorder=4)
    ax.set_aspect("equal")
    ax.set_title(f"{len(lv.basins)} basins at α = {lv.alpha:.3g} (star: representative)",
                 fontsize=9)
    if len(lv.basins) <= 20:
        ax.legend(fontsize=6, loc="upper right", title="basin (members)", title_fontsize=6)
    return _save(fig, path)


def write_figures(lmap: LandscapeMap, out_dir: str | Path, energy: nn.Module | None = None,
                  *, prefix: str = "landscape-") -> dict[str, Path]:
    """All the figures that apply to this map, into ``out_dir``; returns ``{name: path}``."""
    out = Path(out_dir)
    figs: dict[str, Any] = {"tree": plot_tree(lmap, out / f"{prefix}tree.png"),
                            "sizes": plot_sizes(lmap, out / f"{prefix}sizes.png")}
    if _is_image(lmap):
        figs["members"] = plot_members(lmap, out / f"{prefix}members.png")
    if lmap.minima.ndim == 2 and lmap.minima.shape[1] == 2 and energy is not None:
        figs["contour"] = plot_contour(lmap, energy, out / f"{prefix}contour.png")
    return figs


__all__ = ["plot_contour", "plot_members", "plot_sizes", "plot_tree", "write_figures"]
