"""Photos in batches, with per-photo errors: the one loop behind every batch command.

:func:`iter_batches` decodes + letterboxes photos in a thread pool and yields :class:`Batch`
objects, in input order. A photo that cannot be read is not an exception that stops the run:
it is a :class:`BatchItem` whose ``error`` is the :class:`~mkt.runtime.errors.MktError` naming
the file, so a caller reports it and carries on with the others.

On top of it, the two photo answers that need nothing but a model (and an index):
:func:`classify_photos` and :func:`similar_photos`. They yield one result a photo, in input
order: a :class:`~mkt.runtime.model.Prediction` / :class:`SimilarResult`, or a
:class:`PhotoError` for a bad photo. The CLI, :mod:`mkt.serve` and the Python API print or
return these; ``to_dict()`` is the JSON shape (docs/design.md) everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import BadImageError, MktError
from .images import ImageSource, load_letterboxed

#: Photos per inference unless the caller says otherwise.
DEFAULT_BATCH = 32


@dataclass(frozen=True)
class PhotoError:
    """A photo that could not be used: its name and the one-line reason (which names it)."""

    path: str
    error: str
    #: the exception itself (e.g. an ImageTooLargeError: a server answers 413, not 400)
    exc: MktError | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "error": self.error}


@dataclass
class BatchItem:
    """One input photo: its position in the input, the source, its display name, and either
    the letterboxed ``uint8 [S, S, 3]`` array or the error that says why there is none."""

    index: int
    source: Any
    name: str
    array: np.ndarray | None = None
    error: MktError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def failure(self) -> PhotoError:
        return PhotoError(self.name, str(self.error), self.error)


@dataclass
class Batch:
    """Consecutive input photos (``items``, in input order), decoded or failed."""

    items: list[BatchItem] = field(default_factory=list)

    @property
    def good(self) -> list[BatchItem]:
        return [it for it in self.items if it.ok]

    @property
    def bad(self) -> list[BatchItem]:
        return [it for it in self.items if not it.ok]

    def arrays(self) -> np.ndarray:
        """The good photos stacked: ``uint8 [n_good, S, S, 3]`` (call only when any is good)."""
        return np.stack([it.array for it in self.good if it.array is not None])


def source_name(src: Any, i: int = 0) -> str:
    """How a photo is named in results and errors: its path, or ``<bytes:i>``."""
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    return f"<bytes:{i}>"


def photo_loader(model_or_size: Any) -> Callable[..., np.ndarray]:
    """``load(src, name=None) -> uint8 [S, S, 3]`` for a model (its preprocessing contract,
    ``model.preprocess`` when it has one, else letterboxing to its input size) or a size."""
    if isinstance(model_or_size, int):
        size = model_or_size
    else:
        pre = getattr(model_or_size, "preprocess", None)
        if pre is not None and hasattr(pre, "load"):
            return pre.load
        size = model_or_size.input_size

    def load(src: Any, name: str | None = None) -> np.ndarray:
        return load_letterboxed(src, size, name=name)

    return load


def iter_batches(
    sources: Sequence[ImageSource],
    model_or_size: Any,
    batch_size: int = DEFAULT_BATCH,
    *,
    names: Sequence[str] | None = None,
    workers: int | None = None,
) -> Iterator[Batch]:
    """Decode + letterbox ``sources`` in threads, ``batch_size`` at a time, in input order.

    ``model_or_size``: a :class:`~mkt.runtime.model.Model` (its input size and thread count)
    or the side length. Never raises for a bad photo: the item carries the error instead.

    The next batch is decoded while the caller works on the current one (one batch ahead:
    PIL releases the GIL while decoding, so decoding overlaps the model's inference instead
    of alternating with it, as it did before; `mkt bench` measures both, "indexing").
    """
    load = photo_loader(model_or_size)
    threads = 1 if isinstance(model_or_size, int) else model_or_size.threads
    names = list(names) if names is not None else [
        source_name(s, i) for i, s in enumerate(sources)]

    def one(i: int) -> BatchItem:
        item = BatchItem(i, sources[i], names[i])
        try:
            item.array = load(sources[i], name=names[i])
        except MktError as e:
            item.error = e if isinstance(e, BadImageError) else BadImageError(str(e))
        return item

    batch_size = max(1, int(batch_size))
    n = len(sources)
    with ThreadPoolExecutor(max_workers=max(1, workers or threads)) as ex:

        def submit(start: int) -> list[Any]:
            return [ex.submit(one, i) for i in range(start, min(start + batch_size, n))]

        futs = submit(0)
        for start in range(0, n, batch_size):
            items = [f.result() for f in futs]
            if start + batch_size < n:
                futs = submit(start + batch_size)  # decoded while the caller runs the model
            yield Batch(items)


# -- classify / similar ---------------------------------------------------------------------


@dataclass
class SimilarHit:
    """One similar indexed photo: id, cosine similarity, its listing's metadata (when known)."""

    id: str
    score: float
    product_id: str | None = None
    title: str | None = None
    price: float | None = None
    category: str | None = None
    #: set by ``--near`` (:func:`mkt.runtime.location.rank_by_distance`): the listing's
    #: location text and its distance in km from the ``--near`` point
    location: str | None = None
    distance_km: float | None = None

    @classmethod
    def from_hit(cls, hit: Any) -> SimilarHit:
        m = hit.meta or {}
        return cls(hit.id, float(hit.score), m.get("product_id"), m.get("title"),
                   m.get("price"), m.get("category"))

    def to_dict(self) -> dict[str, Any]:
        """``{"id", "score", ...}``; metadata keys only when not null."""
        d: dict[str, Any] = {"id": self.id, "score": round(float(self.score), 6)}
        for k in ("product_id", "title", "price", "category", "location", "distance_km"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d


@dataclass
class SimilarResult:
    """The answer of ``similar`` for one photo: its hits, best first. ``.hits`` (not a field,
    not in the JSON) keeps the index's :class:`~mkt.runtime.index.Hit` objects, whose
    metadata has the photo ``path`` an HTML page needs."""

    path: str
    results: list[SimilarHit]
    #: the nearest catalogue photo is farther than val photos' nearest ever were (the
    #: bundle's calibrated ``min_neighbour_score``): the photo is unlike the catalogue
    uncertain: bool = False

    def __post_init__(self) -> None:
        self.hits: list[Any] = []

    @classmethod
    def from_hits(cls, path: str, hits: Sequence[Any]) -> SimilarResult:
        r = cls(path, [SimilarHit.from_hit(h) for h in hits])
        r.hits = list(hits)
        return r

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "uncertain": bool(self.uncertain),
                "results": [h.to_dict() for h in self.results]}


