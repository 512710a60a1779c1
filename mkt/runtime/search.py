"""Text search over an index: lexical (FTS5 BM25) + semantic (MiniLM listing embeddings) +
cross-modal (MiniLM query vs the photos' ``text_embedding``), fused per listing with weighted
reciprocal rank fusion (RRF)::

    score(listing) = sum over paths p of  w_p / (RRF_K + rank_p(listing))

(ranks from 1; a path that does not rank a listing adds nothing). Each path ranks its best
``depth`` listings. A listing is its ``product_id``; a photo without one is a listing of its
own. Result ``id`` = the listing's best photo for the query (the best cross-modal photo, else
its first indexed photo), so a caller can show it like a ``similar`` hit.

User text is always searched as words: it is split into Unicode word tokens and each is
quoted for FTS5 (OR of the tokens), so ``"``, ``*``, ``NEAR(``, ``AND``, ``-`` are just text.

:func:`similar_with_text` fuses a photo's nearest neighbours with a text query
(``mkt similar PHOTO --text "in oak"``).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .batch import SimilarHit
from .errors import MktError, MktIndexError
from .index import NO_TEXT_MSG, Hit, Index
from .text import TextEncoder, check_text

RRF_K = 60
#: Fusion weights per path, chosen on the val split by benchmarks/text_search_eval.py
#: (results in benchmarks/results/text_search.md). Cross-modal is 0 while its vectors come
#: from the stand-in head (it lowered val MRR@10 from 0.577 to 0.434 at weight 0.25): re-run
#: the script with the LiT-trained model. A path with weight 0 is still used when it is the
#: only one the index can answer (e.g. a photos-only index answers by cross-modal).
DEFAULT_WEIGHTS: dict[str, float] = {"lexical": 0.5, "semantic": 1.0, "crossmodal": 0.0}
PATHS = ("lexical", "semantic", "crossmodal")
_WORD = re.compile(r"\w+", re.UNICODE)
MAX_QUERY_TOKENS = 64


def fts_query(text: str) -> str | None:
    """An FTS5 MATCH expression that searches ``text`` as plain words: every word token
    double-quoted, OR-ed. None if ``text`` has no word characters (then lexical search has
    nothing to match, e.g. only punctuation or emoji)."""
    toks = _WORD.findall(text)[:MAX_QUERY_TOKENS]
    toks = [t for t in toks if t.strip("_")]
    if not toks:
        return None
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in dict.fromkeys(toks))


@dataclass
class ListingHit(SimilarHit):
    """One listing in a text search: fused score, its best photo ``id`` and metadata; the
    same answer shape as a ``similar`` hit, plus each search path's rank (not in the JSON)."""

    ranks: dict[str, int] = field(default_factory=dict, repr=False)


@dataclass
class TextSearchResult:
    """The answer to one text query: ``{"query", "results": [...]}`` best first.
    ``truncated``: the query was longer than the text model reads (max_tokens) and was cut.
    ``paths``: which search paths could answer on this index."""

    query: str
    results: list[ListingHit]
    truncated: bool = False
    paths: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "results": [r.to_dict() for r in self.results]}


class _TextView:
    """Per-index-generation arrays for the vector paths (built once, reused by queries)."""

    def __init__(self, index: Index) -> None:
        self.generation = index.generation
        self.lpids, lv = index.listing_vectors()
        self.lvec = np.ascontiguousarray(lv, np.float32)
        pids, xv = index.photo_text_vectors()
        self.xvec = np.ascontiguousarray(xv, np.float32)
        self.xids = pids
        meta = index.photos_meta(pids) if pids else {}
        keys = [(meta.get(p, {}).get("product_id") or f"\0{p}") for p in pids]
        self.xkeys = keys
        uniq = list(dict.fromkeys(keys))
        pos = {k: i for i, k in enumerate(uniq)}
        self.xgroup = np.array([pos[k] for k in keys], np.int64)
        self.xuniq = uniq
        self.with_text = index.text_counts()["with_text"]


_VIEWS: weakref.WeakKeyDictionary[Index, _TextView] = weakref.WeakKeyDictionary()


def _view(index: Index) -> _TextView:
    v = _VIEWS.get(index)
    if v is None or v.generation != index.generation:
        v = _TextView(index)
        _VIEWS[index] = v
    return v


