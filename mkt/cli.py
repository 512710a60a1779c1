"""The ``mkt`` command line (typer). Entry point: ``mkt.cli:main``.

Runtime commands (classify, similar, index, info) use only the torch-free runtime. The
training/export commands live in ``mkt.cli_train`` / ``mkt.cli_export``, which import only
typer at top level, so registering them here keeps ``mkt --help`` torch-free too.

Conventions: ``--json`` prints one JSON object per line on stdout. A bad photo gives one error
line (stderr, or ``{"path", "error"}`` on stdout with ``--json``) and the others carry on;
exit code 1 for such partial failures, 2 for fatal/usage errors. Never a traceback (set
``MKT_DEBUG=1`` to get one).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from .runtime.errors import BadImageError, MktError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="mkt",
    help="Classify second-hand marketplace photos into 13 categories and find similar listings.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
index_app = typer.Typer(
    help="Build and maintain similarity indexes (hnswlib + sqlite).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(index_app, name="index")

# -- output helpers ---------------------------------------------------------------------------


def _emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _err_line(msg: str) -> None:
    sys.stderr.write(f"mkt: error: {' '.join(str(msg).split())}\n")
    sys.stderr.flush()


def _warn_line(msg: str) -> None:
    sys.stderr.write(f"mkt: warning: {' '.join(str(msg).split())}\n")
    sys.stderr.flush()


def _report_bad(path: str, err: Exception, as_json: bool) -> None:
    """One line for one bad photo: JSON on stdout with --json, else on stderr."""
    msg = str(err)
    if as_json:
        _emit_json({"path": path, "error": msg})
    else:
        _err_line(msg)


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    # soft_wrap: one result = one line even when piped (no hard wraps at 80 columns); tables
    # get a wide canvas when piped instead of rich's 80-column default.
    con = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not con.is_terminal and "COLUMNS" not in os.environ:
        con = Console(stderr=stderr, highlight=False, soft_wrap=True, width=160)
    return con


def _esc(s: Any) -> str:
    from rich.markup import escape

    return escape(str(s))


def _guard(f: F) -> F:
    """Turn MktError / unexpected exceptions into one ``mkt: error:`` line + exit code."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except MktError as e:
            _err_line(str(e))
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            _err_line("interrupted")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            _quiet_broken_pipe()
            raise typer.Exit(1) from None
        except Exception as e:
            if os.environ.get("MKT_DEBUG"):
                raise
            _err_line(f"unexpected {type(e).__name__}: {e} (MKT_DEBUG=1 for a traceback)")
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _quiet_broken_pipe() -> None:
    # `mkt ... | head`: stop writing without a second error at interpreter exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


# -- shared pieces ----------------------------------------------------------------------------


def _load_model(bundle: Path | None, threads: int | None = None) -> Any:
    from .runtime.model import Model

    return Model(bundle, threads=threads)


def _load_batches(
    sources: Sequence[Any], size: int, batch: int, workers: int
) -> Iterator[list[tuple[int, Any]]]:
    """Decode + letterbox photos in threads, yielding batches of (position, array|error)."""
    from concurrent.futures import ThreadPoolExecutor

    from .runtime.images import load_letterboxed

    def one(src: Any) -> Any:
        try:
            return load_letterboxed(src, size)
        except BadImageError as e:
            return e
        except MktError as e:  # pragma: no cover - defensive
            return BadImageError(str(e))

    batch = max(1, int(batch))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        for start in range(0, len(sources), batch):
            chunk = sources[start : start + batch]
            yield list(enumerate(ex.map(one, chunk), start=start))


def _progress() -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    con = _console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=con,
        disable=not con.is_terminal,
        transient=False,
    )


def _fmt_price(p: Any) -> str:
    if p is None:
        return ""
    return f"£{float(p):,.2f}"


# -- classify ---------------------------------------------------------------------------------