def classify_photos(
    model: Any,
    photos: Sequence[ImageSource],
    *,
    k: int = 3,
    listing: bool = False,
    title: str | None = None,
    batch_size: int = DEFAULT_BATCH,
    names: Sequence[str] | None = None,
    votes: Any = None,
) -> Iterator[Any]:
    """A :class:`~mkt.runtime.model.Prediction` or a :class:`PhotoError` per photo, in input
    order. ``listing``: the good photos are one listing; after their errors, one prediction
    from the mean of their logits (none when no photo could be read). ``title``: the
    seller's title joins the photos (:meth:`~mkt.runtime.model.Model.classify_with_title`).
    ``votes``: catalogue neighbours vote too (:class:`~mkt.runtime.votes.NeighbourVotes`)."""
    pooled: list[BatchItem] = []
    for batch in iter_batches(photos, model, batch_size, names=names):
        yield from (it.failure() for it in batch.bad) if listing else ()
        good = batch.good
        if listing:
            pooled += good
            continue
        preds = iter(model.classify_arrays(batch.arrays(), [it.name for it in good], k=k,
                                           title=title, votes=votes) if good else [])
        for it in batch.items:
            yield next(preds) if it.ok else it.failure()
    if listing and pooled:
        arr = np.stack([it.array for it in pooled if it.array is not None])
        yield model.classify_arrays(arr, [it.name for it in pooled], k=k, listing=True,
                                    title=title, votes=votes)[0]


def embed_batches(
    model: Any, photos: Sequence[ImageSource], batch_size: int = DEFAULT_BATCH,
    *, names: Sequence[str] | None = None,
) -> Iterator[tuple[Batch, np.ndarray]]:
    """``(batch, embeddings of its good photos [n_good, D])`` for each batch."""
    for batch in iter_batches(photos, model, batch_size, names=names):
        good = batch.good
        vecs = model.embed_arrays(batch.arrays()) if good else \
            np.zeros((0, model.embedding_dim), np.float32)
        yield batch, vecs


