"""Suggested price of a photo (or a listing's photos) from the nearest catalogue listings.

The rule, in order:

1. Search the index for the photo's nearest photos (more than ``k``: see :func:`query_size`).
2. One vote per listing: hits are grouped by ``product_id`` (a photo without one is its own
   listing) and a listing keeps its best score, so the two photos of one listing never vote
   twice. With several query photos (``--listing``) the hits of all photos are merged the
   same way.
3. Drop listings without a usable price: unknown, ``<= £0`` (free / "price on request") or
   above :data:`MAX_VALID_PRICE` (absurd asks such as £10,000,000). The catalogue's rule,
   :func:`mkt.runtime.catalogue.valid_price`, which the price baselines use too.
4. The ``k`` best remaining listings vote with weight ``exp((score - best_score) / tau)``
   (``tau = inf``: equal weights). The suggestion is the weighted mean of their log prices
   (a weighted geometric mean; ``statistic="median"`` gives the weighted median), the range
   is the weighted 25th-75th percentile (widened to hold the suggestion if needed).
   Everything is computed on log price (prices are multiplicative: between £10 and £1,000
   the middle is £100, not £505).

The defaults (:data:`DEFAULT_K`, :data:`DEFAULT_TAU`, :data:`DEFAULT_STATISTIC`) were tuned
on the validation split by ``benchmarks/eval_price.py`` (results in
``benchmarks/results/price.json``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Prices above MAX_VALID_PRICE are absurd asks (the data has £1,234,567 and £10,000,000 for
# bicycle parts) and never vote: the catalogue's rule, shared with the training side.
from .catalogue import MAX_VALID_PRICE, valid_price

#: How many listings vote. Tuned on the val split (benchmarks/eval_price.py: k=40 is the best
#: of 5..100 with tau=0.1; R² of log price flat within 0.01 from k=20 to k=50).
DEFAULT_K = 40

#: Similarity temperature of the vote weights ``exp((s - s_best) / tau)``; ``math.inf`` gives
#: equal weights. Tuned on the val split (benchmarks/eval_price.py: 0.1 beats 0.01-0.05, 0.2 and
#: equal weights).
DEFAULT_TAU = 0.1

#: The suggestion: weighted ``median`` of the voters' prices, or weighted ``mean`` of their log
#: prices (a weighted geometric mean). Tuned on the val split (benchmarks/eval_price.py: the
#: mean of log price beats the median by ~0.01 R² at every k and tau; £0 and absurd asks are
#: already excluded, and log space tames the remaining outliers).
DEFAULT_STATISTIC = "mean"

#: The reported range: these weighted quantiles of the neighbours' prices.
RANGE_QUANTILES = (0.25, 0.75)


def weighted_quantile(values: Sequence[float], weights: Sequence[float] | None,
                      q: float | Sequence[float]) -> np.ndarray:
    """Weighted quantile(s): the smallest value whose cumulative weight reaches ``q`` of the
    total; when it reaches it exactly, the mean of that value and the next. With equal weights
    the 0.5 quantile is the ordinary median (mean of the two middle values for even n); a
    value holding more than half the weight is the median.
    """
    v = np.asarray(values, np.float64)
    if v.size == 0:
        raise ValueError("weighted_quantile of nothing")
    w = np.ones_like(v) if weights is None else np.asarray(weights, np.float64)
    if w.shape != v.shape or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be finite, >= 0, not all 0, one per value")
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    keep = w > 0
    v, w = v[keep], w[keep]
    cw = np.cumsum(w)
    total = cw[-1]
    tol = 1e-9 * total
    out = []
    for qq in np.atleast_1d(np.asarray(q, np.float64)):
        target = min(max(float(qq), 0.0), 1.0) * total
        i = min(int(np.searchsorted(cw, target - tol, side="left")), len(v) - 1)
        if abs(cw[i] - target) <= tol and i + 1 < len(v):
            out.append(0.5 * (v[i] + v[i + 1]))
        else:
            out.append(v[i])
    return np.asarray(out)


def vote_weights(scores: Sequence[float], tau: float = DEFAULT_TAU) -> np.ndarray:
    """``exp((s - max s) / tau)``: 1 for the best neighbour, less for worse ones."""
    s = np.asarray(scores, np.float64)
    if s.size == 0:
        return s
    if not math.isfinite(tau):
        return np.ones_like(s)
    if tau <= 0:
        raise ValueError("tau must be > 0 (or inf for equal weights)")
    return np.exp((s - s.max()) / tau)


def query_size(k: int, count: int) -> int:
    """How many photos to fetch from an index of ``count`` to find ``k`` priced listings
    (listings have ~1.8 photos; a few have no usable price)."""
    return max(1, min(int(count), 3 * int(k) + 10))


def _listing_key(hit: Any) -> str:
    pid = (hit.meta or {}).get("product_id")
    return f"p:{pid}" if pid else f"i:{hit.id}"


def merge_hits(hit_lists: Iterable[Sequence[Any]], *, exclude_ids: Iterable[str] = (),
               exclude_products: Iterable[str] = ()) -> list[Any]:
    """One hit per listing (its best score) from one or several photos' hit lists, best first.

    ``exclude_ids`` / ``exclude_products``: photo ids / listing ids never to use (e.g. the
    query's own listing when it is in the catalogue).
    """
    ex_ids = {str(i) for i in exclude_ids}
    ex_products = {str(p) for p in exclude_products}
    best: dict[str, Any] = {}
    for hits in hit_lists:
        for h in hits:
            pid = (h.meta or {}).get("product_id")
            if h.id in ex_ids or (pid is not None and str(pid) in ex_products):
                continue
            key = _listing_key(h)
            if key not in best or h.score > best[key].score:
                best[key] = h
    return sorted(best.values(), key=lambda h: (-h.score, h.id))


@dataclass
class PriceNeighbour:
    """A listing that voted: its best photo's id, the listing's id and title, its price and
    that photo's cosine similarity to the query."""

    id: str
    price: float
    score: float
    product_id: str | None = None
    title: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id}
        for key in ("product_id", "title"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        d["price"] = self.price
        d["score"] = self.score
        return d


@dataclass
class PriceSuggestion:
    """A suggested price with its range and the listings that voted (best first)."""

    path: str
    price: float | None
    low: float | None
    high: float | None
    neighbours: list[PriceNeighbour] = field(default_factory=list)
    paths: list[str] | None = None  # set when several photos were priced as one listing
    #: the photo is farther from the catalogue than val photos were (see ``similar``)
    uncertain: bool = False

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path}
        if self.paths is not None:
            d["paths"] = list(self.paths)
        d["price"] = self.price
        d["low"] = self.low
        d["high"] = self.high
        d["uncertain"] = bool(self.uncertain)
        d["neighbours"] = [n.to_dict() for n in self.neighbours]
        return d