PhotoArgs = Annotated[list[Path], typer.Argument(help="Photo files (JPEG, PNG, WebP, ...).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per line on stdout.")]
BundleOpt = Annotated[
    Path | None,
    typer.Option("--bundle", help="Model bundle dir (default: the packaged one)."),
]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", min=1, help="onnxruntime threads (default: <= 4).")
]


@app.command("classify")
@_guard
def classify_command(
    photos: PhotoArgs,
    k: Annotated[int, typer.Option("-k", "--top", min=1, help="How many categories.")] = 3,
    listing: Annotated[
        bool,
        typer.Option(
            "--listing", help="The photos are one listing: one answer from their mean logits."
        ),
    ] = False,
    as_json: JsonOpt = False,
    bundle: BundleOpt = None,
    threads: ThreadsOpt = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Photos per inference.")] = 32,
) -> None:
    """Classify photos into the 13 marketplace categories (top-k with probabilities)."""
    import numpy as np

    model = _load_model(bundle, threads)
    names = [str(p) for p in photos]
    bad = 0
    con = None if as_json else True
    listing_arrays: list[Any] = []
    listing_names: list[str] = []
    for items in _load_batches(photos, model.input_size, batch, model.threads):
        good = []
        for i, x in items:
            if isinstance(x, Exception):
                bad += 1
                _report_bad(names[i], x, as_json)
            else:
                good.append((i, x))
        if not good:
            continue
        if listing:
            listing_arrays += [x for _, x in good]
            listing_names += [names[i] for i, _ in good]
            continue
        preds = model.classify_arrays(
            np.stack([x for _, x in good]), [names[i] for i, _ in good], k=k
        )
        for p in preds:
            _show_prediction(p, con)
    if listing and listing_arrays:
        p = model.classify_arrays(np.stack(listing_arrays), listing_names, k=k, listing=True)[0]
        _show_prediction(p, con)
    if bad:
        if not as_json:
            _err_line(f"{bad} of {len(names)} photos could not be read")
        raise typer.Exit(1)


def _show_prediction(p: Any, con: Any) -> None:
    """One line a photo. Plain text, no rich: importing rich costs ~0.1 s of cold start."""
    if con is None:
        _emit_json(p.to_dict())
        return
    what = p.path if p.paths is None else f"listing ({len(p.paths)} photos)"
    rest = " | ".join(f"{c} {s:.1%}" for c, s in p.top[1:])
    sys.stdout.write(f"{what}: {p.category} {p.score:.1%}" + (f"  ({rest})" if rest else "") + "\n")


# -- similar ----------------------------------------------------------------------------------


@app.command("similar")
@_guard
def similar_command(
    photos: PhotoArgs,
    k: Annotated[int, typer.Option("-k", "--top", min=1, help="How many results a photo.")] = 10,
    index: Annotated[
        Path | None,
        typer.Option("--index", help="Index dir (default: the packaged catalogue index)."),
    ] = None,
    bundle: BundleOpt = None,
    as_json: JsonOpt = False,
    ef: Annotated[
        int | None, typer.Option("--ef", min=1, help="hnsw search breadth (recall/speed).")
    ] = None,
    threads: ThreadsOpt = None,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="Also write a self-contained HTML page with thumbnails."),
    ] = None,
) -> None:
    """Find the indexed photos most similar to each photo (cosine similarity)."""
    import numpy as np

    from .runtime.index import Index

    model = _load_model(bundle, threads)
    idx = Index.open(index, model_id=model.model_id)
    if ef:
        idx.set_ef(ef)
    names = [str(p) for p in photos]
    bad = 0
    con = None if as_json else _console()
    page: list[Any] = []  # (query, hits) and (path, error) for --html
    page_errors: list[tuple[str, str]] = []
    for items in _load_batches(photos, model.input_size, 32, model.threads):
        good = []
        for i, x in items:
            if isinstance(x, Exception):
                bad += 1
                page_errors.append((names[i], str(x)))
                _report_bad(names[i], x, as_json)
            else:
                good.append((i, x))
        if not good:
            continue
        emb = model.embed_arrays(np.stack([x for _, x in good]))
        for (i, _), hits in zip(good, idx.search(emb, k), strict=True):
            page.append((names[i], hits))
            if con is None:
                _emit_json({"path": names[i], "results": [h.to_dict() for h in hits]})
            else:
                _show_hits(names[i], hits, con)
    if html is not None:
        from .cli_market import write_similar_html

        write_similar_html(html, page, page_errors, idx)
    if bad:
        if not as_json:
            _err_line(f"{bad} of {len(names)} photos could not be read")
        raise typer.Exit(1)


