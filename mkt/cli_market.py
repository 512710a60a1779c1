"""Marketplace commands: ``mkt price``, ``mkt dupes``, ``mkt serve``.

Registered by ``mkt.cli`` (``<name>_command`` functions). Only typer and the standard library
are imported at module level; numpy, onnxruntime, fastapi... load inside the commands, so
``mkt --help`` stays fast. Same conventions as ``mkt.cli``: ``--json`` prints one JSON object a
line, a bad photo gives one error line and the others carry on (exit 1), fatal errors exit 2,
never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

PhotoArgs = Annotated[list[Path], typer.Argument(help="Photo files (JPEG, PNG, WebP, ...).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per line on stdout.")]
BundleOpt = Annotated[
    Path | None, typer.Option("--bundle", help="Model bundle dir (default: the packaged one).")
]
IndexOpt = Annotated[
    Path | None,
    typer.Option("--index", help="Index dir (default: the packaged catalogue index)."),
]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", min=1, help="onnxruntime threads (default: <= 4).")
]

# Shown in --help; tests check they match mkt.runtime.price / mkt.runtime.dupes.
_K_HELP = "How many listings vote (default 40, tuned on the val split)."
_T_HELP = ("Cosine similarity from which two photos may be the same picture (default 0.8, "
           "calibrated by benchmarks/eval_dupes.py); they are when their dHash distance is "
           "small too, or their cosine is >= 0.97.")


def _guarded(fn: Any) -> Any:
    """``mkt.cli._guard`` applied lazily (importing mkt.cli at module level would be a cycle)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .cli import _guard

        return _guard(fn)(*args, **kwargs)

    return wrapper


# -- price --------------------------------------------------------------------------------


@_guarded
def price_command(
    photos: PhotoArgs,
    k: Annotated[int | None, typer.Option("-k", "--top", min=1, help=_K_HELP)] = None,
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
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
) -> None:
    """Suggest a price from the nearest listings: similarity-weighted mean of their log prices.

    One vote per listing (its best photo), listings priced £0 or above £100,000 are ignored;
    the range is the 25th-75th percentile. JSON: {"path", "price", "low", "high",
    "neighbours": [{"id", "product_id", "title", "price", "score"}, ...]}.
    """
    import numpy as np

    from .cli import _emit_json, _err_line, _load_batches, _load_model, _report_bad, _warn_line
    from .runtime.index import Index
    from .runtime.price import DEFAULT_K, query_size, suggest_from_hits

    k = DEFAULT_K if k is None else k
    model = _load_model(bundle, threads)
    idx = Index.open(index, model_id=model.model_id)
    names = [str(p) for p in photos]
    nq = query_size(k, idx.count)
    bad = 0
    unpriced = 0
    pooled: list[Any] = []
    pooled_names: list[str] = []
    ex_ids: set[str] = set()
    ex_products: set[str] = set()

    def excludes(name: str, hits: list[Any]) -> None:
        stem = Path(name).stem
        ex_ids.add(stem)
        row = idx.get(stem)
        if row and row.get("product_id"):
            ex_products.add(str(row["product_id"]))
        for h in hits:
            if h.score >= _SELF_COSINE:
                ex_ids.add(h.id)
                if h.meta.get("product_id"):
                    ex_products.add(str(h.meta["product_id"]))

    def show(s: Any) -> None:
        nonlocal unpriced
        if s.price is None:
            unpriced += 1
        if as_json:
            _emit_json(s.to_dict())
        else:
            _show_price(s)

    for items in _load_batches(photos, model.input_size, 32, model.threads):
        good = []
        for i, x in items:
            if isinstance(x, Exception):
                bad += 1
                _report_bad(names[i], x, as_json)
            else:
                good.append((i, x))
        if not good:
            continue
        emb = model.embed_arrays(np.stack([x for _, x in good]))
        for (i, _), hits in zip(good, idx.search(emb, nq), strict=True):
            if listing:
                pooled.append(hits)
                pooled_names.append(names[i])
                if exclude_self:
                    excludes(names[i], hits)
                continue
            if exclude_self:
                ex_ids.clear()
                ex_products.clear()
                excludes(names[i], hits)
            show(suggest_from_hits([hits], k=k, path=names[i], exclude_ids=ex_ids,
                                   exclude_products=ex_products))
    if listing and pooled:
        show(suggest_from_hits(pooled, k=k, path=pooled_names[0], paths=pooled_names,
                               exclude_ids=ex_ids, exclude_products=ex_products))
    if unpriced:
        _warn_line(f"{unpriced} suggestion(s) without a price: no neighbour in {idx.path} has "
                   "a usable price (an index of a plain photo folder has no prices)")
    if bad:
        if not as_json:
            _err_line(f"{bad} of {len(names)} photos could not be read")
        raise typer.Exit(1)