def _money(x: float) -> float:
    return round(float(x), 2)


def suggest_from_hits(
    hit_lists: Iterable[Sequence[Any]],
    *,
    k: int = DEFAULT_K,
    tau: float = DEFAULT_TAU,
    statistic: str = DEFAULT_STATISTIC,
    max_price: float = MAX_VALID_PRICE,
    path: str = "",
    paths: list[str] | None = None,
    exclude_ids: Iterable[str] = (),
    exclude_products: Iterable[str] = (),
) -> PriceSuggestion:
    """The price rule (module docstring) applied to index hits of one photo or one listing.

    ``price``/``low``/``high`` are None when no neighbour has a usable price (e.g. an index
    of a plain photo folder, which has no prices).
    """
    if int(k) < 1:
        raise ValueError("k must be >= 1")
    merged = merge_hits(hit_lists, exclude_ids=exclude_ids, exclude_products=exclude_products)
    voters = [h for h in merged if valid_price(h.meta.get("price"), max_price)][: int(k)]
    if not voters:
        return PriceSuggestion(path, None, None, None, [], paths)
    prices = np.array([float(h.meta["price"]) for h in voters])
    w = vote_weights([h.score for h in voters], tau)
    lp = np.log(prices)
    lo, hi = np.exp(weighted_quantile(lp, w, RANGE_QUANTILES))
    mid = math.exp(predict_log_price([h.score for h in voters], lp, k=len(voters), tau=tau,
                                     statistic=statistic))
    # a weighted mean can fall just outside a narrow quantile range: the range holds it
    lo, hi = min(lo, mid), max(hi, mid)
    neighbours = [
        PriceNeighbour(h.id, float(h.meta["price"]), round(float(h.score), 6),
                       h.meta.get("product_id"), h.meta.get("title"))
        for h in voters
    ]
    return PriceSuggestion(path, _money(mid), _money(lo), _money(hi), neighbours, paths)