def _show_hits(name: str, hits: list[Any], con: Any) -> None:
    from rich.table import Table

    t = Table(title=f"{_esc(name)}: {len(hits)} similar", title_justify="left", box=None)
    t.add_column("#", justify="right", style="dim")
    t.add_column("score", justify="right", style="cyan")
    t.add_column("id", no_wrap=True)
    t.add_column("category", style="green", no_wrap=True)
    t.add_column("price", justify="right", no_wrap=True)
    t.add_column("title", overflow="ellipsis", no_wrap=True, max_width=60)
    for r, h in enumerate(hits, 1):
        m = h.meta
        t.add_row(
            str(r), f"{h.score:.3f}", _esc(h.id), _esc(m.get("category") or ""),
            _fmt_price(m.get("price")), _esc(m.get("title") or ""),
        )
    con.print(t)


# -- index ------------------------------------------------------------------------------------


def _embed_items(
    model: Any, items: list[Any], batch: int, description: str
) -> tuple[list[Any], Any, int]:
    """Embed catalogue items with a progress bar; report + skip bad photos.

    Returns (good items, vectors [n, D], number bad)."""
    import numpy as np

    good_items: list[Any] = []
    parts: list[Any] = []
    bad = 0
    seen: set[str] = set()
    uniq = []
    for it in items:
        if it.id in seen:
            bad += 1
            _err_line(f"{it.path}: duplicate photo id '{it.id}', skipped")
            continue
        seen.add(it.id)
        uniq.append(it)
    prog = _progress()
    with prog:
        task = prog.add_task(description, total=len(uniq))
        paths = [it.path for it in uniq]
        for chunk in _load_batches(paths, model.input_size, batch, model.threads):
            ok = []
            for i, x in chunk:
                if isinstance(x, Exception):
                    bad += 1
                    _err_line(str(x))  # rich redirects stderr above a live bar
                else:
                    ok.append((i, x))
            if ok:
                parts.append(model.embed_arrays(np.stack([x for _, x in ok])))
                good_items += [uniq[i] for i, _ in ok]
            prog.advance(task, len(chunk))
            if prog.disable:  # not a terminal (logs, CI): a plain line every ~10%
                done = chunk[-1][0] + 1
                step = max(1, len(uniq) // 10)
                if done == len(uniq) or done // step != (done - len(chunk)) // step:
                    sys.stderr.write(f"mkt: {description} {done}/{len(uniq)}\n")
    vecs = np.concatenate(parts) if parts else np.zeros((0, model.embedding_dim), np.float32)
    return good_items, vecs, bad


@index_app.command("build")
@_guard
def index_build_command(
    source: Annotated[
        Path,
        typer.Argument(
            help="Dataset folder (Products.csv, Images.csv, images/) or a folder of photos."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index directory to write.")],
    bundle: BundleOpt = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Photos per inference.")] = 32,
    m: Annotated[int, typer.Option("--M", min=2, help="hnsw graph degree.")] = 16,
    ef_construction: Annotated[
        int, typer.Option("--ef-construction", min=1, help="hnsw build breadth.")
    ] = 200,
    ef: Annotated[int, typer.Option("--ef", min=1, help="hnsw default search breadth.")] = 64,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing index.")] = False,
    threads: ThreadsOpt = None,
) -> None:
    """Embed every photo of SOURCE and write a new index (bad photos reported and skipped)."""
    from .runtime.catalogue import iter_source
    from .runtime.index import INDEX_JSON, Index

    if (out / INDEX_JSON).exists() and not force:
        raise MktError(f"{out}: an index already exists (use --force, or `mkt index add`)")
    model = _load_model(bundle, threads)
    items = iter_source(source)
    if not items:
        raise MktError(f"{source}: no photos found")
    root = source if source.is_dir() else source.parent
    good, vecs, bad = _embed_items(model, items, batch, "embedding")
    idx = Index.create(
        out, model_id=model.model_id, dim=model.embedding_dim, M=m,
        ef_construction=ef_construction, ef=ef, overwrite=force,
        ids=[it.id for it in good], vectors=vecs, meta=[it.meta(root) for it in good],
        provenance={"source": str(source), "command": " ".join(["mkt", *sys.argv[1:]]),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "photos": len(items), "skipped": bad},
    )
    sys.stderr.write(
        f"mkt: indexed {idx.count} photos into {out} (model {idx.model_id}, "
        f"generation {idx.generation}); {bad} skipped\n"
    )
    if bad:
        raise typer.Exit(1)


@index_app.command("add")
@_guard
def index_add_command(
    index: Annotated[Path, typer.Argument(help="Index directory.")],
    sources: Annotated[
        list[Path], typer.Argument(help="Photos, folders of photos, or dataset folders.")
    ],
    bundle: BundleOpt = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Photos per inference.")] = 32,
    threads: ThreadsOpt = None,
) -> None:
    """Add photos (id = file stem; an existing id is replaced) to an index."""
    from .runtime.catalogue import iter_source
    from .runtime.errors import CatalogueError
    from .runtime.index import Index

    model = _load_model(bundle, threads)
    idx = Index.open(index, model_id=model.model_id)
    items, metas = [], []
    bad = 0
    for s in sources:
        try:
            got = iter_source(s)
        except CatalogueError as e:
            bad += 1
            _err_line(str(e))
            continue
        if not got:  # a folder without photos: say so rather than add nothing silently
            bad += 1
            _err_line(f"{s}: no photos found")
            continue
        root = s if s.is_dir() else s.parent
        items += got
        metas += [(it, root) for it in got]
    good, vecs, bad2 = _embed_items(model, items, batch, "embedding")
    roots = {id(it): r for it, r in metas}
    n = idx.add([it.id for it in good], vecs, [it.meta(roots.get(id(it))) for it in good])
    sys.stderr.write(f"mkt: added {n} photos; index now has {idx.count}\n")
    if bad or bad2:
        raise typer.Exit(1)


@index_app.command("remove")
@_guard
def index_remove_command(
    index: Annotated[Path, typer.Argument(help="Index directory.")],
    ids: Annotated[list[str], typer.Argument(help="Photo ids to remove.")],
) -> None:
    """Remove photos from an index by id."""
    from .runtime.index import Index

    idx = Index.open(index)
    before = idx.count
    missing = idx.remove(ids)
    for i in missing:
        _err_line(f"{index}: no photo with id '{i}'")
    sys.stderr.write(f"mkt: removed {before - idx.count} photos; index now has {idx.count}\n")
    if missing:
        raise typer.Exit(1)


@index_app.command("info")
@_guard
def index_info_command(
    index: Annotated[Path, typer.Argument(help="Index directory.")],
    as_json: JsonOpt = False,
) -> None:
    """Show an index's model, size and parameters."""
    from .runtime.index import Index

    info = Index.open(index).info()
    if as_json:
        _emit_json(info)
    else:
        _show_kv("index", info, _console())


def _show_kv(title: str, d: dict[str, Any], con: Any) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_header=False, box=None)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for key, v in d.items():
        if isinstance(v, (dict, list)):
            v = json.dumps(v, ensure_ascii=False)
        t.add_row(_esc(key), _esc(v))
    con.print(t)


# -- info -------------------------------------------------------------------------------------


@app.command("info")
@_guard
def info_command(
    bundle: BundleOpt = None,
    index: Annotated[
        Path | None, typer.Option("--index", help="Index dir (default: the packaged one).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the bundle and index in use, and library versions."""
    import platform

    from . import __version__
    from .runtime.bundle import load_bundle
    from .runtime.index import Index

    out: dict[str, Any] = {"mkt": __version__, "python": platform.python_version()}
    versions: dict[str, str] = {}
    from importlib import metadata

    for dist in ("onnxruntime", "numpy", "pillow", "hnswlib", "typer"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "missing"
    out["versions"] = versions
    fatal = None
    b = None
    try:
        b = load_bundle(bundle)
        out["bundle"] = b.summary()
    except MktError as e:
        out["bundle"] = {"error": str(e)}
        fatal = fatal or (e if bundle is not None else None)
    try:
        idx = Index.open(index)
        info = idx.info()
        if b is not None:
            info["matches_bundle"] = info["model_id"] == b.model_id
        out["index"] = info
    except MktError as e:
        out["index"] = {"error": str(e)}
        fatal = fatal or (e if index is not None else None)
    if as_json:
        _emit_json(out)
    else:
        con = _console()
        con.print(f"mkt {__version__} (python {out['python']}; " + ", ".join(
            f"{k} {v}" for k, v in versions.items()) + ")", markup=False)
        for key in ("bundle", "index"):
            d = dict(out[key])
            d.pop("labels", None)
            _show_kv(key, d, con)
        if b is not None:
            con.print("labels: " + " | ".join(b.labels), markup=False)
    if fatal is not None:
        _err_line(str(fatal))  # the same one line as every other command, on stderr
        raise typer.Exit(fatal.exit_code)


# -- commands owned by the training / export side (lazy: never import torch here) -------------


def _missing_extra(name: str, err: BaseException) -> Callable[..., None]:
    def stub(ctx: typer.Context) -> None:
        _err_line(
            f"`mkt {name}` needs the training extras: pip install 'mkt[train]' ({err})"
        )
        raise typer.Exit(2)

    stub.__doc__ = f"Unavailable here: `mkt {name}` needs the train extra installed."
    return stub


_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


def _register_optional() -> None:
    try:
        from . import cli_train
    except ImportError as e:
        for name in ("data", "train", "evaluate"):
            app.command(name, context_settings=_EXTRA, add_help_option=False)(
                _missing_extra(name, e)
            )
    else:
        app.add_typer(cli_train.data_app, name="data")
        app.add_typer(cli_train.train_app, name="train")
        app.command("evaluate")(cli_train.evaluate_command)
    try:
        from . import cli_export
    except ImportError as e:
        app.command("export", context_settings=_EXTRA, add_help_option=False)(
            _missing_extra("export", e)
        )
    else:
        app.command("export")(cli_export.export_command)
    # Further command modules: each defines ``<name>_command`` functions and imports only
    # typer/stdlib at module level (heavy imports inside the command bodies).
    import importlib

    for module, names in (("cli_market", ("price", "dupes", "serve")), ("cli_bench", ("bench",))):
        try:
            mod = importlib.import_module(f".{module}", __package__)
        except ImportError:
            continue
        for name in names:
            fn = getattr(mod, f"{name}_command", None)
            if fn is not None:
                app.command(name)(fn)


_register_optional()


# -- entry point ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: run the app, never show a traceback, exit 0/1/2.

    Typer's standalone mode handles usage errors (exit 2) and ``typer.Exit``; commands turn
    MktError into one line themselves (``_guard``); anything that still escapes ends here.
    """
    try:
        app(args=list(argv) if argv is not None else None, prog_name="mkt")
    except SystemExit:
        raise
    except KeyboardInterrupt:
        _err_line("interrupted")
        sys.exit(130)
    except MktError as e:
        _err_line(str(e))
        sys.exit(e.exit_code)
    except BrokenPipeError:
        _quiet_broken_pipe()
        sys.exit(1)
    except Exception as e:
        if os.environ.get("MKT_DEBUG"):
            raise
        _err_line(f"unexpected {type(e).__name__}: {e} (MKT_DEBUG=1 for a traceback)")
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
