"""Self-contained HTML pages for ``mkt similar --html`` and ``mkt dupes --html``.

One file, no network: thumbnails are inlined as base64 JPEG ``data:`` URIs, the CSS is inline,
there is no JavaScript. Every piece of text from the data (titles, ids, paths, categories) goes
through :func:`html.escape`, so a listing titled ``<script>...`` is shown, never run.

Index metadata ``path`` is relative to the folder the index was built from (docs/design.md).
:class:`PhotoResolver` finds that folder among a few candidate roots; a photo that cannot be
found is drawn as a "photo not available locally" box instead of a thumbnail.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

#: Longest side of an inlined thumbnail, in pixels.
THUMB_SIZE = 160

#: JPEG quality of the inlined thumbnails (~5-8 KB each at 160 px).
THUMB_QUALITY = 80

#: Environment variable with extra roots (``os.pathsep``-separated) to find indexed photos.
PHOTOS_ENV = "MKT_PHOTOS_ROOT"

#: Where the shipped catalogue index was built from, relative to the repository root.
SHIPPED_SOURCE = Path("..") / "shared" / "data" / "marketplace"


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
    indexed folder). Candidate roots, first match wins: ``roots`` given, ``$MKT_PHOTOS_ROOT``,
    the ``index.json`` ``source`` / ``provenance.source`` entry if any, the current
    directory, and ``../shared/data/marketplace`` from the current directory and from the
    repository root (where the shipped index was built from)."""

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
        roots: list[Path] = [Path(r) for r in extra]
        env = os.environ.get(PHOTOS_ENV)
        if env:
            roots += [Path(r) for r in env.split(os.pathsep) if r]
        if index_dir is not None:
            roots += _index_sources(Path(index_dir))
        cwd = Path.cwd()
        repo = Path(__file__).resolve().parent.parent.parent
        roots += [cwd, cwd / SHIPPED_SOURCE, repo / SHIPPED_SOURCE]
        return cls(roots)

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