#: ``--exclude-self``: a hit this similar is the query's own picture (a copy of the file).
_SELF_COSINE = 0.999


def _money(p: Any) -> str:
    return "-" if p is None else f"£{float(p):,.2f}"


def _show_price(s: Any) -> None:
    what = s.path if s.paths is None else f"listing ({len(s.paths)} photos)"
    if s.price is None:
        sys.stdout.write(f"{what}: no price (no priced neighbours)\n")
        return
    n = len(s.neighbours)
    sys.stdout.write(
        f"{what}: {_money(s.price)}  (range {_money(s.low)} - {_money(s.high)}, "
        f"from {n} listing{'s' if n != 1 else ''})\n"
    )
    for nb in s.neighbours[:5]:
        title = " ".join(str(nb.get("title") or nb["id"]).split())
        if len(title) > 60:
            title = title[:57] + "..."
        sys.stdout.write(f"    {nb['score']:.3f}  {_money(nb['price']):>11}  {title}\n")


# -- dupes --------------------------------------------------------------------------------


@_guarded
def dupes_command(
    sources: Annotated[
        list[Path],
        typer.Argument(help="Folders of photos, dataset folders (Products.csv, Images.csv, "
                       "images/) or photo files."),
    ],
    threshold: Annotated[
        float | None, typer.Option("--threshold", "-t", min=-1.0, max=1.0, help=_T_HELP)
    ] = None,
    max_hash_distance: Annotated[
        int | None,
        typer.Option("--hash-distance", min=0, max=64,
                     help="Largest dHash (64-bit) distance of a duplicate pair (default: the "
                     "calibrated one)."),
    ] = None,
    no_hash: Annotated[
        bool, typer.Option("--no-hash", help="Decide on the embedding alone (no dHash check).")
    ] = False,
    index: Annotated[
        Path | None,
        typer.Option("--index", help="Also look for copies of the photos in this index "
                     "(e.g. the catalogue: re-used listing photos)."),
    ] = None,
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write a self-contained HTML page.")
    ] = None,
    bundle: BundleOpt = None,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Photos per inference.")] = 32,
) -> None:
    """Find groups of photos that are the same picture (re-encoded, resized or cropped copies
    count; other photos of the same item do not).

    JSON, one line a group: {"group", "size", "photos": [{"id", "path", ...}], "pairs":
    [{"a", "b", "score", "hash_distance"}]}.
    """
    import numpy as np

    from .cli import _emit_json, _err_line, _load_batches, _load_model, _report_bad
    from .runtime.catalogue import iter_source
    from .runtime.dupes import DupePair, DupeRule, dhash, find_duplicates
    from .runtime.errors import CatalogueError, MktError

    rule = DupeRule()
    t = rule.threshold if threshold is None else float(threshold)
    sure = rule.sure_threshold
    rule = DupeRule(
        threshold=t,
        max_hash_distance=None if no_hash else (
            rule.max_hash_distance if max_hash_distance is None else int(max_hash_distance)),
        # the hash-free override only counts above the threshold (see DupeRule)
        sure_threshold=None if (no_hash or sure is None or sure <= t) else sure,
    )
    model = _load_model(bundle, threads)
    idx = None
    if index is not None:
        from .runtime.index import Index

        idx = Index.open(index, model_id=model.model_id)
    items: list[Any] = []
    bad: list[tuple[str, str]] = []
    for s in sources:
        try:
            items += iter_source(s)
        except CatalogueError as e:  # e.g. a missing path: report it, check the others
            bad.append((str(s), str(e)))
            _report_bad(str(s), e, as_json)
    if not items:
        raise MktError(f"{', '.join(map(str, sources))}: no photos found")

    good_items: list[Any] = []
    parts: list[Any] = []
    hashes: list[Any] = []
    for chunk in _load_batches([it.path for it in items], model.input_size, batch,
                               model.threads):
        ok = []
        for i, x in chunk:
            if isinstance(x, Exception):
                bad.append((str(items[i].path), str(x)))
                _report_bad(str(items[i].path), x, as_json)
            else:
                ok.append((i, x))
        if ok:
            arr = np.stack([x for _, x in ok])
            parts.append(model.embed_arrays(arr))
            hashes += [dhash(x) for _, x in ok]
            good_items += [items[i] for i, _ in ok]
    n = len(good_items)
    vecs = np.concatenate(parts) if parts else np.zeros((0, model.embedding_dim), np.float32)

    # Photos as output rows: the source photos, then any index photos they match.
    rows: list[dict[str, Any]] = []
    files: list[Any] = []
    for it in good_items:
        r: dict[str, Any] = {"id": it.id, "path": str(it.path)}
        for key in ("product_id", "title", "price", "category"):
            v = getattr(it, key, None)
            if v is not None:
                r[key] = v
        r["source"] = "source"
        rows.append(r)
        files.append(it.path)

    extra: list[Any] = []
    if idx is not None and n and idx.count:
        from .runtime.html import PhotoResolver
        from .runtime.images import load_letterboxed

        resolver = PhotoResolver.default(idx.path)
        own = {it.id for it in good_items}
        pos_of: dict[str, int] = {}
        kq = min(idx.count, 32)
        for i, hits in enumerate(idx.search(vecs, kq)):
            for h in hits:
                if h.score < rule.search_threshold or h.id in own:
                    continue
                if h.id not in pos_of:
                    pos_of[h.id] = len(rows)
                    m = h.meta or {}
                    r = {"id": h.id}
                    for key in ("path", "product_id", "title", "price", "category"):
                        if m.get(key) is not None:
                            r[key] = m[key]
                    r["source"] = "index"
                    rows.append(r)
                    local = resolver.resolve(m.get("path"))
                    files.append(local)
                    hsh = None
                    if local is not None and rule.max_hash_distance is not None:
                        try:
                            hsh = dhash(load_letterboxed(local, model.input_size))
                        except MktError:
                            hsh = None
                    hashes.append(hsh)
                j = pos_of[h.id]
                hd = None
                if hashes[j] is not None and rule.max_hash_distance is not None:
                    from .runtime.dupes import hamming

                    hd = int(hamming(hashes[i], hashes[j]))
                extra.append(DupePair(i, j, float(h.score), hd))

    groups = find_duplicates(
        vecs, hashes=None if rule.max_hash_distance is None else hashes[:n], rule=rule,
        extra_pairs=extra,
    )
    out_groups = []
    for g_no, g in enumerate(groups, 1):
        photos_out = [rows[m] for m in g.members]
        pairs_out = []
        for p in g.pairs:
            d = {"a": rows[p.a]["id"], "b": rows[p.b]["id"], "score": round(p.score, 6)}
            if p.hash_distance is not None:
                d["hash_distance"] = p.hash_distance
            pairs_out.append(d)
        obj = {"group": g_no, "size": len(photos_out), "photos": photos_out, "pairs": pairs_out}
        out_groups.append((obj, [files[m] for m in g.members]))
        if as_json:
            _emit_json(obj)
        else:
            _show_group(obj)
    in_groups = sum(o["size"] for o, _ in out_groups)
    sys.stderr.write(
        f"mkt: {n} photos checked, {len(out_groups)} group{'s' if len(out_groups) != 1 else ''}"
        f" of duplicates ({in_groups} photos); rule: {_rule_text(rule)}\n"
    )
    if html is not None:
        from .runtime.html import dupes_page

        page_groups = []
        for obj, fs in out_groups:
            ph = [dict(r, file=f) for r, f in zip(obj["photos"], fs, strict=True)]
            page_groups.append({"photos": ph, "pairs": obj["pairs"]})
        sub = (f"{n} photos from {', '.join(map(str, sources))}; {len(out_groups)} groups; "
               f"{_rule_text(rule)}")
        _write_html(html, dupes_page(page_groups, errors=bad, subtitle=sub))
    if bad:
        if not as_json:
            _err_line(f"{len(bad)} of {len(items)} photos could not be read")
        raise typer.Exit(1)


