"""``mkt search QUERY...``: listings for words (lexical + semantic + cross-modal, fused)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .nearopts import NearOpt, WithinOpt, near_options
from .options import (
    AnyIndexOpt,
    BundleOpt,
    CredentialsOpt,
    JsonOpt,
    PhotosRootOpt,
    ThreadsOpt,
    command,
    open_index,
)
from .output import Reporter, console, emit_json, esc, money, write_html


def register(app: typer.Typer) -> None:
    command(app, "search")(search_command)


def search_command(
    queries: Annotated[list[str], typer.Argument(
        metavar="QUERY...", help="One or more text queries (quote each), answered in order.")],
    k: Annotated[int, typer.Option("-k", "--top", min=1, max=1000, metavar="N",
                                   help="How many listings a query.")] = 10,
    index: AnyIndexOpt = None,
    credentials: CredentialsOpt = None,
    bundle: BundleOpt = None,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
    html: Annotated[Path | None, typer.Option(
        "--html", metavar="FILE", help="Also write an HTML page with a thumbnail a listing.")
    ] = None,
    photos_root: PhotosRootOpt = None,
    near: NearOpt = None,
    within: WithinOpt = None,
) -> None:
    """Search listings by words: title and description words (BM25), meaning (the text
    encoder) and photos (the image model's text head), fused by reciprocal rank."""
    from ..runtime.bundle import load_bundle
    from ..runtime.search import QueryError, search_each
    from ..runtime.text import TextEncoder
    from .errors import warn_line

    place, within_km = near_options(near, within)
    b = load_bundle(bundle)
    idx = open_index(index, b, credentials=credentials)
    encoder = TextEncoder.from_bundle(b, threads=threads)
    rep = Reporter(as_json)
    results, failures, truncated = [], [], False
    for r in search_each(idx, encoder, queries, k, near=place, within_km=within_km):
        if isinstance(r, QueryError):
            failures.append(r)
            rep.error(_Failure(r.query, r.error, r.to_dict()))
            continue
        results.append(r)
        if r.truncated and not truncated:
            truncated = True
            warn_line(f"a query longer than the text model reads ({encoder.max_tokens} "
                      "tokens) was cut to fit")
        if as_json:
            emit_json(r.to_dict())
        else:
            _show(r)
    if html is not None:
        from ..runtime.html import PhotoResolver, search_page

        meta = idx.photos_meta([h.id for r in results for h in r.results])
        write_html(html, search_page(
            results, meta, resolver=PhotoResolver.for_index(idx, photos_root or ()),
            errors=[(f.query, f.error) for f in failures],
            subtitle=f"index {idx.path} ({idx.count} photos)"))
    rep.finish(len(queries), "queries")


class _Failure:
    """What :class:`~mkt.cli.output.Reporter` prints for a query that failed."""

    def __init__(self, query: str, error: str, d: dict[str, Any]) -> None:
        self.path, self.error, self._d = query, error, d

    def to_dict(self) -> dict[str, Any]:
        return self._d


def _show(r: Any) -> None:
    from rich.table import Table

    t = Table(title=f"“{esc(r.query)}”: {len(r.results)} listings", title_justify="left",
              box=None)
    t.add_column("#", justify="right", style="dim")
    t.add_column("score", justify="right", style="cyan")
    t.add_column("category", style="green", no_wrap=True)
    t.add_column("price", justify="right", no_wrap=True)
    t.add_column("title", overflow="ellipsis", no_wrap=True, max_width=60)
    near = any(h.distance_km is not None or h.location for h in r.results)
    if near:
        t.add_column("km", justify="right", no_wrap=True)
        t.add_column("location", overflow="ellipsis", no_wrap=True, max_width=24)
    for i, h in enumerate(r.results, 1):
        row = [str(i), f"{h.score:.4f}", esc(h.category or ""), money(h.price),
               esc(h.title or h.id)]
        if near:
            row += ["?" if h.distance_km is None else f"{h.distance_km:.0f}",
                    esc(h.location or "")]
        t.add_row(*row)
    console().print(t)
    sys.stdout.flush()


__all__ = ["search_command"]
