"""``mkt index build|add|remove|info``: build and maintain similarity indexes. The work is
:mod:`mkt.runtime.indexing`; this module only reports."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from .dbopts import (
    ImagesTableOpt,
    PathColumnOpt,
    PhotosDirOpt,
    ProductsTableOpt,
    SourceArg,
    source_options,
)
from .errors import err_line
from .options import (
    BatchOpt,
    BundleOpt,
    CredentialsOpt,
    JsonOpt,
    PrecisionOpt,
    ThreadsOpt,
    command,
    load_model,
    new_app,
)
from .output import ProgressBar, console, emit_json, show_kv

index_app = new_app(help="Build and maintain similarity indexes (hnswlib + sqlite).")

IndexArg = Annotated[Path, typer.Argument(help="Index directory.", metavar="INDEX")]
AnyIndexArg = Annotated[str, typer.Argument(
    metavar="INDEX", help="Index directory, or postgresql://user@host/db[?index=NAME] (a "
    "shared pgvector index; password from MKT_DB_PASSWORD or --credentials).")]
WaitOpt = Annotated[float | None, typer.Option(
    "--wait", min=0, metavar="SECONDS",
    help="How long to wait for another command writing the same index before giving up "
         "with 'index busy' (default 60, or MKT_INDEX_WAIT).")]


@contextlib.contextmanager
def _writing(wait: float | None) -> Iterator[None]:
    """Around an index write: ``--wait`` for the runtime (MKT_INDEX_WAIT while it runs, for
    writes made deeper down), and the "index busy" error with what to do about it."""
    from ..runtime.index import IndexBusyError

    old = os.environ.get("MKT_INDEX_WAIT")
    if wait is not None:
        os.environ["MKT_INDEX_WAIT"] = repr(float(wait))
    try:
        yield
    except IndexBusyError as e:
        raise IndexBusyError(f"{e}; try again, or pass --wait SECONDS to wait longer"
                             ) from None
    finally:
        if wait is not None:
            if old is None:
                os.environ.pop("MKT_INDEX_WAIT", None)
            else:
                os.environ["MKT_INDEX_WAIT"] = old


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")


def _with_progress(run: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a :mod:`mkt.runtime.indexing` function with a progress bar, printing each photo
    that fails as it happens."""
    with ProgressBar("embedding") as bar:
        return run(*args, on_error=lambda e: err_line(e.error), progress=bar.update, **kwargs)


@command(index_app, "build")
def index_build_command(
    source: SourceArg,
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR",
                                      help="Index directory to write.")],
    bundle: BundleOpt = None,
    batch: BatchOpt = 32,
    m: Annotated[int, typer.Option("--M", min=2, metavar="N", help="hnsw graph degree.")] = 16,
    ef_construction: Annotated[
        int, typer.Option("--ef-construction", min=1, metavar="N", help="hnsw build breadth.")
    ] = 200,
    ef: Annotated[int, typer.Option("--ef", min=1, metavar="N",
                                    help="hnsw default search breadth (128: recall@10 0.97 "
                                         "at 1M vectors).")] = 128,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing index.")] = False,
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = None,
    wait: WaitOpt = None,
    products_table: ProductsTableOpt = "products",
    images_table: ImagesTableOpt = "images",
    photos: PhotosDirOpt = None,
    path_column: PathColumnOpt = None,
    credentials: CredentialsOpt = None,
) -> None:
    """Embed every photo of SOURCE and write a new index (bad photos reported and skipped)."""
    from ..runtime.errors import MktError
    from ..runtime.index import INDEX_JSON
    from ..runtime.indexing import build_index

    if (out / INDEX_JSON).exists() and not force:  # before loading the model
        raise MktError(f"{out}: an index already exists (use --force, or `mkt index add`)")
    model = load_model(bundle, threads, precision)
    cmdline = _command_line()
    from ..runtime.embed_job import is_vectors_dir

    if is_vectors_dir(source):  # `mkt embed` output: no second model pass
        from ..runtime.embed_job import build_index_from_vectors

        with _writing(wait):
            idx = build_index_from_vectors(model, source, out, M=m,
                                           ef_construction=ef_construction, ef=ef,
                                           overwrite=force, command=cmdline)
        sys.stderr.write(f"mkt: indexed {idx.count} precomputed vectors into {out} (model "
                         f"{idx.model_id}, generation {idx.generation})\n")
        return
    with _writing(wait):
        rep = _with_progress(build_index, model, source, out, M=m,
                             ef_construction=ef_construction, ef=ef, overwrite=force,
                             batch_size=batch, command=cmdline,
                             source_options=source_options(products_table, images_table,
                                                           photos, path_column, credentials))
    idx = rep.index
    sys.stderr.write(f"mkt: indexed {idx.count} photos into {out} (model {idx.model_id}, "
                     f"generation {idx.generation}); {len(rep.errors)} skipped\n")
    if rep.errors:
        raise typer.Exit(1)


