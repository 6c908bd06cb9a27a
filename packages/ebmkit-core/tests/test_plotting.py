"""The library's figures never touch the user's matplotlib setup: no backend switch, no pyplot.

Each check runs in a fresh interpreter, so whatever this test process has imported or selected
(the conftest's ``MPLBACKEND=Agg``, another test's pyplot) cannot hide a regression.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import matplotlib

    backend = sys.argv[2]
    if backend != "auto":
        matplotlib.use(backend)
    # Read the raw rcParam: rcParams["backend"] would resolve the automatic backend, and that
    # imports pyplot.
    before = dict.__getitem__(matplotlib.rcParams, "backend")

    import torch
    from ebmkit.builtin.longrun import LongRun
    from ebmkit.builtin.toy_density import Grid, plot_panel
    from ebmkit.diagnostics import CSVLog, plot_diagnostics
    from ebmkit.plotting import new_figure, save_figure

    out = Path(sys.argv[1])
    log = CSVLog(out / "diagnostics.csv")
    for i in range(40):
        log.write({"iter": i, "d_t": (-1) ** i * 0.1 + 0.01 * i, "v_t": 1.0 + 0.1 * (i % 3),
                   "r_t": 1e-3 * (1 + i % 5), "e_pos": -1.0 - 0.01 * i, "e_neg": -0.9,
                   "accept": 0.6, "lr": 1e-3, "steps": 20, "data_noise": 0.0, "sec": 0.01})
    log.close()
    paths = plot_diagnostics(out / "diagnostics.csv", out / "plots")

    g1 = Grid.make((-3.0, 3.0), 1, 50)
    lp1 = -0.5 * g1.axis**2
    paths.append(plot_panel(g1, {"ground truth": lp1, "learned EBM": lp1 - 0.1},
                            out / "panel1d.png", title="1-D"))
    g2 = Grid.make((-3.0, 3.0), 2, 12)
    lp2 = -0.5 * (g2.points**2).sum(1)
    paths.append(plot_panel(g2, {"ground truth": lp2, "learned EBM": lp2 * 1.1,
                                 "short-run KDE": lp2 * 0.9}, out / "panel2d.png", title="2-D"))
    paths.append(LongRun._plot(torch.linspace(2.0, 1.0, 30), {"energy_short": 1.5},
                               out / "longrun_energy.png"))

    fig = new_figure(figsize=(3, 2), layout="constrained")
    fig.colorbar(fig.subplots().imshow([[0.0, 1.0], [1.0, 0.0]]))
    paths.append(save_figure(fig, out / "nested" / "dir" / "constrained.png", dpi=50))

    print(json.dumps({
        "before": str(before),
        "after": str(dict.__getitem__(matplotlib.rcParams, "backend")),
        "pyplot": "matplotlib.pyplot" in sys.modules,
        "paths": [str(p) for p in paths],
    }))
    """
)


@pytest.mark.parametrize("backend", ["svg", "auto"])
def test_figures_leave_backend_alone_and_write_pngs(tmp_path: Path, backend: str):
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), backend], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])

    assert res["after"] == res["before"], "the matplotlib backend was changed"
    if backend != "auto":
        assert res["after"] == backend
    assert res["pyplot"] is False, "matplotlib.pyplot was imported"

    from PIL import Image

    paths = [Path(p) for p in res["paths"]]
    names = {p.name for p in paths}
    assert {"diagnostics.png", "oscillation.png", "panel1d.png", "panel2d.png",
            "longrun_energy.png", "constrained.png"} <= names
    assert (tmp_path / "plots" / "diagnostics.png") in paths
    for p in paths:
        assert p.read_bytes()[:8] == PNG_SIGNATURE, p
        with Image.open(p) as im:
            im.verify()
            assert im.format == "PNG"
    with Image.open(tmp_path / "nested" / "dir" / "constrained.png") as im:
        assert im.size == (150, 100)  # 3 x 2 inches at dpi 50


def test_pyplot_helper_is_gone():
    import ebmkit.plotting as plotting

    assert not hasattr(plotting, "pyplot")
