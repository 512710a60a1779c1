"""``mkt export``: checkpoint -> bundle (the ``train`` extra).

Only typer and the standard library are imported here; torch/onnx load inside the command, and
without the extra the command fails with exit 2 and the line that says what to install.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from .errors import err_line, require_extra
from .options import command

METHODS = ("minmax", "entropy", "percentile")


def register(app: typer.Typer) -> None:
    command(app, "export")(export_command)


def export_command(
    checkpoint: Path = typer.Argument(..., exists=True, dir_okay=False,
                                      help="Training checkpoint (.pt, docs/design.md format)."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle directory to write."),
    data: Path | None = typer.Option(
        None, "--data", file_okay=False,
        help="Cleaned data dir (calibration: train split, parity: test split). "
             "Default: the checkpoint's data.clean_dir."),
    photos: Path | None = typer.Option(
        None, "--photos", exists=True, file_okay=False,
        help="A folder of photos for both calibration and parity instead of --data "
             "(no labels: no accuracy numbers)."),
    int8_only: bool = typer.Option(False, "--int8-only", help="Leave model.fp32.onnx out."),
    calib: int = typer.Option(300, "--calib", min=1, help="Number of calibration photos."),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration/parity sample."),
    calibrate_method: str = typer.Option(
        "minmax", "--calibrate-method",
        help="Calibration method tried first: minmax | entropy | percentile."),
    parity_limit: int | None = typer.Option(
        None, "--parity-limit", min=1, help="At most this many parity photos (default: all)."),
    tries: str | None = typer.Option(
        None, "--tries", help="Comma-separated quantisation configs to run (names as in "
                              "parity.json, e.g. minmax-u8-rr); default: the full list."),
    exhaustive: bool = typer.Option(
        False, "--exhaustive", help="Run every quantisation config and keep the best, instead "
                                    "of stopping at the first that meets the targets."),
    text: bool = typer.Option(
        False, "--text/--no-text",
        help="Ship the all-MiniLM-L6-v2 text encoder (for mkt search, --title, --text) and, "
             "with --data, the photo + title fusion fitted on it."),
) -> None:
    """Export a checkpoint to a bundle: fp32 + static int8 ONNX, parity report, manifest."""
    require_extra("train", "export", "torch", "onnx")
    if calibrate_method not in METHODS:
        raise typer.BadParameter(f"choose from {', '.join(METHODS)}",
                                 param_hint="--calibrate-method")
    if data is not None and photos is not None:
        raise typer.BadParameter("give --data or --photos, not both", param_hint="--photos")

    from mkt.export import export_bundle
    from mkt.export.quantize import default_tries

    chosen_tries = None
    if tries:
        known = {t.name: t for t in default_tries(calibrate_method)}
        names = [n.strip() for n in tries.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise typer.BadParameter(f"unknown {unknown}; choose from {', '.join(known)}",
                                     param_hint="--tries")
        chosen_tries = [known[n] for n in names]

    def log(msg: str) -> None:
        typer.echo(msg, err=True)

    command = shlex.join(["mkt", *sys.argv[1:]])
    try:
        manifest = export_bundle(
            checkpoint, out, data=data, photos=photos, int8_only=int8_only, calib=calib,
            seed=seed, calibrate_method=calibrate_method, parity_limit=parity_limit,
            exhaustive=exhaustive, command=command, log=log, tries=chosen_tries, text=text,
        )
    except (OSError, ValueError, RuntimeError) as e:
        err_line(e)
        raise typer.Exit(2) from None
    typer.echo(str(out))
    if not manifest["parity"]["meets_targets"]:
        typer.echo("mkt: warning: int8 model misses the parity targets; see parity.json",
                   err=True)


__all__ = ["export_command"]