def _matvec(a: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``a @ q`` without BLAS threads: on a busy machine the threads' start/sync makes an
    11k x 384 mat-vec ~8 ms instead of ~1 ms single-threaded (measured)."""
    return np.einsum("ij,j->i", a, np.asarray(q, np.float32))


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    n = min(n, len(scores))
    if n <= 0:
        return np.zeros(0, np.int64)
    idx = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else np.arange(len(scores))
    return idx[np.argsort(-scores[idx], kind="stable")]


def available_paths(index: Index) -> tuple[str, ...]:
    """The search paths this index can answer: lexical needs listing text, semantic listing
    vectors, crossmodal photo text vectors. :class:`MktIndexError` for an index built before
    text search, or one with none of them."""
    if hasattr(index, "text_paths"):  # a database index (pgindex) counts in SQL
        return tuple(index.text_paths())
    if not index.has_text:
        raise MktIndexError(f"{index.path}: {NO_TEXT_MSG}")
    v = _view(index)
    paths = []
    if v.with_text:
        paths.append("lexical")
    if len(v.lpids):
        paths.append("semantic")
    if len(v.xids):
        paths.append("crossmodal")
    if not paths:
        raise MktIndexError(
            f"{index.path}: index has no text to search (no listing titles/descriptions and no "
            "cross-modal photo vectors); rebuild it from a dataset folder with mkt index build"
        )
    return tuple(paths)


def path_rankings(index: Index, qvec: np.ndarray, text: str, depth: int = 100,
                  paths: Sequence[str] | None = None) -> dict[str, list[tuple[str, str | None]]]:
    """Each path's ranked listings for one query: ``{path: [(listing key, best photo id or
    None), ...]}``. Listing key = product_id, or ``"\\0<photo id>"`` for a photo without
    one."""
    paths = tuple(paths) if paths is not None else available_paths(index)
    if hasattr(index, "rank_paths"):  # a database index (pgindex) ranks each path in SQL
        return index.rank_paths(qvec, text, depth, paths)
    v = _view(index)
    out: dict[str, list[tuple[str, str | None]]] = {}
    if "lexical" in paths:
        m = fts_query(text)
        out["lexical"] = [(p, None) for p, _ in index.fts(m, depth)] if m else []
    if "semantic" in paths and len(v.lpids):
        s = _matvec(v.lvec, qvec)
        out["semantic"] = [(v.lpids[i], None) for i in _top(s, depth)]
    if "crossmodal" in paths and len(v.xids):
        s = _matvec(v.xvec, qvec)
        # best photo per listing: sort photos by score, keep each group's first
        order = _top(s, min(len(s), depth * 8))
        seen: dict[int, int] = {}
        for j in order:
            g = int(v.xgroup[j])
            if g not in seen:
                seen[g] = int(j)
                if len(seen) >= depth:
                    break
        out["crossmodal"] = [(v.xuniq[g], v.xids[j]) for g, j in seen.items()]
    return out


def rrf(rankings: Mapping[str, Sequence[tuple[str, str | None]]],
        weights: Mapping[str, float], rrf_k: int = RRF_K
        ) -> list[tuple[str, float, dict[str, int], str | None]]:
    """Weighted reciprocal rank fusion: ``[(key, score, {path: rank}, photo id)]`` best first
    (ties: the order of first appearance)."""
    acc: dict[str, list[Any]] = {}
    for path, ranked in rankings.items():
        w = float(weights.get(path, 0.0))
        if w <= 0:
            continue
        for r, (key, photo) in enumerate(ranked, start=1):
            e = acc.setdefault(key, [0.0, {}, None])
            e[0] += w / (rrf_k + r)
            e[1][path] = r
            if photo is not None and e[2] is None:
                e[2] = photo
    items = [(k, e[0], e[1], e[2]) for k, e in acc.items()]
    items.sort(key=lambda t: -t[1])
    return items


def _hits(index: Index, fused, k: int) -> list[ListingHit]:
    top = fused[:k]
    pids = [key for key, *_ in top if not key.startswith("\0")]
    lmeta = index.listings_meta(pids)
    photo_ids = [key[1:] for key, *_ in top if key.startswith("\0")]
    pmeta = index.photos_meta(photo_ids) if photo_ids else {}
    out = []
    for key, score, ranks, photo in top:
        if key.startswith("\0"):
            pid = key[1:]
            m = pmeta.get(pid, {})
            out.append(ListingHit(id=photo or pid, score=score, product_id=None,
                                  title=m.get("title"), price=m.get("price"),
                                  category=m.get("category"), ranks=ranks))
        else:
            m = lmeta.get(key, {})
            out.append(ListingHit(id=photo or m.get("photo") or key, score=score,
                                  product_id=key, title=m.get("title"), price=m.get("price"),
                                  category=m.get("category"), ranks=ranks))
    return out


def _weights(weights: Mapping[str, float] | None,
             paths: Sequence[str] = PATHS) -> dict[str, float]:
    """Defaults overridden by ``weights``; if no path the index can answer has a positive
    weight, every available path gets weight 1 (so e.g. a photos-only index still answers)."""
    w = dict(DEFAULT_WEIGHTS)
    if weights:
        for k, x in weights.items():
            if k not in PATHS:
                raise ValueError(f"unknown search path {k!r} (have {', '.join(PATHS)})")
            w[k] = float(x)
    if not any(w.get(p, 0.0) > 0 for p in paths):
        w.update({p: 1.0 for p in paths})
    return w


def search_text(
    index: Index,
    encoder: TextEncoder,
    queries: Sequence[str],
    k: int = 10,
    weights: Mapping[str, float] | None = None,
    *,
    depth: int | None = None,
) -> list[TextSearchResult]:
    """Listings for each text query, best first (at most ``k`` each). ``weights``: per path
    (``lexical``, ``semantic``, ``crossmodal``) RRF weights, default
    :data:`DEFAULT_WEIGHTS`. Raises :class:`~mkt.runtime.text.EmptyTextError` for an empty
    query and :class:`MktIndexError` for an index without text."""
    if isinstance(queries, str):
        queries = [queries]
    qs = [check_text(q) for q in queries]
    paths = available_paths(index)
    w = _weights(weights, paths)
    if not qs:
        return []
    k = max(0, int(k))
    d = int(depth) if depth else max(100, 5 * k)
    qv = encoder.encode(qs)
    trunc = list(encoder.last_truncated) or [False] * len(qs)
    out = []
    for q, v, tr in zip(qs, qv, trunc, strict=True):
        fused = rrf(path_rankings(index, v, q, d, paths), w)
        out.append(TextSearchResult(query=q, results=_hits(index, fused, k), truncated=bool(tr),
                                    paths=paths))
    return out


@dataclass
class QueryError:
    """A query that could not be searched (empty, whitespace): the query and the reason."""

    query: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "error": self.error}


def search_each(
    index: Index,
    encoder: TextEncoder,
    queries: Sequence[str],
    k: int = 10,
    weights: Mapping[str, float] | None = None,
    *,
    near: Any = None,
    within_km: float | None = None,
) -> Iterator[TextSearchResult | QueryError]:
    """One answer per query, in order: a :class:`TextSearchResult`, or a :class:`QueryError`
    for a query that cannot be searched, so one bad query does not stop the others.
    An index without text (built before text search) raises :class:`MktIndexError`.
    ``near`` (a :class:`~mkt.runtime.location.Place`) / ``within_km``: ranked and filtered by
    distance (:func:`mkt.runtime.location.rank_by_distance`)."""
    available_paths(index)  # an old index is refused once, before any query
    for q in queries:
        try:
            check_text(q)
        except MktError as e:
            yield QueryError(str(q), str(e))
            continue
        if near is None:
            yield search_text(index, encoder, [q], k, weights)[0]
        else:
            yield _search_near(index, encoder, q, k, weights, near, within_km)


def _search_near(index: Index, encoder: TextEncoder, q: str, k: int,
                 weights: Mapping[str, float] | None, near: Any,
                 within_km: float | None) -> TextSearchResult:
    from .location import rank_by_distance

    last: list[TextSearchResult] = []

    def fetch(n: int) -> list[ListingHit]:
        last[:] = search_text(index, encoder, [q], n, weights, depth=max(100, n))
        return last[0].results

    ranked = rank_by_distance(index, fetch, near, k, within_km=within_km)
    res = last[0]
    for x in ranked:
        x.hit.location, x.hit.distance_km = x.location, x.distance_km
    res.results = [x.hit for x in ranked]
    return res


def similar_with_text(
    index: Index,
    encoder: TextEncoder,
    image_hits: Sequence[Hit],
    text: str,
    k: int = 10,
    *,
    image_weight: float = 1.0,
    text_weight: float = 1.0,
    weights: Mapping[str, float] | None = None,
) -> TextSearchResult:
    """``mkt similar PHOTO --text "in oak"``: fuse the photo's nearest neighbours
    (``image_hits`` from :meth:`Index.search`, best first; ask for ~100) with the text query's
    own fused ranking, per listing, by RRF (``image_weight`` / ``text_weight``)."""
    q = check_text(text)
    paths = available_paths(index)
    w = _weights(weights, paths)
    v = encoder.encode([q])[0]
    text_rank = [(key, photo) for key, _, _, photo in
                 rrf(path_rankings(index, v, q, max(100, 5 * k), paths), w)]
    img_rank: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for h in image_hits:
        key = h.meta.get("product_id") or f"\0{h.id}"
        if key not in seen:
            seen.add(key)
            img_rank.append((key, h.id))
    fused = rrf({"image": img_rank, "text": text_rank},
                {"image": image_weight, "text": text_weight})
    return TextSearchResult(query=q, results=_hits(index, fused, k),
                            truncated=bool(encoder.last_truncated and
                                           encoder.last_truncated[0]),
                            paths=("image",) + paths)


def embed_listings(index: Index, encoder: TextEncoder, batch_size: int = 32,
                   missing_only: bool = True) -> int:
    """Compute and store the MiniLM vectors of the index's listings that lack one (one new
    generation). Call after building/adding from a dataset folder. Returns how many."""
    texts = index.listing_texts(missing_only=missing_only)
    if not texts:
        return 0
    pids = list(texts)
    vecs = encoder.encode([texts[p] for p in pids], batch_size=batch_size)
    return index.set_listing_vectors(pids, vecs)


__all__ = [
    "DEFAULT_WEIGHTS",
    "PATHS",
    "RRF_K",
    "ListingHit",
    "QueryError",
    "TextSearchResult",
    "available_paths",
    "embed_listings",
    "fts_query",
    "path_rankings",
    "rrf",
    "search_each",
    "search_text",
    "similar_with_text",
]
