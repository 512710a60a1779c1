"""``mkt classify`` and ``mkt similar``: one answer a photo, bad photos reported, the rest
carry on (exit 1). The work is :mod:`mkt.runtime.batch`; this module only prints."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import warn_line
from .nearopts import NearOpt, WithinOpt, near_options
from .options import (
    AnyIndexOpt,
    BackendOpt,
    BatchOpt,
    BundleOpt,
    CredentialsOpt,
    JsonOpt,
    PhotoArgs,
    PhotosRootOpt,
    PrecisionOpt,
    ThreadsOpt,
    command,
    load_model,
    open_index,
)
from .output import Reporter, console, emit_json, esc, money, write_html


def register(app: typer.Typer) -> None:
    command(app, "classify")(classify_command)
    command(app, "similar")(similar_command)


def classify_command(
    photos: PhotoArgs,
    k: Annotated[int, typer.Option("-k", "--top", min=1, metavar="N",
                                   help="How many categories.")] = 3,
    listing: Annotated[
        bool,
        typer.Option("--listing",
                     help="The photos are one listing: one answer from their mean logits."),
    ] = False,
    title: Annotated[str | None, typer.Option(
        "--title", metavar="TEXT",
        help="The seller's title: the category from photo and title together (a learned "
             "fusion; needs a bundle with a text encoder).")] = None,
    votes: Annotated[bool, typer.Option(
        "--votes", help="The categories of the 25 nearest catalogue photos (--index, default "
                        "the packaged one) vote too: about 2 points more accurate (test split), "
                        "and it loads the index.")] = False,
    index: AnyIndexOpt = None,
    credentials: CredentialsOpt = None,
    as_json: JsonOpt = False,
    bundle: BundleOpt = None,
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = None,
    backend: BackendOpt = None,
    batch: BatchOpt = 32,
) -> None:
    """Classify photos into the 13 marketplace categories (top-k with probabilities)."""
    from ..runtime.batch import PhotoError, classify_photos
    from ..runtime.errors import MktError

    if votes and title is not None:
        raise MktError("--votes and --title cannot be combined")
    if index is not None and not votes:
        raise MktError("--index is used by --votes; add --votes")
    model = load_model(bundle, threads, precision, backend)
    voter = None
    if votes:
        from ..runtime.votes import NeighbourVotes

        voter = NeighbourVotes(open_index(index, model, None, credentials), model.labels)
    n_labels = len(model.labels)
    if k > n_labels:
        warn_line(f"-k {k}: the model has {n_labels} categories; showing all {n_labels}")
        k = n_labels
    rep = Reporter(as_json)
    for r in classify_photos(model, photos, k=k, listing=listing, title=title, batch_size=batch,
                             names=[str(p) for p in photos], votes=voter):
        if isinstance(r, PhotoError):
            rep.error(r)
        elif as_json:
            emit_json(r.to_dict())
        else:
            show_prediction(r)
    rep.finish(len(photos))


def show_prediction(p: Any) -> None:
    """One line a photo. Plain text, no rich: importing rich costs ~0.1 s of cold start."""
    what = p.path if p.paths is None else f"listing ({len(p.paths)} photos)"
    rest = " | ".join(f"{c} {s:.1%}" for c, s in p.top[1:])
    flag = "  [uncertain: low confidence or unlike the catalogue's photos]" if p.uncertain else ""
    sys.stdout.write(f"{what}: {p.category} {p.score:.1%}" + (f"  ({rest})" if rest else "")
                     + flag + "\n")


def similar_command(
    photos: PhotoArgs,
    k: Annotated[int, typer.Option("-k", "--top", min=1, metavar="N",
                                   help="How many results a photo.")] = 10,
    index: AnyIndexOpt = None,
    credentials: CredentialsOpt = None,
    bundle: BundleOpt = None,
    as_json: JsonOpt = False,
    ef: Annotated[int | None, typer.Option("--ef", min=1, metavar="N",
                                           help="hnsw search breadth (recall/speed).")] = None,
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = None,
    backend: BackendOpt = None,
    html: Annotated[
        Path | None,
        typer.Option("--html", metavar="FILE",
                     help="Also write a self-contained HTML page with thumbnails."),
    ] = None,
    photos_root: PhotosRootOpt = None,
    text: Annotated[str | None, typer.Option(
        "--text", metavar="WORDS",
        help='Words too, e.g. --text "in oak": photo and words fused per listing.')] = None,
    near: NearOpt = None,
    within: WithinOpt = None,
) -> None:
    """Find the indexed photos most similar to each photo (cosine similarity)."""
    from ..runtime.batch import PhotoError, similar_photos

    place, within_km = near_options(near, within)
    model = load_model(bundle, threads, precision, backend)
    idx = open_index(index, model, ef, credentials)
    rep = Reporter(as_json)
    con = None if as_json else console()
    resolver = None
    if con is not None:
        from ..runtime.html import PhotoResolver

        resolver = PhotoResolver.for_index(idx, photos_root or ())
    results, failures = [], []
    for r in similar_photos(model, idx, photos, k=k, text=text,
                            names=[str(p) for p in photos], near=place, within_km=within_km):
        if isinstance(r, PhotoError):
            failures.append(r)
            rep.error(r)
            continue
        results.append(r)
        if con is None:
            emit_json(r.to_dict())
        else:
            show_hits(r, con, resolver)
    if html is not None:
        similar_html(html, results, failures, idx, photos_root or ())
    rep.finish(len(photos))


def show_hits(r: Any, con: Any, resolver: Any = None) -> None:
    """A table a photo. Listing columns (category, price, title) when the index has them;
    an index of a plain photo folder has none, so then the file of each hit (the local file
    when it is found, else the path the index recorded)."""
    from rich.table import Table

    flag = " [uncertain: unlike every catalogue photo]" if r.uncertain else ""
    t = Table(title=f"{esc(r.path)}: {len(r.results)} similar{flag}", title_justify="left",
              box=None)
    t.add_column("#", justify="right", style="dim")
    t.add_column("score", justify="right", style="cyan")
    t.add_column("id", no_wrap=True)
    listing = any(h.category or h.title or h.price is not None for h in r.results)
    near = any(h.distance_km is not None or h.location for h in r.results)
    if listing:
        t.add_column("category", style="green", no_wrap=True)
        t.add_column("price", justify="right", no_wrap=True)
        t.add_column("title", overflow="ellipsis", no_wrap=True, max_width=40 if near else 60)
    else:
        t.add_column("file", overflow="fold")
    if near:
        t.add_column("km", justify="right", no_wrap=True)
        t.add_column("location", overflow="ellipsis", no_wrap=True, max_width=24)
    hits = getattr(r, "hits", None) or [None] * len(r.results)
    for rank, (h, raw) in enumerate(zip(r.results, hits, strict=False), 1):
        row = [str(rank), f"{h.score:.3f}", esc(h.id)]
        if listing:
            row += [esc(h.category or ""), money(h.price), esc(h.title or "")]
        else:
            path = ((raw.meta or {}).get("path") if raw is not None else None) or ""
            local = resolver.resolve(path) if resolver is not None and path else None
            row.append(esc(local or path))
        if near:
            row += ["?" if h.distance_km is None else f"{h.distance_km:.0f}",
                    esc(h.location or "")]
        t.add_row(*row)
    con.print(t)


def similar_html(path: Path, results: list[Any], failures: list[Any], index: Any,
                 roots: Any) -> None:
    """``--html``: the page of every query and its hits; says how many photos are missing."""
    from ..runtime.html import PhotoResolver, similar_page
    from .errors import warn_line

    resolver = PhotoResolver.for_index(index, roots)
    total = sum(len(r.hits) for r in results)
    missing = sum(1 for r in results for h in r.hits if not resolver.resolve(h.meta.get("path")))
    sub = (f"index {index.path} ({index.count} photos); {total - missing} of {total} result "
           "photos local")
    page = similar_page([(r.path, r.hits) for r in results], resolver=resolver,
                        errors=[(f.path, f.error) for f in failures], subtitle=sub)
    write_html(path, page)
    if missing:
        warn_line(f"{path}: {missing} of {total} result photos not found locally (the index "
                  "was built from another folder: give --photos-root DIR)")