def _far(model: Any, hits: Sequence[Any]) -> bool:
    """True when the best hit is under the bundle's calibrated neighbour floor."""
    cal = getattr(model, "calibration", None)
    if cal is None:
        return False
    return bool(cal.neighbour_uncertain(hits[0].score if hits else None))


def unlike_photos(model: Any, batch: Batch, vecs: np.ndarray) -> np.ndarray:
    """``bool [n_good]``: photos that do not look like catalogue photos at all (pixel bounds,
    distance to the reference centroids; the confidence floor is the classifier's and does
    not apply). Why: an embedding can land near *some* catalogue photo even for noise."""
    cal = getattr(model, "calibration", None)
    if cal is None or not len(vecs):
        return np.zeros(len(vecs), bool)
    return cal.flags(np.ones((len(vecs), 1), np.float32), vecs, batch.arrays())


def similar_photos(
    model: Any,
    index: Any,
    photos: Sequence[ImageSource],
    *,
    k: int = 10,
    text: str | None = None,
    batch_size: int = DEFAULT_BATCH,
    names: Sequence[str] | None = None,
    near: Any = None,
    within_km: float | None = None,
) -> Iterator[SimilarResult | PhotoError]:
    """A :class:`SimilarResult` (the ``k`` nearest indexed photos) or a :class:`PhotoError`
    per photo, in input order. ``text``: words too ("in oak"): the photo's nearest listings
    and the words' own ranking are fused per listing by reciprocal rank
    (:func:`mkt.runtime.search.similar_with_text`); one result a listing. ``near`` (a
    :class:`~mkt.runtime.location.Place`) / ``within_km``: ranked and filtered by distance
    (:func:`mkt.runtime.location.rank_by_distance`)."""
    encoder = None
    if text is not None:
        from .text import check_text

        text = check_text(text, "--text")
        encoder = model.text_encoder()
    depth = k if text is None else max(100, 5 * k)
    for batch, vecs in embed_batches(model, photos, batch_size, names=names):
        found = iter(index.search(vecs, depth) if len(vecs) else [])
        rows = iter(vecs)
        odd = iter(unlike_photos(model, batch, vecs))
        for it in batch.items:
            if not it.ok:
                yield it.failure()
                continue
            hits = next(found)
            vec = next(rows)
            unlike = bool(next(odd))  # consumed for every good photo, never short-circuited
            far = _far(model, hits) or unlike
            if near is not None:
                r = _near_result(index, encoder, it.name, vec, text, k, near, within_km)
                r.uncertain = far
                yield r
                continue
            if encoder is None:
                r = SimilarResult.from_hits(it.name, hits)
                r.uncertain = far
                yield r
                continue
            from .index import Hit
            from .search import similar_with_text

            fused = similar_with_text(index, encoder, hits, text, k)
            meta = index.photos_meta([h.id for h in fused.results])
            r = SimilarResult(it.name, list(fused.results), uncertain=far)
            r.hits = [Hit(h.id, h.score, -1, dict(meta.get(h.id) or {})) for h in fused.results]
            yield r


def _near_result(index: Any, encoder: Any, name: str, vec: Any, text: str | None, k: int,
                 near: Any, within_km: float | None) -> SimilarResult:
    """``similar --near``: candidates by photo (and words), re-ranked by distance."""
    from .location import rank_by_distance

    def fetch(n: int) -> list[Any]:
        hits = index.search(vec[None], n)[0]
        if encoder is None:
            return hits
        from .search import similar_with_text

        return list(similar_with_text(index, encoder, index.search(vec[None], max(100, n))[0],
                                      text or "", n).results)

    ranked = rank_by_distance(index, fetch, near, k, within_km=within_km)
    if encoder is None:
        r = SimilarResult.from_hits(name, [x.hit for x in ranked])
    else:
        from .index import Hit

        meta = index.photos_meta([x.hit.id for x in ranked])
        r = SimilarResult(name, [x.hit for x in ranked])
        r.hits = [Hit(x.hit.id, x.hit.score, -1, dict(meta.get(x.hit.id) or {}))
                  for x in ranked]
    for h, x in zip(r.results, ranked, strict=True):
        h.location, h.distance_km = x.location, x.distance_km
    return r


__all__ = [
    "DEFAULT_BATCH",
    "Batch",
    "BatchItem",
    "PhotoError",
    "SimilarHit",
    "SimilarResult",
    "classify_photos",
    "embed_batches",
    "iter_batches",
    "photo_loader",
    "similar_photos",
    "source_name",
]