def _index_sources(index_dir: Path) -> list[Path]:
    """Candidate folders the index was built from, from ``index.json`` (``source`` or
    ``provenance.source``). A relative source was relative to where the build ran: try the
    index dir, the current directory and the repository root."""
    import json

    try:
        info = json.loads((index_dir / "index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(info, dict):
        return []
    prov = info.get("provenance") if isinstance(info.get("provenance"), dict) else {}
    out: list[Path] = []
    for src in (info.get("source"), prov.get("source")):
        if not isinstance(src, str) or not src:
            continue
        p = Path(src)
        if p.is_absolute():
            out.append(p)
        else:
            repo = Path(__file__).resolve().parent.parent.parent
            out += [index_dir / p, Path.cwd() / p, repo / p]
    return out


# -- page pieces --------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
background:#fafafa}
h1{font-size:22px;margin:0 0 4px}
.sub{color:#666;font-size:13px;margin-bottom:20px}
section{background:#fff;border:1px solid #ddd;border-radius:8px;padding:16px;margin:0 0 20px}
section h2{font-size:16px;margin:0 0 12px;word-break:break-all}
.row{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.card{width:172px;border:1px solid #e3e3e3;border-radius:6px;padding:6px;background:#fff;
font-size:12px;line-height:1.35}
.card.query{border:2px solid #2b6cb0;background:#f0f6ff}
.thumb{width:160px;height:160px;display:flex;align-items:center;justify-content:center;
background:#eee;border-radius:4px;overflow:hidden}
.thumb img{max-width:160px;max-height:160px;display:block}
.missing{color:#888;font-size:11px;text-align:center;padding:8px}
.score{font-weight:600;color:#2b6cb0}
.price{font-weight:600;color:#276749}
.title{margin:2px 0;overflow-wrap:anywhere}
.meta{color:#666;overflow-wrap:anywhere}
.rank{float:right;color:#999}
table.pairs{border-collapse:collapse;font-size:12px;margin-top:12px}
table.pairs td,table.pairs th{border:1px solid #e3e3e3;padding:3px 8px;text-align:left}
.err{color:#b00020}
"""


def _fmt_price(p: Any) -> str:
    if p is None:
        return ""
    try:
        return f"£{float(p):,.2f}"
    except (TypeError, ValueError):
        return ""


def _thumb_html(file: str | os.PathLike | bytes | None, alt: str) -> str:
    uri = thumbnail_data_uri(file) if file is not None else None
    if uri is None:
        return '<div class="thumb"><div class="missing">photo not available locally</div></div>'
    return f'<div class="thumb"><img src="{uri}" alt="{escape(alt)}"></div>'


def card(
    *,
    file: str | os.PathLike | bytes | None,
    id: str | None = None,
    title: str | None = None,
    price: Any = None,
    score: float | None = None,
    category: str | None = None,
    note: str | None = None,
    rank: int | None = None,
    query: bool = False,
) -> str:
    """One photo card: thumbnail (or the not-available box), then score/price/title/meta."""
    lines = [_thumb_html(file, title or id or "photo")]
    head = []
    if rank is not None:
        head.append(f'<span class="rank">#{rank}</span>')
    if score is not None:
        head.append(f'<span class="score">{float(score):.3f}</span>')
    pr = _fmt_price(price)
    if pr:
        head.append(f'<span class="price">{escape(pr)}</span>')
    if head:
        lines.append("<div>" + " ".join(head) + "</div>")
    if title:
        lines.append(f'<div class="title">{escape(str(title))}</div>')
    meta = [str(x) for x in (category, id, note) if x]
    if meta:
        lines.append(f'<div class="meta">{escape(" · ".join(meta))}</div>')
    cls = "card query" if query else "card"
    return f'<div class="{cls}">' + "".join(lines) + "</div>"


def page(title: str, sections: Sequence[str], subtitle: str = "") -> str:
    """A complete HTML document around already-rendered sections."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sub = escape(subtitle + (" · " if subtitle else "") + f"generated {when} by mkt")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1><div class=\"sub\">{sub}</div>"
        + "\n".join(sections)
        + "</body></html>\n"
    )


# -- the two pages ------------------------------------------------------------------------


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
    sections = []
    for qpath, hits in queries:
        cards = [card(file=qpath, id=Path(qpath).name, note="query", query=True)]
        for r, h in enumerate(hits, 1):
            m = getattr(h, "meta", {}) or {}
            cards.append(card(
                file=resolver.resolve(m.get("path")), id=h.id, title=m.get("title"),
                price=m.get("price"), score=h.score, category=m.get("category"), rank=r,
            ))
        sections.append(
            f"<section><h2>{escape(qpath)} · {len(hits)} similar</h2>"
            f'<div class="row">{"".join(cards)}</div></section>'
        )
    sections += _error_sections(errors)
    return page(title, sections, subtitle)


def dupes_page(
    groups: Sequence[Mapping[str, Any]],
    *,
    errors: Sequence[tuple[str, str]] = (),
    title: str = "mkt dupes",
    subtitle: str = "",
) -> str:
    """Page for ``mkt dupes``: one section a group. ``groups``: dicts with ``photos`` (dicts
    with ``id``, ``path``, optional ``file`` (local file to draw), ``title``, ``price``,
    ``category``, ``product_id``, ``source``) and ``pairs`` (dicts ``a``, ``b``, ``score``,
    optional ``hash_distance``)."""
    sections = []
    for n, g in enumerate(groups, 1):
        cards = []
        for ph in g.get("photos", []):
            note = ph.get("source") if ph.get("source") not in (None, "source") else None
            listing = f"listing {ph['product_id']}" if ph.get("product_id") else None
            cards.append(card(
                file=ph.get("file"), id=ph.get("id"), title=ph.get("title"),
                price=ph.get("price"), category=" · ".join(x for x in (ph.get("category"),
                                                                       listing) if x) or None,
                note=note,
            ))
        rows = "".join(
            f"<tr><td>{escape(str(p.get('a')))}</td><td>{escape(str(p.get('b')))}</td>"
            f"<td>{float(p.get('score', 0)):.4f}</td>"
            f"<td>{'' if p.get('hash_distance') is None else int(p['hash_distance'])}</td></tr>"
            for p in g.get("pairs", [])
        )
        table = (
            '<table class="pairs"><tr><th>photo</th><th>photo</th><th>cosine</th>'
            f"<th>dHash distance</th></tr>{rows}</table>" if rows else ""
        )
        size = len(g.get("photos", []))
        sections.append(
            f"<section><h2>group {n} · {size} photos</h2>"
            f'<div class="row">{"".join(cards)}</div>{table}</section>'
        )
    if not groups:
        sections.append("<section><h2>no duplicate photos found</h2></section>")
    sections += _error_sections(errors)
    return page(title, sections, subtitle)


def _error_sections(errors: Sequence[tuple[str, str]]) -> list[str]:
    if not errors:
        return []
    items = "".join(
        f'<li class="err">{escape(m)}</li>' if p in m
        else f'<li><span class="err">{escape(p)}</span>: {escape(m)}</li>'
        for p, m in errors
    )
    return [f"<section><h2>photos that could not be read</h2><ul>{items}</ul></section>"]


def write_page(path: str | os.PathLike, text: str) -> Path:
    """Write a page atomically (tmp + ``os.replace``)."""
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)
    return p


__all__ = [
    "PHOTOS_ENV",
    "THUMB_SIZE",
    "PhotoResolver",
    "card",
    "dupes_page",
    "page",
    "similar_page",
    "thumbnail_data_uri",
    "write_page",
]