@command(index_app, "add")
def index_add_command(
    index: AnyIndexArg,
    sources: Annotated[list[Path], typer.Argument(
        metavar="SOURCE...", help="Photos, folders of photos, or dataset folders.")],
    bundle: BundleOpt = None,
    batch: BatchOpt = 32,
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = None,
    wait: WaitOpt = None,
    credentials: CredentialsOpt = None,
) -> None:
    """Add photos (id = file stem; an existing id is replaced) to an index."""
    from ..runtime.indexing import add_to_index
    from .options import open_index

    model = load_model(bundle, threads, precision)
    idx = open_index(index, model, credentials=credentials)
    idx.wait = wait
    with _writing(wait):
        rep = _with_progress(add_to_index, model, idx, sources, batch_size=batch)
    sys.stderr.write(f"mkt: added {rep.added} photos; index now has {idx.count}\n")
    if rep.errors:
        raise typer.Exit(1)


@command(index_app, "remove")
def index_remove_command(
    index: AnyIndexArg,
    ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Photo ids to remove.")],
    wait: WaitOpt = None,
    credentials: CredentialsOpt = None,
) -> None:
    """Remove photos from an index by id."""
    from .options import open_index

    idx = open_index(index, credentials=credentials)
    idx.wait = wait
    with _writing(wait):
        missing = idx.remove(ids)
    for i in missing:
        err_line(f"{index}: no photo with id '{i}'")
    removed = len(dict.fromkeys(ids)) - len(missing)
    sys.stderr.write(f"mkt: removed {removed} photos; index now has {idx.count}\n")
    if missing:
        raise typer.Exit(1)


@command(index_app, "info")
def index_info_command(index: AnyIndexArg, as_json: JsonOpt = False,
                       credentials: CredentialsOpt = None) -> None:
    """Show an index's model, size and parameters."""
    from .options import open_index

    info = open_index(index, credentials=credentials).info()
    if as_json:
        emit_json(info)
    else:
        show_kv("index", info, console())


def _command_line() -> str:
    """The command as recorded in the index: database URLs with their password removed."""
    from ..runtime.dburl import is_db_url, redact

    return " ".join(["mkt", *(redact(a) if is_db_url(a) else a for a in sys.argv[1:])])


@command(index_app, "sync")
def index_sync_command(
    source: SourceArg,
    index: Annotated[Path, typer.Option("--index", metavar="DIR", help="Index to update.")],
    bundle: BundleOpt = None,
    batch: BatchOpt = 32,
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = None,
    wait: WaitOpt = None,
    products_table: ProductsTableOpt = "products",
    images_table: ImagesTableOpt = "images",
    photos: PhotosDirOpt = None,
    path_column: PathColumnOpt = None,
    credentials: CredentialsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Bring an index up to date with SOURCE: new photos embedded and added, deleted ones
    removed, changed ones updated (only new or changed photo files are embedded again), in
    one atomic write."""
    from ..runtime.sync import sync_index
    from .options import open_index

    model = load_model(bundle, threads, precision)
    idx = open_index(index, model)
    idx.wait = wait
    with _writing(wait):
        rep = _with_progress(sync_index, model, idx, source, batch_size=batch,
                             source_options=source_options(products_table, images_table,
                                                           photos, path_column, credentials))
    if as_json:
        emit_json(rep.to_dict())
    else:
        sys.stdout.write(
            f"added {rep.added}, updated {rep.updated} ({rep.reembedded} re-embedded), "
            f"removed {rep.removed}, unchanged {rep.unchanged}; {len(rep.errors)} failed; "
            f"index now has {idx.count} photos (generation {idx.generation}), "
            f"{rep.seconds:.1f} s\n")
    if rep.errors:
        raise typer.Exit(1)


@command(index_app, "push")
def index_push_command(
    index: IndexArg,
    url: Annotated[str, typer.Argument(
        metavar="URL", help="postgresql://user@host/db[?index=NAME] (default name mkt); "
        "the password from MKT_DB_PASSWORD or --credentials, never in the URL.")],
    credentials: CredentialsOpt = None,
    m: Annotated[int, typer.Option("--M", min=2, max=100, metavar="N",
                                   help="pgvector HNSW graph degree.")] = 16,
    ef_construction: Annotated[int, typer.Option(
        "--ef-construction", min=4, max=1000, metavar="N",
        help="pgvector HNSW build breadth.")] = 64,
) -> None:
    """Copy a local index into PostgreSQL + pgvector (one table per index name, HNSW).

    The old index of that name is replaced in one transaction: a failed push leaves it
    intact. Then `--index URL` works with similar, search, serve, index add/remove.
    """
    from ..runtime.dburl import is_db_url
    from ..runtime.errors import MktError
    from ..runtime.pgindex import push_index
    from .options import open_index

    if not is_db_url(url) or not url.lower().startswith(("postgresql", "postgres")):
        raise MktError(f"{url.split('@')[-1]}: not a postgresql:// URL")
    src = open_index(index)
    pg = push_index(src, url, credentials=credentials, M=m, ef_construction=ef_construction)
    sys.stderr.write(f"mkt: pushed {pg.count} photos (model {src.model_id}) to index "
                     f"'{pg.name}' at {pg.path.split(' (index')[0]}, version {pg.generation}\n")
    pg.close()
