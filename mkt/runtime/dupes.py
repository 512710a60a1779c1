"""Duplicate photos: the same picture re-used across listings (a known scam signal).

Two photos are duplicates when their embeddings are nearly identical (cosine similarity
``>= threshold``) and, when perceptual hashes are available, their difference hashes
(dHash, :func:`dhash`) are close too. The embedding alone confuses two different photos of the
same item (same listing, shot a second apart) with a re-encoded copy; the hash, which looks at
the picture's coarse layout rather than what is in it, separates them.

Candidate pairs are each photo's :data:`HNSW_NEIGHBOURS` nearest neighbours (exactly, by a
chunked matrix product, up to :data:`EXACT_KNN_LIMIT` photos; through a temporary in-memory
hnswlib index beyond), checked by the rule (vectorised), then joined into groups with
union-find: time and memory grow with ``k x n``, not ``n^2``, however alike the photos are
(4,000 copies of one picture used to make 8 million pairs). A group larger than ``k`` is still
joined through shared members. :func:`candidate_pairs` (every pair above a threshold,
quadratic on look-alikes) stays for calibration (``benchmarks/eval_dupes.py``). Everything
works on arrays so the CLI, the server and the benchmarks share one implementation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The default rule, calibrated by ``benchmarks/eval_dupes.py`` (max F1 on one half of the
# shared photos; results in ``benchmarks/results/dupes.json`` / ``dupes.md``). Positives:
# byte-identical photos + JPEG q60 / 0.5x resize / 90% crop copies; negatives: every other
# pair, incl. other photos of the same listing. The int8 embedding alone moves a lot under
# re-encoding and blur (median cosine to the original: 0.98 JPEG q60, 0.90 resize), while
# dHash hardly moves (median 0-1 bits) except under cropping (9 bits); the embedding keeps
# look-alike layouts of different things apart. On the held-out half: precision 0.83 (a lower
# bound: the labels miss re-saved copies) and recall 0.72, against 0.55 / 0.66 for the best
# embedding-only threshold.

#: A pair is a candidate when its cosine similarity reaches this ...
DEFAULT_THRESHOLD = 0.80

#: ... and it is a duplicate when its dHash (8x8, 64 bits) Hamming distance is at most this
#: (None: not checked) ...
DEFAULT_MAX_HASH_DISTANCE: int | None = 8

#: ... or, whatever the hash says, when its cosine reaches this (None: no override). Catches
#: crops, which move the hash but not the embedding.
DEFAULT_SURE_THRESHOLD: float | None = 0.97

#: Up to this many photos, all pairs are compared exactly; above it hnswlib finds neighbours.
BRUTE_FORCE_LIMIT = 20_000

#: Neighbours a photo is compared with (:func:`knn_pairs`; and by :func:`candidate_pairs` when
#: the collection is too big for its exact search).
HNSW_NEIGHBOURS = 64

#: Up to this many photos :func:`knn_pairs` finds the neighbours exactly (matrix product,
#: ``n^2 d`` flops, ``chunk x n`` memory); beyond, through a temporary hnswlib index.
EXACT_KNN_LIMIT = 2048

HASH_SIZE = 8


# -- perceptual hash ----------------------------------------------------------------------


def _gray(arr: np.ndarray) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 3:
        a = a[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return a.astype(np.float64)


def _resize_gray(g: np.ndarray, w: int, h: int) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(np.clip(g, 0, 255).astype(np.uint8), mode="L")
    return np.asarray(im.resize((w, h), Image.BOX), dtype=np.float64)


def dhash(arr: np.ndarray, size: int = HASH_SIZE) -> np.ndarray:
    """Difference hash of an image array (``uint8`` HxWx3 or HxW): ``size*size`` bits, packed
    into ``uint8 [size*size/8]``. Bit = "this cell is brighter than its right neighbour" on a
    ``(size+1) x size`` grayscale thumbnail."""
    small = _resize_gray(_gray(arr), size + 1, size)
    bits = small[:, 1:] > small[:, :-1]
    return np.packbits(bits.ravel())


_POP = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distance between packed hashes (broadcasts over leading dimensions)."""
    x = np.bitwise_xor(np.asarray(a, np.uint8), np.asarray(b, np.uint8))
    return _POP[x].sum(axis=-1).astype(np.int64)