def _rule_text(rule: Any) -> str:
    s = f"cosine >= {rule.threshold:g}"
    if rule.max_hash_distance is not None:
        s += f" and dHash <= {rule.max_hash_distance}"
        if rule.sure_threshold is not None:
            s += f", or cosine >= {rule.sure_threshold:g}"
    return s


def _write_html(path: Path, text: str) -> None:
    from .runtime.errors import MktError
    from .runtime.html import write_page

    try:
        write_page(path, text)
    except OSError as e:
        raise MktError(f"{path}: cannot write HTML page ({e.strerror or e})") from None
    sys.stderr.write(f"mkt: wrote {path}\n")


def write_similar_html(path: Path, queries: list[Any], errors: list[tuple[str, str]],
                       index: Any) -> None:
    """``mkt similar --html``: the page of every query and its hits (called by mkt.cli)."""
    from .runtime.html import PhotoResolver, similar_page

    resolver = PhotoResolver.default(index.path)
    found = sum(1 for _, hits in queries for h in hits if resolver.resolve(h.meta.get("path")))
    total = sum(len(hits) for _, hits in queries)
    sub = f"index {index.path} ({index.count} photos); {found} of {total} result photos local"
    _write_html(path, similar_page(queries, resolver=resolver, errors=errors, subtitle=sub))


