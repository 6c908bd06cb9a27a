"""``ebmkit landscape``: a thin client of :func:`ebmkit_landscape.map_landscape`."""

from __future__ import annotations

from pathlib import Path


def _value(text: str):
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def sampler_spec(name: str | None, sets: list[str]) -> dict | None:
    """``--sampler NAME --set sampler.KEY=VALUE ...`` as a sampler dict (None: the default)."""
    from ebmkit import ConfigError

    table: dict = {}
    for item in sets:
        key, eq, val = item.partition("=")
        section, dot, field = key.strip().partition(".")
        if not eq or section != "sampler" or not dot or not field:
            raise ConfigError(f"--set {item}: expected sampler.KEY=VALUE (e.g. "
                              "sampler.step_size=0.01)")
        table[field] = _value(val.strip())
    if name is None and not table:
        return None
    return {"name": name or "mala", **table}


def add_command(app) -> None:
    import typer

    @app.command("landscape")
    def landscape(
        checkpoint: Path = typer.Argument(..., help="A model .safetensors (or a run directory)."),
        out: Path = typer.Option(Path("landscape"), "--out", "-o", help="Output directory."),
        n_minima: int = typer.Option(64, "--n-minima", "-n", help="Minima to find (chains from --starts)."),
        alpha: list[float] | None = typer.Option(None, "--alpha", "-a", help="Magnet strength α of the AD chains (repeatable). Default: bracket it and map at --n-alpha values."),
        n_alpha: int = typer.Option(4, "--n-alpha", help="Log-spaced α values across the bracket (without --alpha)."),
        temperature: float = typer.Option(0.1, "--temperature", "-t", help="Temperature T of minima search and AD chains."),
        delta: float | None = typer.Option(None, "--delta", help="AD success distance δ (default 0.05·sqrt(D))."),
        sampler: str | None = typer.Option(None, "--sampler", "-s", help="Sampler name (ebmkit list samplers); default mala with the model's step size × sqrt(T)."),
        set_: list[str] | None = typer.Option(None, "--set", help="Sampler option sampler.KEY=VALUE (repeatable), e.g. sampler.step_size=0.03."),
        starts: str = typer.Option("model", help="Minima chain starts: model (the model's own: persistent buffer or noise), noise (its prior) or data."),
        minima_steps: int = typer.Option(5000, help="Most steps of a minima chain."),
        minima_patience: int = typer.Option(30, help="Stop a minima chain after this many steps without a new lowest energy."),
        ad_steps: int = typer.Option(5000, help="Step budget of an AD trial."),
        ad_patience: int = typer.Option(40, help="Give an AD trial up after this many steps without getting closer."),
        targets: int = typer.Option(10, help="Basin representatives tried per new minimum."),
        rounds: int = typer.Option(3, help="Rounds of AD trials before opening a new basin."),
        rank_by: str = typer.Option("interpolation", help="Rank representatives by interpolation (highest energy on a straight line) or distance."),
        max_basins: int | None = typer.Option(None, help="Cap on the number of basins (default: no cap)."),
        barrier_alpha: float | None = typer.Option(None, help="α of the barrier AD runs (default: α_max of the bracket, else 4·α)."),
        neighbors: int = typer.Option(5, help="Nearest representatives each one is linked to in the barrier matrix."),
        probe: int = typer.Option(12, help="Minima used to bracket α."),
        seed: int = typer.Option(0, help="Random seed (the same seed gives the same map)."),
        batch_size: int = typer.Option(256, help="Chains run at once."),
        device: str = typer.Option("cpu", help="cpu, cuda, auto."),
        threads: int = typer.Option(0, help="torch intra-op threads (0 = torch's default)."),
        progress: bool = typer.Option(True, help="Show progress bars."),
    ):
        """Map the energy landscape (ADELM): minima, basins, barriers, disconnectivity graph."""
        import json
        import time

        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        from .mapping import Progress, load_model, map_landscape
        from .plots import write_figures
        from .progress import RichProgress

        console = Console()
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        spec = sampler_spec(sampler, list(set_ or []))
        t0 = time.perf_counter()
        prog = RichProgress(console=console) if progress else Progress()
        ebm, info = load_model(checkpoint, device)
        lmap = map_landscape(
            ebm, n_minima=n_minima, alpha=list(alpha) if alpha else None,
            n_alpha=n_alpha, temperature=temperature, delta=delta, sampler=spec, starts=starts,
            minima_steps=minima_steps, minima_patience=minima_patience, ad_steps=ad_steps,
            ad_patience=ad_patience, n_targets=targets, rounds=rounds, rank_by=rank_by,
            max_basins=max_basins, barrier_alpha=barrier_alpha, n_neighbors=neighbors,
            probe=probe, seed=seed, batch_size=batch_size, device=device, progress=prog)
        lmap.params.update(info)
        path = lmap.save(out)
        figs = write_figures(lmap, out, ebm.energy)
        dt = time.perf_counter() - t0
        if lmap.bracket is not None:
            b = lmap.bracket
            hi = "not reached" if b["alpha_max"] is None else f"{b['alpha_max']:.4g}"
            console.print(f"α bracket: α_min {b['alpha_min']:.4g} (every probed minimum apart) "
                          f"… α_max {hi} (all joined); ladder "
                          f"{json.dumps([[round(a, 4), c] for a, c in b['ladder']])}",
                          highlight=False, markup=False)
        table = Table(title=f"{lmap.energies.numel()} minima, T = {temperature:g}, "
                            f"δ = {lmap.params['delta']:.4g}")
        for col in ("α", "basins", "AD trials", "successes", "trees", "lowest barrier"):
            table.add_column(col, justify="right")
        for lv in lmap.levels:
            bars = [m.barrier for m in lv.tree.merges]
            table.add_row(f"{lv.alpha:.4g}", str(len(lv.basins)), str(lv.trials),
                          str(lv.successes), str(len(lv.tree.roots)),
                          f"{min(bars):.4g}" if bars else "-")
        console.print(table)
        console.print(f"done in {dt:.1f}s -> {escape(str(path))}", highlight=False)
        for name, p in figs.items():
            console.print(f"{name}: {escape(str(p))}", highlight=False)
