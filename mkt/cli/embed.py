"""``mkt embed SOURCE --out VECTORS_DIR``: batch embedding to Parquet shards, locally or on
Ray (the ``scale`` extra). The work is :mod:`mkt.runtime.embed_job`; this module reports."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .errors import err_line
from .options import BundleOpt, JsonOpt, PrecisionOpt, ThreadsOpt, command, load_model
from .output import ProgressBar, emit_json


def register(app: typer.Typer) -> None:
    command(app, "embed")(embed_command)


def embed_command(
    source: Annotated[str, typer.Argument(
        metavar="SOURCE", help="Dataset folder, folder of photos, or a .parquet/.csv photo "
        "list (column path; optional id, product_id, title, price, ...; local or a URI).")],
    out: Annotated[Path, typer.Option(
        "--out", "-o", metavar="DIR", help="Vectors directory to write (Parquet shards); "
        "with --address, a folder every node of the cluster sees (shared mount).")],
    engine: Annotated[str, typer.Option("--engine", metavar="local|ray",
                                        help="Where the model runs.")] = "local",
    address: Annotated[str | None, typer.Option(
        "--address", metavar="ADDR",
        help="Ray cluster to join (ray://host:10001 or auto); default: a local Ray.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, metavar="N",
                                            help="Photos per inference.")] = 32,
    actors: Annotated[int | None, typer.Option(
        "--actors", min=1, metavar="N",
        help="Ray actors (one model session each; default: (cluster CPUs - 1) / "
             "--threads, one CPU left for Ray's read/write tasks).")] = None,
    bundle: BundleOpt = None,
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing vectors "
                                        "directory.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Embed every photo of SOURCE into Parquet shards (bad photos become error rows).

    The output feeds `mkt index build VECTORS_DIR` without a second model pass.
    """
    from ..runtime.embed_job import need, run_embed_job

    need("pyarrow")
    if engine == "ray":
        need("ray")
    model = load_model(bundle, threads if engine == "local" else 1, precision)
    with ProgressBar("embedding") as bar:
        rep = run_embed_job(model, source, out, engine=engine, address=address,
                            batch_size=batch_size, actors=actors,
                            threads_per_actor=threads, overwrite=force,
                            progress=bar.update)
    for e in rep.errors:
        err_line(e.error)
    m = rep.manifest
    if as_json:
        emit_json({k: m[k] for k in ("model_id", "dim", "count", "errors", "engine",
                                     "seconds", "shards")} | {"out": str(out)})
    sys.stderr.write(f"mkt: embedded {rep.count} photos into {out} ({len(m['shards'])} "
                     f"shards, model {m['model_id']}, engine {engine}, {m['seconds']} s); "
                     f"{len(rep.errors)} failed\n")
    if rep.errors:
        raise typer.Exit(1)
