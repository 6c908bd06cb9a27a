"""``ebmkit reproduce ...``: the papers' experiments on real data (:mod:`ebmkit.reproductions`)."""

from __future__ import annotations

from pathlib import Path

import typer

reproduce_app = typer.Typer(help="Reproduce the papers' claims on real data and check them.",
                            no_args_is_help=True)


def add_commands(app) -> None:
    app.add_typer(reproduce_app, name="reproduce")


@reproduce_app.command("digits")
def digits_command(
    regime: str = typer.Option("both", help="nonconvergent, convergent or both."),
    out: Path = typer.Option(Path("runs/digits"), "--out", "-o", help="Output directory."),
    fast: bool = typer.Option(False, help="Shortened runs: only the direction of the effects, in about a minute."),
    set_: list[str] | None = typer.Option(
        None, "--set", help="Training override SECTION.KEY=VALUE for both regimes, or "
                            "REGIME:SECTION.KEY=VALUE for one (repeatable)."),
    eval_set: list[str] | None = typer.Option(
        None, "--eval-set", help="digits-longrun option KEY=VALUE (repeatable), e.g. steps=100000."),
    progress: bool = typer.Option(True, help="Show the training progress bar."),
    threads: int = typer.Option(1, min=0, help="torch intra-op threads (0 = torch's default)."),
):
    """Anatomy §3-4 on real 8x8 digits: train both regimes, evaluate long runs, check the claims.

    Trains the presets digits8-nonconvergent and digits8-convergent into OUT/<regime>, runs the
    digits-longrun evaluator on each, draws OUT/digits_side_by_side.png and prints which claims
    hold (docs/reproductions/digits.md).
    """
    from rich.console import Console
    from rich.table import Table

    from ..errors import ConfigError
    from ..params import parse_override
    from ..reproductions.digits import REGIMES, SUMMARY_KEYS, check_claims, reproduce
    from .main import _registry

    if regime != "both" and regime not in REGIMES:
        raise ConfigError(f"--regime {regime}: choose nonconvergent, convergent or both")
    regimes = REGIMES if regime == "both" else (regime,)
    overrides: dict[str, list[str]] = {r: [] for r in REGIMES}
    for item in set_ or []:
        head, sep, rest = item.partition(":")
        if sep and head in REGIMES:
            overrides[head].append(rest)
        else:
            for r in REGIMES:
                overrides[r].append(item)
    ev = {}
    for item in eval_set or []:
        _, k, v = parse_override(item, section="digits-longrun", flag="--eval-set")
        ev[k] = v
    console = Console()
    results = reproduce(out, regimes=regimes, fast=fast, overrides=overrides, eval_overrides=ev,
                        progress=progress, console=console, threads=threads, registry=_registry())
    table = Table(title="digits8" + (" (fast)" if fast else ""))
    table.add_column("metric")
    for r in results:
        table.add_column(r, justify="right")
    for key in SUMMARY_KEYS:
        table.add_row(key, *(f"{results[r].get(key, float('nan')):.4g}" for r in results))
    console.print(table)
    for reg_, key, v, op, thr, ok, meaning in check_claims(results):
        mark = "[green]holds[/]" if ok else "[red]fails[/]"
        console.print(f"{mark}  {reg_}: {meaning} ({key} = {v:.4g} {op} {thr})", highlight=False)
    console.print(f"figure: {out / 'digits_side_by_side.png'}", highlight=False)
    for r in results:
        console.print(f"{r}: {out / r / 'eval'}", highlight=False)