def predict_log_price(
    scores: Sequence[float], log_prices: Sequence[float], *, k: int = DEFAULT_K,
    tau: float = DEFAULT_TAU, statistic: str = DEFAULT_STATISTIC,
) -> float:
    """Vectorised core for evaluation: the log of the suggested price from neighbours that
    are already one-per-listing, priced, and sorted best first. ``statistic``: ``median``
    (what :func:`suggest_from_hits` does) or ``mean`` (weighted mean of log price)."""
    s = np.asarray(scores, np.float64)[: int(k)]
    lp = np.asarray(log_prices, np.float64)[: int(k)]
    if s.size == 0:
        return float("nan")
    w = vote_weights(s, tau)
    if statistic == "mean":
        return float(np.sum(w * lp) / np.sum(w))
    if statistic != "median":
        raise ValueError(f"unknown statistic {statistic!r}")
    return float(weighted_quantile(lp, w, 0.5)[0])


# -- the whole flow: photos in, suggestions out -----------------------------------------------

#: ``exclude_self``: a hit this similar is the query's own picture (a copy of the file).
SELF_COSINE = 0.999


def self_exclusions(name: str, hits: Sequence[Any], index: Any) -> tuple[set[str], set[str]]:
    """What ``exclude_self`` leaves out for a query photo: ``(photo ids, listing ids)``.

    The query's own photo is the indexed photo with the same file name stem, or any hit with
    cosine >= :data:`SELF_COSINE` (the same picture under another name); their listings go
    too, so a photo already in the catalogue is priced from *other* listings."""
    from pathlib import Path

    ids: set[str] = set()
    products: set[str] = set()
    stem = Path(name).stem
    ids.add(stem)
    row = index.get(stem)
    if row and row.get("product_id"):
        products.add(str(row["product_id"]))
    for h in hits:
        if h.score >= SELF_COSINE:
            ids.add(h.id)
            if (h.meta or {}).get("product_id"):
                products.add(str(h.meta["product_id"]))
    return ids, products


