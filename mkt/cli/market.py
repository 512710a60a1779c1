"""``mkt price`` and ``mkt dupes``: the marketplace tools. The rules and flows are
:mod:`mkt.runtime.price` / :mod:`mkt.runtime.dupes`; this module only prints."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import warn_line
from .options import (
    BackendOpt,
    BatchOpt,
    BundleOpt,
    IndexOpt,
    JsonOpt,
    PhotoArgs,
    PhotosRootOpt,
    PrecisionOpt,
    ThreadsOpt,
    command,
    load_model,
    open_index,
)
from .output import Reporter, emit_json, money, write_html

# Shown in --help; tests check they match mkt.runtime.price / mkt.runtime.dupes (those are not
# imported here: numpy would cost every command's cold start).
K_HELP = "How many listings vote (default 40, tuned on the val split)."
T_HELP = ("Cosine similarity from which two photos may be copies of one picture (default 0.8, "
          "calibrated on the marketplace photos). Such a pair counts when its dHash distance "
          "is small too (see --hash-distance), or when its cosine is >= 0.97.")


def register(app: typer.Typer) -> None:
    command(app, "price")(price_command)
    command(app, "dupes")(dupes_command)


def price_command(
    photos: PhotoArgs,
    k: Annotated[int | None, typer.Option("-k", "--top", min=1, metavar="N",
                                          help=K_HELP)] = None,
    index: IndexOpt = None,
    bundle: BundleOpt = None,
    listing: Annotated[
        bool, typer.Option("--listing", help="The photos are one listing: one suggestion.")
    ] = False,
    exclude_self: Annotated[
        bool,
        typer.Option(
            "--exclude-self",
            help="Ignore the query's own photo in the index (same file name stem, or cosine "
            ">= 0.999: the same picture) and its listing: for pricing a photo that is "
            "already in the catalogue.",
        ),
    ] = False,
    title: Annotated[str | None, typer.Option(
        "--title", metavar="TEXT",
        help="The seller's title: neighbours are found by photo and title together "
             "(needs a bundle with a text encoder).")] = None,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = None,
    backend: BackendOpt = None,
) -> None:
    """Suggest a price from the nearest listings: similarity-weighted mean of their log prices.

    One vote per listing (its best photo), listings priced £0 or above £100,000 are ignored;
    the range is the 25th-75th percentile. JSON: {"path", "price", "low", "high",
    "neighbours": [{"id", "product_id", "title", "price", "score"}, ...]}.
    """
    from ..runtime.batch import PhotoError
    from ..runtime.price import suggest_price

    model = load_model(bundle, threads, precision, backend)
    idx = open_index(index, model)
    rep = Reporter(as_json)
    unpriced = 0
    for s in suggest_price(model, idx, photos, k=k, listing=listing, exclude_self=exclude_self,
                           title=title, names=[str(p) for p in photos]):
        if isinstance(s, PhotoError):
            rep.error(s)
            continue
        unpriced += s.price is None
        if as_json:
            emit_json(s.to_dict())
        else:
            show_price(s)
    if unpriced:
        warn_line(f"{unpriced} suggestion(s) without a price: no neighbour in {idx.path} has "
                  "a usable price (an index of a plain photo folder has no prices)")
    rep.finish(len(photos))


def show_price(s: Any) -> None:
    what = s.path if s.paths is None else f"listing ({len(s.paths)} photos)"
    if s.price is None:
        sys.stdout.write(f"{what}: no price (no priced neighbours)\n")
        return
    n = len(s.neighbours)
    flag = "  [uncertain: unlike every catalogue photo]" if s.uncertain else ""
    sys.stdout.write(
        f"{what}: {money(s.price, '-')}  (range {money(s.low, '-')} - {money(s.high, '-')}, "
        f"from {n} listing{'s' if n != 1 else ''}){flag}\n"
    )
    for nb in s.neighbours[:5]:
        title = " ".join(str(nb.title or nb.id).split())
        if len(title) > 60:
            title = title[:57] + "..."
        sys.stdout.write(f"    {nb.score:.3f}  {money(nb.price, '-'):>11}  {title}\n")


def dupes_command(
    sources: Annotated[
        list[Path],
        typer.Argument(metavar="SOURCE...", help="Folders of photos, dataset folders "
                       "(Products.csv, Images.csv, images/) or photo files."),
    ],
    threshold: Annotated[
        float | None, typer.Option("--threshold", "-t", min=-1.0, max=1.0, metavar="T",
                                   help=T_HELP)
    ] = None,
    max_hash_distance: Annotated[
        int | None,
        typer.Option("--hash-distance", min=0, max=64, metavar="N",
                     help="Largest dHash (64-bit) distance of a duplicate pair (default: the "
                     "calibrated one)."),
    ] = None,
    no_hash: Annotated[
        bool, typer.Option("--no-hash", help="Decide on the embedding alone (no dHash check).")
    ] = False,
    index: Annotated[
        Path | None,
        typer.Option("--index", metavar="DIR", help="Also look for copies of the photos in "
                     "this index (e.g. the catalogue: re-used listing photos)."),
    ] = None,
    html: Annotated[
        Path | None, typer.Option("--html", metavar="FILE",
                                  help="Also write a self-contained HTML page.")
    ] = None,
    photos_root: PhotosRootOpt = None,
    bundle: BundleOpt = None,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = None,
    backend: BackendOpt = None,
    batch: BatchOpt = 32,
) -> None:
    """Find groups of photos that are the same picture (re-encoded, resized or cropped copies
    count; other photos of the same item do not).

    JSON, one line a group: {"group", "size", "photos": [{"id", "path", ...}], "pairs":
    [{"a", "b", "score", "hash_distance"}]}.
    """
    from ..runtime.dupes import DupeRule, find_dupes
    from ..runtime.html import PhotoResolver

    rule = DupeRule.from_options(threshold, max_hash_distance, use_hash=not no_hash)
    model = load_model(bundle, threads, precision, backend)
    idx = open_index(index, model) if index is not None else None
    resolver = PhotoResolver.for_index(idx, photos_root or ()) if idx is not None else None
    report = find_dupes(model, sources, rule=rule, index=idx, resolver=resolver,
                        batch_size=batch)
    rep = Reporter(as_json)
    for e in report.errors:
        rep.error(e)
    for g in report.groups:
        if as_json:
            emit_json(g.to_dict())
        else:
            show_group(g)
    sys.stderr.write(f"mkt: {report.summary()}\n")
    if html is not None:
        from ..runtime.html import dupes_page

        sub = (f"{report.checked} photos from {', '.join(map(str, sources))}; "
               f"{len(report.groups)} groups; {rule.describe()}")
        write_html(html, dupes_page(report.groups, errors=[(e.path, e.error)
                                                           for e in report.errors],
                                    subtitle=sub))
        missing = sum(1 for g in report.groups for p in g.photos if p.file is None)
        if missing:
            warn_line(f"{html}: {missing} index photos not found locally (give "
                      "--photos-root DIR)")
    rep.finish(report.total)


def show_group(g: Any) -> None:
    scores = [p.score for p in g.pairs]
    sys.stdout.write(f"group {g.group}: {g.size} photos (cosine {min(scores, default=0):.3f}-"
                     f"{max(scores, default=0):.3f})\n")
    for ph in g.photos:
        extra = " | ".join(
            str(x) for x in (ph.title, money(ph.price) if ph.price is not None else None,
                             "in index" if ph.source == "index" else None) if x
        )
        sys.stdout.write(f"    {ph.path or ph.id}" + (f"  ({extra})" if extra else "") + "\n")
