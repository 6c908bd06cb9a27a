"""``ebmkit toy``: the toy reproductions (:mod:`ebmkit.reproductions.toy`)."""

from __future__ import annotations

from pathlib import Path


def add_commands(app):
    import typer

    @app.command("toy")
    def toy_command(
        toy: str = typer.Argument(..., help="gmm (8 Gaussians), rings (4 rings) or 1d (1-D mixture)."),
        regime: str = typer.Option("both", help="nonconvergent, convergent or both."),
        out: Path = typer.Option(Path("runs/toy"), "--out", "-o", help="Output directory."),
        fast: bool = typer.Option(False, help="Shortened runs: only the direction of the effects, in about a minute."),
        set_: list[str] | None = typer.Option(None, "--set", help="Training override SECTION.KEY=VALUE (repeatable)."),
        eval_set: list[str] | None = typer.Option(None, "--eval-set", help="toy_density option KEY=VALUE (repeatable), e.g. long_steps=5000."),
        progress: bool = typer.Option(True, help="Show the training progress bar."),
        threads: int = typer.Option(1, min=0, help="torch intra-op threads (0 = torch's default); 1 is fastest for these tiny models."),
    ):
        """Reproduce the papers' toy experiments: train, evaluate and draw the density panels."""
        from rich.console import Console
        from rich.table import Table

        from ..errors import ConfigError
        from ..reproductions.toy import REGIMES, SUMMARY_KEYS, TOYS, check_claims, reproduce

        if toy not in TOYS:
            raise ConfigError(f"unknown toy '{toy}'; choose one of: {', '.join(TOYS)}")
        regimes = REGIMES if regime == "both" else (regime,)
        if regime != "both" and regime not in REGIMES:
            raise ConfigError(f"--regime {regime}: choose nonconvergent, convergent or both")
        from ..params import build, parse_override
        from .main import _registry

        ev = {}
        for item in eval_set or []:
            _, k, v = parse_override(item, section="toy_density", flag="--eval-set")
            ev[k] = v
        # check what fails late (after training) now: the evaluator options and the output
        build(_registry().get("evaluator", "toy_density").Config, ev, where="toy_density")
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file; give a directory")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create --out {out} ({exc.strerror or exc}); choose another "
                              "directory") from None
        console = Console()
        results = reproduce(toy, out, regimes=regimes, fast=fast, overrides=list(set_ or []),
                            eval_overrides=ev, progress=progress, console=console,
                            threads=threads, registry=_registry())
        table = Table(title=f"toy '{toy}'" + (" (fast)" if fast else ""))
        table.add_column("metric")
        for r in results:
            table.add_column(r, justify="right")
        for key in SUMMARY_KEYS:
            table.add_row(key, *(f"{results[r].get(key, float('nan')):.3f}" for r in results))
        console.print(table)
        for reg_, key, v, op, thr, ok, meaning in check_claims(results):
            mark = "[green]holds[/]" if ok else "[red]fails[/]"
            console.print(f"{mark}  {reg_}: {meaning} ({key} = {v:.3f} {op} {thr})", highlight=False)
        for r in results:
            console.print(f"{r}: {out / r / 'eval' / 'toy_panel.png'}", highlight=False)