# -- the rule -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DupeRule:
    """When is a pair a duplicate: ``score >= threshold`` and (hash distance unknown or
    ``<= max_hash_distance``), or ``score >= sure_threshold`` (only when the sure threshold is
    above ``threshold``; otherwise it is ignored and the hash always decides)."""

    threshold: float = DEFAULT_THRESHOLD
    max_hash_distance: int | None = DEFAULT_MAX_HASH_DISTANCE
    sure_threshold: float | None = DEFAULT_SURE_THRESHOLD

    def accept(self, score: float, hash_distance: int | None) -> bool:
        if score < self.threshold:
            return False
        if self._sure is not None and score >= self._sure:
            return True
        if self.max_hash_distance is None or hash_distance is None:
            return True
        return hash_distance <= self.max_hash_distance

    def accept_array(self, scores: np.ndarray, hash_distances: np.ndarray | None) -> np.ndarray:
        """Vectorised :meth:`accept` (``hash_distances`` < 0 means unknown)."""
        s = np.asarray(scores, np.float64)
        ok = s >= self.threshold
        if self.max_hash_distance is not None and hash_distances is not None:
            h = np.asarray(hash_distances)
            ok &= (h < 0) | (h <= self.max_hash_distance)
        if self._sure is not None:
            ok |= s >= self._sure
        return ok

    @property
    def _sure(self) -> float | None:
        s = self.sure_threshold
        return s if s is not None and s > self.threshold else None

    @property
    def search_threshold(self) -> float:
        """Lowest cosine that can still be accepted: what the neighbour search must find."""
        return self.threshold

    @classmethod
    def from_options(cls, threshold: float | None = None, max_hash_distance: int | None = None,
                     *, use_hash: bool = True) -> DupeRule:
        """The default rule with a command line's overrides (None: keep the default).
        ``use_hash=False``: decide on the embedding alone. The hash-free override
        (``sure_threshold``) only counts above the threshold."""
        t = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        sure = DEFAULT_SURE_THRESHOLD
        return cls(
            threshold=t,
            max_hash_distance=None if not use_hash else (
                DEFAULT_MAX_HASH_DISTANCE if max_hash_distance is None
                else int(max_hash_distance)),
            sure_threshold=None if (not use_hash or sure is None or sure <= t) else sure,
        )

    def describe(self) -> str:
        """The rule in words, e.g. ``cosine >= 0.8 and dHash <= 8, or cosine >= 0.97``."""
        s = f"cosine >= {self.threshold:g}"
        if self.max_hash_distance is not None:
            s += f" and dHash <= {self.max_hash_distance}"
            if self._sure is not None:
                s += f", or cosine >= {self._sure:g}"
        return s


# -- neighbour search ---------------------------------------------------------------------