def _show_group(obj: dict[str, Any]) -> None:
    best = max((p["score"] for p in obj["pairs"]), default=0.0)
    low = min((p["score"] for p in obj["pairs"]), default=0.0)
    sys.stdout.write(f"group {obj['group']}: {obj['size']} photos (cosine {low:.3f}-{best:.3f})\n")
    for ph in obj["photos"]:
        extra = " | ".join(
            str(x) for x in (ph.get("title"), _money(ph["price"]) if "price" in ph else None,
                             "in index" if ph.get("source") == "index" else None) if x
        )
        sys.stdout.write(f"    {ph.get('path') or ph['id']}" + (f"  ({extra})" if extra else "")
                         + "\n")


# -- serve --------------------------------------------------------------------------------


@_guarded
def serve_command(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8000,
    bundle: BundleOpt = None,
    index: IndexOpt = None,
    threads: ThreadsOpt = None,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.01, help="Largest accepted upload.")
    ] = 10.0,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Serve the model over HTTP (FastAPI; needs the `serve` extra).

    POST /classify, /similar, /price with the photo as multipart field `file`; GET /health;
    interactive docs at /docs.
    """
    from .cli import _err_line, _warn_line

    try:
        import uvicorn

        from .serve import create_app
    except ImportError as e:
        _err_line(f"`mkt serve` needs the serve extra: pip install 'mkt[serve]' ({e})")
        raise typer.Exit(2) from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        _warn_line(f"listening on {host}: reachable from other machines; there is no "
                   "authentication, put it behind a proxy")
    app = create_app(bundle=bundle, index=index, threads=threads,
                     max_upload_bytes=int(max_upload_mb * 1024 * 1024), eager=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