def suggest_price(
    model: Any,
    index: Any,
    photos: Sequence[Any],
    *,
    k: int | None = None,
    listing: bool = False,
    exclude_self: bool = False,
    title: str | None = None,
    batch_size: int = 32,
    names: Sequence[str] | None = None,
) -> Iterator[Any]:
    """Price photos against ``index``: a :class:`PriceSuggestion` or a
    :class:`~mkt.runtime.batch.PhotoError` per photo, in input order (``listing``: the errors,
    then one suggestion for all good photos). ``k``: listings that vote (default
    :data:`DEFAULT_K`). ``exclude_self``: leave out the query's own photo and listing
    (:func:`self_exclusions`), for photos that are already in the catalogue.

    ``title``: the seller's words too. Then the voters are the catalogue listings nearest by
    the fused similarity ``alpha * cos(photo) + (1 - alpha) * cos(title vs listing text)``
    and they vote by a weighted mean of log prices, with ``alpha``, ``k`` and the temperature
    fitted on val (the bundle's ``fusion.npz``; :mod:`mkt.runtime.fusion`). Needs a bundle
    with a text encoder and an index built with listing text."""
    from .batch import embed_batches, unlike_photos

    fused = _title_pricer(model, index, title) if title is not None else None
    if fused is not None:
        k = fused[0].price_k if k is None else int(k)
        tau, statistic = fused[0].price_tau, "mean"
    else:
        k = DEFAULT_K if k is None else int(k)
        tau, statistic = DEFAULT_TAU, DEFAULT_STATISTIC
    nq = query_size(k, index.count)
    pooled: list[Sequence[Any]] = []
    pooled_vecs: list[np.ndarray] = []
    pooled_names: list[str] = []
    ex_ids: set[str] = set()
    ex_products: set[str] = set()

    cal = getattr(model, "calibration", None)

    def suggest(hits: Sequence[Any], vec: np.ndarray, path: str, paths: list[str] | None,
                ids: set[str], products: set[str], unlike: bool = False) -> PriceSuggestion:
        if fused is not None:
            fusion, tvec, cat = fused
            hits = cat.hits(fusion, vec, tvec, k, exclude_products=products)
        s = suggest_from_hits([hits], k=k, tau=tau, statistic=statistic, path=path,
                              paths=paths, exclude_ids=ids, exclude_products=products)
        if cal is not None and fused is None:
            s.uncertain = bool(cal.neighbour_uncertain(
                s.neighbours[0].score if s.neighbours else None))
        s.uncertain = bool(s.uncertain or unlike)
        return s

    for batch, vecs in embed_batches(model, photos, batch_size, names=names):
        need_hits = fused is None or exclude_self
        found = iter(index.search(vecs, nq) if len(vecs) and need_hits else [])
        good = iter(vecs)
        odd = iter(unlike_photos(model, batch, vecs))
        for it in batch.items:
            if not it.ok:
                yield it.failure()
                continue
            vec = next(good)
            unlike = bool(next(odd))
            hits = next(found) if need_hits else []
            if exclude_self:
                ids, products = self_exclusions(it.name, hits, index)
            else:
                ids, products = set(), set()
            if listing:
                pooled.append(hits)
                pooled_vecs.append(vec)
                pooled_names.append(it.name)
                ex_ids |= ids
                ex_products |= products
                continue
            yield suggest(hits, vec, it.name, None, ids, products, unlike)
    if listing and pooled:
        if fused is not None:
            m = np.mean(pooled_vecs, axis=0)
            yield suggest([], m / max(float(np.linalg.norm(m)), 1e-12), pooled_names[0],
                          pooled_names, ex_ids, ex_products)
        else:
            s = suggest_from_hits(pooled, k=k, path=pooled_names[0], paths=pooled_names,
                                  exclude_ids=ex_ids, exclude_products=ex_products)
            if cal is not None:
                s.uncertain = bool(cal.neighbour_uncertain(
                    s.neighbours[0].score if s.neighbours else None))
            yield s


def _title_pricer(model: Any, index: Any, title: str) -> tuple[Any, np.ndarray, Any]:
    """(fusion settings, the title's vector, the index's listing catalogue) for pricing with
    the seller's title."""
    from .fusion import listing_catalogue, load_fusion
    from .text import TextEncoder, check_text

    text = check_text(title, "title")
    fusion = load_fusion(model.bundle)
    enc = TextEncoder.from_bundle(model.bundle, threads=getattr(model, "threads", None))
    return fusion, enc.encode([text])[0], listing_catalogue(index)


__all__ = [
    "DEFAULT_K",
    "DEFAULT_STATISTIC",
    "DEFAULT_TAU",
    "MAX_VALID_PRICE",
    "RANGE_QUANTILES",
    "SELF_COSINE",
    "PriceNeighbour",
    "PriceSuggestion",
    "merge_hits",
    "predict_log_price",
    "query_size",
    "self_exclusions",
    "suggest_from_hits",
    "suggest_price",
    "valid_price",
    "vote_weights",
    "weighted_quantile",
]