def candidate_pairs(vectors: np.ndarray, threshold: float, *, chunk: int = 2048,
                    brute_force_limit: int = BRUTE_FORCE_LIMIT,
                    neighbours: int = HNSW_NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``i < j`` with cosine ``>= threshold``: ``(pairs int64 [P,2], scores [P])``.

    Exact for up to ``brute_force_limit`` vectors; beyond, each vector's ``neighbours`` hnswlib
    nearest are checked (a group larger than that is still joined through shared members).
    """
    v = np.asarray(vectors, np.float32)
    n = len(v)
    if n < 2:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    ii: list[np.ndarray] = []
    jj: list[np.ndarray] = []
    ss: list[np.ndarray] = []
    if n <= brute_force_limit:
        for start in range(0, n, chunk):
            sims = v[start : start + chunk] @ v.T
            r, c = np.nonzero(sims >= threshold)
            r = r + start
            keep = c > r
            ii.append(r[keep])
            jj.append(c[keep])
            ss.append(sims[r[keep] - start, c[keep]])
    else:
        import hnswlib

        h = hnswlib.Index(space="cosine", dim=v.shape[1])
        h.init_index(max_elements=n, ef_construction=200, M=16)
        h.add_items(v, np.arange(n))
        k = min(n, neighbours + 1)
        h.set_ef(max(k, 64))
        labels, dists = h.knn_query(v, k=k)
        sims = 1.0 - dists
        r = np.repeat(np.arange(n), k)
        c = labels.ravel().astype(np.int64)
        s = sims.ravel()
        keep = (s >= threshold) & (c != r)
        r, c, s = r[keep], c[keep], s[keep]
        a, b = np.minimum(r, c), np.maximum(r, c)
        key = np.unique(a * n + b, return_index=True)[1]
        ii.append(a[key])
        jj.append(b[key])
        ss.append(s[key])
    pairs = np.stack([np.concatenate(ii), np.concatenate(jj)], axis=1).astype(np.int64)
    scores = np.concatenate(ss).astype(np.float32)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return pairs[order], scores[order]


def knn_pairs(vectors: np.ndarray, threshold: float, *,
              neighbours: int = HNSW_NEIGHBOURS, exact_limit: int = EXACT_KNN_LIMIT,
              chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``i < j`` with cosine ``>= threshold`` where ``j`` is among ``i``'s
    ``neighbours`` nearest or ``i`` among ``j``'s: ``(pairs int64 [P,2], scores [P])``, sorted,
    ``P <= neighbours x n``. Exact neighbours up to ``exact_limit`` vectors, a temporary
    in-memory hnswlib index beyond. Memory ``O(k n)`` (plus ``chunk x n`` when exact)."""
    v = np.asarray(vectors, np.float32)
    n = len(v)
    if n < 2:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    k = max(1, min(n - 1, int(neighbours)))
    if n <= exact_limit:
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        sims: list[np.ndarray] = []
        for start in range(0, n, chunk):
            s = v[start : start + chunk] @ v.T
            r = np.arange(start, start + len(s))
            s[r - start, r] = -np.inf  # not itself
            top = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < n - 1 else \
                np.argsort(-s, axis=1)[:, : n - 1]
            rows.append(np.repeat(r, top.shape[1]))
            cols.append(top.ravel())
            sims.append(np.take_along_axis(s, top, axis=1).ravel())
        r, c, sc = np.concatenate(rows), np.concatenate(cols), np.concatenate(sims)
    else:
        import hnswlib

        h = hnswlib.Index(space="cosine", dim=v.shape[1])
        h.init_index(max_elements=n, ef_construction=200, M=16, random_seed=0)
        h.add_items(v, np.arange(n))
        kq = min(n, k + 1)
        h.set_ef(max(2 * kq, 64))
        labels, dists = h.knn_query(v, k=kq)
        del h
        r = np.repeat(np.arange(n), kq)
        c = labels.ravel().astype(np.int64)
        sc = (1.0 - dists).ravel()
    keep = (sc >= threshold) & (c != r)
    r, c, sc = r[keep], c[keep], sc[keep].astype(np.float32)
    a, b = np.minimum(r, c).astype(np.int64), np.maximum(r, c).astype(np.int64)
    _, first = np.unique(a * n + b, return_index=True)  # sorted by (a, b)
    return np.stack([a[first], b[first]], axis=1), sc[first]


# -- grouping -----------------------------------------------------------------------------


class UnionFind:
    """Disjoint sets over ``0..n-1`` (path halving, union by size)."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, x: int) -> int:
        p = self.parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return x

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]
        return ra


@dataclass
class DupePair:
    a: int
    b: int
    score: float
    hash_distance: int | None = None


@dataclass
class DupeGroup:
    """Photos (positions in the input) that are the same picture, and the pairs that say so."""

    members: list[int]
    pairs: list[DupePair] = field(default_factory=list)


def group_pairs(n: int, pairs: Sequence[DupePair]) -> list[DupeGroup]:
    """Union-find accepted pairs into groups (size >= 2), largest first, then by position."""
    uf = UnionFind(n)
    for p in pairs:
        uf.union(p.a, p.b)
    groups: dict[int, DupeGroup] = {}
    for p in pairs:
        root = uf.find(p.a)
        groups.setdefault(root, DupeGroup([])).pairs.append(p)
    for g in groups.values():
        g.members = sorted({m for p in g.pairs for m in (p.a, p.b)})
        g.pairs.sort(key=lambda p: (-p.score, p.a, p.b))
    return sorted(groups.values(), key=lambda g: (-len(g.members), g.members[0]))


def find_duplicates(
    vectors: np.ndarray,
    *,
    hashes: np.ndarray | Sequence[np.ndarray | None] | None = None,
    rule: DupeRule | None = None,
    extra_pairs: Sequence[DupePair] = (),
    neighbours: int = HNSW_NEIGHBOURS,
) -> list[DupeGroup]:
    """Groups of duplicate photos among ``vectors`` (L2-normalised embeddings, one a photo).

    ``hashes``: packed dHash per photo (:func:`dhash`; None entries = unknown), or None to
    decide on the embedding alone. ``extra_pairs``: candidate pairs found elsewhere (e.g.
    against a catalogue index, with positions beyond ``len(vectors)``), checked by the same
    rule and joined into the same groups. ``neighbours``: candidates per photo
    (:func:`knn_pairs`); time and memory grow with ``neighbours x len(vectors)``.
    """
    rule = rule or DupeRule()
    v = np.asarray(vectors, np.float32)
    idx, scores = knn_pairs(v, rule.search_threshold, neighbours=neighbours)
    hd = _pair_hash_distances(hashes, idx, len(v))
    ok = rule.accept_array(scores, hd)
    accepted: list[DupePair] = [
        DupePair(int(a), int(b), float(s), None if h < 0 else int(h))
        for (a, b), s, h in zip(idx[ok].tolist(), scores[ok].tolist(),
                                (hd[ok] if hd is not None else np.full(int(ok.sum()), -1)).tolist(),
                                strict=True)
    ]
    for p in extra_pairs:
        if rule.accept(p.score, p.hash_distance):
            accepted.append(p)
    n = max([len(v)] + [max(p.a, p.b) + 1 for p in accepted])
    return group_pairs(n, accepted)


def _pair_hash_distances(hashes: Any, pairs: np.ndarray, n: int) -> np.ndarray | None:
    """dHash distances of ``pairs`` (-1 where a hash is unknown), or None without hashes."""
    if hashes is None:
        return None
    known = [h for h in list(hashes)[:n] if h is not None]
    if not known:
        return np.full(len(pairs), -1, np.int64)
    width = len(np.asarray(known[0], np.uint8).ravel())
    mat = np.zeros((n, width), np.uint8)
    have = np.zeros(n, bool)
    for i, h in enumerate(list(hashes)[:n]):
        if h is not None:
            mat[i] = np.asarray(h, np.uint8).ravel()
            have[i] = True
    a, b = pairs[:, 0], pairs[:, 1]
    d = _POP[np.bitwise_xor(mat[a], mat[b])].sum(axis=1).astype(np.int64)
    d[~(have[a] & have[b])] = -1
    return d


# -- the whole flow: photo sources in, groups out ---------------------------------------------


@dataclass
class DupePhoto:
    """A photo in a group: from the checked sources (``source="source"``) or a catalogue
    index (``"index"``), with its listing's metadata when known. ``file``: the local file
    (for thumbnails; None when an index photo is not found locally); not part of the JSON."""

    id: str
    path: str | None = None
    product_id: str | None = None
    title: str | None = None
    price: float | None = None
    category: str | None = None
    source: str = "source"
    file: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id}
        for key in ("path", "product_id", "title", "price", "category"):
            v = getattr(self, key)
            if v is not None:
                d[key] = v
        d["source"] = self.source
        return d


@dataclass
class DupeMatch:
    """Why two photos (by id) are in one group: their cosine and dHash distance."""

    a: str
    b: str
    score: float
    hash_distance: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"a": self.a, "b": self.b, "score": round(float(self.score), 6)}
        if self.hash_distance is not None:
            d["hash_distance"] = int(self.hash_distance)
        return d


@dataclass
class DupesGroupResult:
    """One group of the same picture: JSON ``{"group", "size", "photos", "pairs"}``."""

    group: int
    photos: list[DupePhoto]
    pairs: list[DupeMatch]

    @property
    def size(self) -> int:
        return len(self.photos)

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "size": self.size,
                "photos": [p.to_dict() for p in self.photos],
                "pairs": [p.to_dict() for p in self.pairs]}


@dataclass
class DupesReport:
    """Everything :func:`find_dupes` found: the groups, the photos that could not be read
    (:class:`~mkt.runtime.batch.PhotoError`), how many photos were checked, the rule."""

    groups: list[DupesGroupResult]
    errors: list[Any]
    checked: int
    total: int
    rule: DupeRule

    def summary(self) -> str:
        n = len(self.groups)
        return (f"{self.checked} photos checked, {n} group{'s' if n != 1 else ''} of "
                f"duplicates ({sum(g.size for g in self.groups)} photos); "
                f"rule: {self.rule.describe()}")


def find_dupes(
    model: Any,
    sources: Sequence[Any],
    *,
    rule: DupeRule | None = None,
    index: Any = None,
    resolver: Any = None,
    batch_size: int = 32,
) -> DupesReport:
    """Groups of the same picture among the photos of ``sources`` (folders, dataset folders,
    photo files) and, with ``index``, copies of them in that index.

    ``resolver``: finds the local file of an index photo (``.resolve(meta_path)``; default:
    :meth:`mkt.runtime.html.PhotoResolver.for_index`), whose dHash the rule needs. A source
    or photo that cannot be read is an error of the report, not an exception;
    :class:`~mkt.runtime.errors.MktError` only when there is no photo at all.
    """
    from .batch import PhotoError, embed_batches
    from .catalogue import iter_source
    from .errors import CatalogueError, MktError

    rule = rule or DupeRule()
    items: list[Any] = []
    errors: list[Any] = []
    for s in sources:
        try:
            items += iter_source(s)
        except CatalogueError as e:  # e.g. a missing path: report it, check the others
            errors.append(PhotoError(str(s), str(e)))
    if not items:
        raise MktError(f"{', '.join(map(str, sources))}: no photos found")

    rows: list[DupePhoto] = []
    parts: list[np.ndarray] = []
    hashes: list[Any] = []
    for batch, vecs in embed_batches(model, [it.path for it in items], batch_size):
        errors += [it.failure() for it in batch.bad]
        for bi in batch.good:
            it = items[bi.index]
            rows.append(DupePhoto(it.id, str(it.path), it.product_id, it.title, it.price,
                                  it.category, "source", it.path))
            hashes.append(dhash(np.asarray(bi.array)))
        parts.append(vecs)
    n = len(rows)
    vecs = np.concatenate(parts) if parts else np.zeros((0, model.embedding_dim), np.float32)
    extra = _index_pairs(model, index, vecs, rows, hashes, rule, resolver) \
        if index is not None and n and index.count else []
    groups = find_duplicates(vecs, hashes=None if rule.max_hash_distance is None else hashes[:n],
                             rule=rule, extra_pairs=extra)
    out = [
        DupesGroupResult(g_no, [rows[m] for m in g.members],
                         [DupeMatch(rows[p.a].id, rows[p.b].id, p.score, p.hash_distance)
                          for p in g.pairs])
        for g_no, g in enumerate(groups, 1)
    ]
    return DupesReport(out, errors, n, len(items), rule)


def _index_pairs(model: Any, index: Any, vecs: np.ndarray, rows: list[DupePhoto],
                 hashes: list[Any], rule: DupeRule, resolver: Any) -> list[DupePair]:
    """Candidate pairs between the source photos and ``index`` photos; appends the index
    photos to ``rows`` / ``hashes`` (positions after the sources')."""
    from .batch import photo_loader
    from .errors import MktError

    load = photo_loader(model)
    if resolver is None:
        from .html import PhotoResolver

        resolver = PhotoResolver.for_index(index)
    n = len(rows)
    # A source photo is skipped in the index only when it *is* that indexed file (checking a
    # catalogue against its own index). Sharing an id (file stem) is not enough: a re-used
    # catalogue photo saved under its catalogue name is exactly what this looks for.
    own: dict[str, list[Any]] = {}
    for r in rows:
        own.setdefault(r.id, []).append(r.file)
    pos_of: dict[str, int] = {}
    extra: list[DupePair] = []
    for i, hits in enumerate(index.search(vecs, min(index.count, 32))):
        for h in hits:
            if h.score < rule.search_threshold:
                continue
            if h.id in own and _same_file(resolver.resolve((h.meta or {}).get("path")),
                                          own[h.id]):
                continue
            if h.id not in pos_of:
                pos_of[h.id] = len(rows)
                m = h.meta or {}
                local = resolver.resolve(m.get("path"))
                rows.append(DupePhoto(h.id, m.get("path"), m.get("product_id"), m.get("title"),
                                      m.get("price"), m.get("category"), "index", local))
                hsh = None
                if local is not None and rule.max_hash_distance is not None:
                    try:
                        hsh = dhash(load(local))
                    except MktError:
                        hsh = None
                hashes.append(hsh)
            j = pos_of[h.id]
            hd = None
            if i < n and hashes[j] is not None and rule.max_hash_distance is not None:
                hd = int(hamming(hashes[i], hashes[j]))
            extra.append(DupePair(i, j, float(h.score), hd))
    return extra


def _same_file(local: Any, files: Sequence[Any]) -> bool:
    """Whether ``local`` (an index photo's local file, or None) is one of ``files``."""
    if local is None:
        return False
    for f in files:
        try:
            if f is not None and os.path.samefile(local, f):
                return True
        except OSError:
            continue
    return False


__all__ = [
    "BRUTE_FORCE_LIMIT",
    "DEFAULT_MAX_HASH_DISTANCE",
    "DEFAULT_SURE_THRESHOLD",
    "DEFAULT_THRESHOLD",
    "EXACT_KNN_LIMIT",
    "DupeGroup",
    "DupeMatch",
    "DupePair",
    "DupePhoto",
    "DupeRule",
    "DupesGroupResult",
    "DupesReport",
    "UnionFind",
    "candidate_pairs",
    "dhash",
    "find_dupes",
    "find_duplicates",
    "group_pairs",
    "hamming",
    "knn_pairs",
]
