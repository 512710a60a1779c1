"""Self-contained HTML pages for ``mkt similar --html`` and ``mkt dupes --html``.

One file, no network: thumbnails are inlined as base64 JPEG ``data:`` URIs, the CSS is inline,
there is no JavaScript. The pages are Jinja2 templates (``mkt/runtime/templates``, package
data) rendered with autoescaping on, so a listing titled ``<script>...`` is shown, never run.

Index metadata ``path`` is relative to the folder the index was built from (docs/design.md).
:class:`PhotoResolver` finds that folder from what the index recorded (its provenance
``source``), ``$MKT_PHOTOS_ROOT`` or roots given by the caller (``--photos-root``); a photo
that cannot be found is drawn as a "photo not available locally" box instead of a thumbnail.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

#: Longest side of an inlined thumbnail, in pixels.
THUMB_SIZE = 160

#: JPEG quality of the inlined thumbnails (~5-8 KB each at 160 px).
THUMB_QUALITY = 80

#: Environment variable with extra roots (``os.pathsep``-separated) to find indexed photos.
PHOTOS_ENV = "MKT_PHOTOS_ROOT"


def thumbnail_data_uri(src: str | os.PathLike | bytes, size: int = THUMB_SIZE) -> str | None:
    """A ``data:image/jpeg;base64,...`` thumbnail of a photo, or None if it cannot be read."""
    from .errors import MktError
    from .images import load_image

    try:
        im = load_image(src if isinstance(src, bytes) else os.fspath(src), draft_size=size)
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=THUMB_QUALITY)
    except (MktError, OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class PhotoResolver:
    """Find the local file of an indexed photo from its metadata ``path`` (relative to the
    indexed folder). Candidate roots, first match wins: the ``roots`` given."""

    def __init__(self, roots: Iterable[str | os.PathLike] = ()) -> None:
        seen: list[Path] = []
        for r in roots:
            p = Path(r)
            if p not in seen:
                seen.append(p)
        self.roots = seen

    @classmethod
    def default(cls, index_dir: str | os.PathLike | None = None,
                extra: Iterable[str | os.PathLike] = ()) -> PhotoResolver:
        """Roots: ``extra`` (e.g. ``--photos-root``), ``$MKT_PHOTOS_ROOT``, then the folder
        the index at ``index_dir`` was built from (its ``index.json``)."""
        roots: list[Path] = [Path(r) for r in extra]
        env = os.environ.get(PHOTOS_ENV)
        if env:
            roots += [Path(r) for r in env.split(os.pathsep) if r]
        if index_dir is not None:
            roots += recorded_sources(Path(index_dir))
        return cls(roots)

    @classmethod
    def for_index(cls, index: Any, extra: Iterable[str | os.PathLike] = ()) -> PhotoResolver:
        """:meth:`default` for an open :class:`~mkt.runtime.index.Index`."""
        return cls.default(index.path, extra)

    def resolve(self, path: str | None) -> Path | None:
        """The existing local file for metadata ``path``, or None."""
        if not path:
            return None
        p = Path(path)
        if p.is_absolute():
            return p if p.is_file() else None
        for root in self.roots:
            cand = root / p
            if cand.is_file():
                return cand
        return None


def recorded_sources(index_dir: Path) -> list[Path]:
    """Candidate folders the index at ``index_dir`` was built from: its ``index.json``
    ``source`` or ``provenance.source``. A relative source was relative to where the build
    ran: try the current directory and the index dir."""
    try:
        info = json.loads((index_dir / "index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(info, dict):
        return []
    prov = info.get("provenance")
    if not isinstance(prov, dict):
        prov = {}
    out: list[Path] = []
    for src in (info.get("source"), prov.get("source")):
        if not isinstance(src, str) or not src:
            continue
        p = Path(src)
        out += [p] if p.is_absolute() else [Path.cwd() / p, index_dir / p]
    return out


# -- rendering ----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _env() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("mkt.runtime", "templates"),
        autoescape=True, trim_blocks=True, lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def _render(template: str, **ctx: Any) -> str:
    ctx.setdefault("errors", [])
    ctx["generated"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return _env().get_template(template).render(**ctx)


def _fmt_price(p: Any) -> str:
    if p is None:
        return ""
    try:
        return f"£{float(p):,.2f}"
    except (TypeError, ValueError):
        return ""


def card(*, file: str | os.PathLike | bytes | None, id: str | None = None,
         title: str | None = None, price: Any = None, score: float | None = None,
         category: str | None = None, note: str | None = None, rank: int | None = None,
         query: bool = False) -> dict[str, Any]:
    """What a photo card shows: its thumbnail (None: the not-available box), then
    rank/score/price, title and a meta line."""
    return {
        "thumb": thumbnail_data_uri(file) if file is not None else None,
        "id": id, "title": str(title) if title else None, "price": _fmt_price(price),
        "score": None if score is None else float(score), "rank": rank, "query": query,
        "meta": [str(x) for x in (category, id, note) if x],
    }


def similar_page(
    queries: Sequence[tuple[str, Sequence[Any]]],
    *,
    resolver: PhotoResolver | None = None,
    errors: Sequence[tuple[str, str]] = (),
    title: str = "mkt similar",
    subtitle: str = "",
) -> str:
    """Page for ``mkt similar``: one section a query photo: the query, then its hits
    (:class:`~mkt.runtime.index.Hit`) best first with score, price, title, category, id."""
    resolver = resolver or PhotoResolver.default()
    out = []
    for qpath, hits in queries:
        cards = [card(file=qpath, id=Path(qpath).name, note="query", query=True)]
        for r, h in enumerate(hits, 1):
            m = getattr(h, "meta", {}) or {}
            cards.append(card(file=resolver.resolve(m.get("path")), id=h.id,
                              title=m.get("title"), price=m.get("price"), score=h.score,
                              category=m.get("category"), rank=r))
        out.append({"path": qpath, "cards": cards})
    return _render("similar.html.j2", title=title, subtitle=subtitle, queries=out,
                   errors=list(errors))


def search_page(
    results: Sequence[Any],
    photos_meta: Mapping[str, Mapping[str, Any]],
    *,
    resolver: PhotoResolver | None = None,
    errors: Sequence[tuple[str, str]] = (),
    subtitle: str = "",
) -> str:
    """Page for ``mkt search``: a section a query, its listings best first, each shown by its
    best-matching photo (``photos_meta``: photo id -> index metadata with ``path``)."""
    resolver = resolver or PhotoResolver.default()
    out = []
    for res in results:
        cards = []
        for r, h in enumerate(res.results, 1):
            m = photos_meta.get(h.id) or {}
            cards.append(card(file=resolver.resolve(m.get("path")), id=h.id, title=h.title,
                              price=h.price, score=h.score, category=h.category, rank=r))
        out.append({"path": f"“{res.query}”", "cards": cards})
    return _render("search.html.j2", title="mkt search", subtitle=subtitle, queries=out,
                   errors=list(errors))


def _group_dict(g: Any) -> Mapping[str, Any]:
    """A :class:`~mkt.runtime.dupes.DupesGroupResult` as the mapping :func:`dupes_page`
    takes (its photos with their local ``file``)."""
    if isinstance(g, Mapping):
        return g
    return {"photos": [dict(p.to_dict(), file=p.file) for p in g.photos],
            "pairs": [p.to_dict() for p in g.pairs]}


def dupes_page(
    groups: Sequence[Any],
    *,
    errors: Sequence[tuple[str, str]] = (),
    title: str = "mkt dupes",
    subtitle: str = "",
) -> str:
    """Page for ``mkt dupes``: one section a group. ``groups``:
    :class:`~mkt.runtime.dupes.DupesGroupResult` objects or dicts with ``photos`` (dicts with
    ``id``, ``path``, optional ``file`` (local file to draw), ``title``, ``price``,
    ``category``, ``product_id``, ``source``) and ``pairs`` (dicts ``a``, ``b``, ``score``,
    optional ``hash_distance``)."""
    out = []
    for g in map(_group_dict, groups):
        cards = []
        for ph in g.get("photos", []):
            note = ph.get("source") if ph.get("source") not in (None, "source") else None
            listing = f"listing {ph['product_id']}" if ph.get("product_id") else None
            cat = " · ".join(x for x in (ph.get("category"), listing) if x) or None
            cards.append(card(file=ph.get("file"), id=ph.get("id"), title=ph.get("title"),
                              price=ph.get("price"), category=cat, note=note))
        pairs = [{"a": p.get("a"), "b": p.get("b"), "score": float(p.get("score", 0)),
                  "hash_distance": p.get("hash_distance")} for p in g.get("pairs", [])]
        out.append({"cards": cards, "pairs": pairs})
    return _render("dupes.html.j2", title=title, subtitle=subtitle, groups=out,
                   errors=list(errors))


def write_page(path: str | os.PathLike, text: str) -> Path:
    """Write a page atomically (creating its folder)."""
    from .fsutil import atomic_write_text

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(p, text)


__all__ = [
    "PHOTOS_ENV",
    "THUMB_SIZE",
    "PhotoResolver",
    "card",
    "dupes_page",
    "recorded_sources",
    "search_page",
    "similar_page",
    "thumbnail_data_uri",
    "write_page",
]
