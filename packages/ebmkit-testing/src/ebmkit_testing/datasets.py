"""Conformance suite for datasets: ``open(split=)`` yields examples of ``shape`` (images in
``[-1, 1]``), and a declared density is a normalised log-density."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

from ._base import ComponentConformance, require


def _example(item: Any) -> Tensor:
    return item[0] if isinstance(item, (tuple, list)) else item


class DataSourceConformance(ComponentConformance):
    """Subclass and set ``component`` and ``config``::

        class TestMyData(DataSourceConformance):
            component = MyShards
            config = {"path": str(FIXTURE_DIR / "shard-{000..001}.tar")}

    ``splits`` are the splits to open; ``n_check`` examples are inspected per split.
    ``density_box``: for 1-D/2-D sources with ``log_density``, the square over which the density
    must integrate to 1 (±``density_tol``).
    """

    kind = "dataset"
    splits: ClassVar[tuple[str, ...]] = ("train",)
    n_check: ClassVar[int] = 16
    density_box: ClassVar[tuple[float, float]] = (-4.0, 4.0)
    density_tol: ClassVar[float] = 0.02
    density_grid: ClassVar[int] = 400

    def make_source(self) -> Any:
        return self.component(self.make_config())

    def examples(self, split: str = "train") -> list[Tensor]:
        ds = self.make_source().open(split=split)
        require(isinstance(ds, Dataset),
                f"open(split=...) returns a torch.utils.data.Dataset or IterableDataset; got {type(ds)}")
        if isinstance(ds, IterableDataset):
            out = []
            for item in ds:
                out.append(_example(item))
                if len(out) >= self.n_check:
                    break
            return out
        n = len(ds)  # type: ignore[arg-type]
        require(n > 0, f"split '{split}' is empty")
        idx = torch.linspace(0, n - 1, min(n, self.n_check)).long().tolist()
        return [_example(ds[i]) for i in idx]

    def test_shape_is_known(self):
        shape = self.make_source().shape
        require(isinstance(shape, tuple) and shape and all(isinstance(s, int) and s > 0 for s in shape),
                f"`shape` is one example's shape as a tuple of positive ints; got {shape!r}")

    def test_examples_match_shape(self):
        src = self.make_source()
        for split in self.splits:
            xs = self.examples(split)
            require(xs, f"split '{split}' yields at least one example")
            for x in xs:
                require(isinstance(x, Tensor) and tuple(x.shape) == tuple(src.shape),
                        f"items are a tensor or (tensor, label) with the tensor of `shape`"
                        f" {tuple(src.shape)}; got {tuple(x.shape) if isinstance(x, Tensor) else type(x)}")
                require(x.is_floating_point() and torch.isfinite(x).all(),
                        "examples are finite floating-point tensors")

    def test_images_in_model_range(self):
        src = self.make_source()
        if len(src.shape) != 3:
            import pytest

            pytest.skip("not an image source")
        x = torch.stack(self.examples("train"))
        require(x.min() >= -1 and x.max() <= 1,
                f"images are [C, H, W] in [-1, 1]; got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]")

    def test_log_density_is_normalised(self):
        src = self.make_source()
        if not src.has_density:
            import pytest

            pytest.skip("no log_density")
        xs = torch.stack(self.examples("train"))
        lp = src.log_density(xs)
        require(tuple(lp.shape) == (xs.shape[0],) and torch.isfinite(lp).all(),
                "log_density maps [B, *shape] to finite [B]")
        if len(src.shape) != 1 or src.shape[0] > 2:
            return
        lo, hi = self.density_box
        m = self.density_grid
        t = torch.linspace(lo, hi, m, dtype=torch.float64)
        cell = (hi - lo) / (m - 1)
        if src.shape[0] == 1:
            pts, vol = t[:, None], cell
        else:
            a, b = torch.meshgrid(t, t, indexing="ij")
            pts, vol = torch.stack([a.flatten(), b.flatten()], 1), cell**2
        dens = src.log_density(pts.float()).double().exp()
        mass = float(dens.sum() * vol)
        require(math.isfinite(mass) and abs(mass - 1) < self.density_tol,
                f"log_density is normalised: exp(log_density) integrates to 1 over"
                f" {self.density_box}^{src.shape[0]} (±{self.density_tol}); got {mass:.4f}."
                " Widen `density_box` if the density has mass outside it")
