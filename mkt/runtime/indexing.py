"""Building and growing a similarity index from photo sources (folders, dataset folders,
photo files): the orchestration behind ``mkt index build`` / ``mkt index add``, usable from
the Python API and a server too.

A photo that cannot be read (or a second photo with an id already seen) is reported through
``on_error`` (a :class:`~mkt.runtime.batch.PhotoError`) and skipped; the others are indexed.
``progress(done, total)`` is called after each batch. The index itself
(:class:`~mkt.runtime.index.Index`) writes every change as a new generation, atomically.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .batch import DEFAULT_BATCH, PhotoError, iter_batches
from .errors import CatalogueError, MktError

OnError = Callable[[PhotoError], None]
Progress = Callable[[int, int], None]


def _ignore(*_: Any) -> None:
    pass


@dataclass
class EmbeddedItems:
    """Catalogue items that could be embedded, their vectors ``[n, D]``, and the failures."""

    items: list[Any]
    vectors: np.ndarray
    errors: list[PhotoError] = field(default_factory=list)
    #: the photos in the text encoder's space ``[n, T]`` (bundles trained with text), or None
    text_vectors: np.ndarray | None = None


@dataclass
class IndexReport:
    """What a build or an add did: the index, photos indexed now, the failures."""

    index: Any
    added: int
    errors: list[PhotoError] = field(default_factory=list)


def embed_items(
    model: Any,
    items: Sequence[Any],
    *,
    batch_size: int = DEFAULT_BATCH,
    on_error: OnError = _ignore,
    progress: Progress = _ignore,
) -> EmbeddedItems:
    """Embed :class:`~mkt.runtime.catalogue.PhotoItem` objects; a second item with an id
    already seen and a photo that cannot be read are failures (reported, skipped)."""
    errors: list[PhotoError] = []

    def fail(e: PhotoError) -> None:
        errors.append(e)
        on_error(e)

    seen: set[str] = set()
    uniq = []
    for it in items:
        if it.id in seen:
            fail(PhotoError(str(it.path), f"{it.path}: duplicate photo id '{it.id}', skipped"))
            continue
        seen.add(it.id)
        uniq.append(it)
    good: list[Any] = []
    parts: list[np.ndarray] = []
    tparts: list[np.ndarray] = []
    with_text = bool(getattr(model, "has_text_embedding", False))
    done = 0
    for batch in iter_batches([it.path for it in uniq], model, batch_size):
        for bi in batch.bad:
            fail(bi.failure())
        good += [uniq[bi.index] for bi in batch.good]
        if batch.good:
            out = model.run(batch.arrays())
            parts.append(out["embedding"])
            if with_text:
                tparts.append(out["text_embedding"])
        done += len(batch.items)
        progress(done, len(uniq))
    vectors = np.concatenate(parts) if parts else \
        np.zeros((0, model.embedding_dim), np.float32)
    text = np.concatenate(tparts) if tparts else None
    return EmbeddedItems(good, vectors, errors, text)


def embed_listing_text(model: Any, index: Any, *, batch_size: int = DEFAULT_BATCH) -> int:
    """Give the index's listings (title + start of description) their text-encoder vectors,
    when the model's bundle ships a text encoder; returns how many were embedded."""
    if not (getattr(model, "bundle", None) and model.bundle.manifest.get("text")):
        return 0
    from .search import embed_listings
    from .text import TextEncoder

    return embed_listings(index, TextEncoder.from_bundle(model.bundle, threads=model.threads),
                          batch_size=batch_size)


def source_root(source: str | os.PathLike,
                options: Mapping[str, Any] | None = None) -> Path | None:
    """The folder item paths are recorded relative to: the source, or a photo's folder; for
    a database, its ``photos`` folder (None: paths as the database gives them)."""
    from .dburl import is_db_url

    if is_db_url(source):
        photos = (options or {}).get("photos")
        return Path(photos) if photos else None
    s = Path(source)
    return s if s.is_dir() else s.parent


def build_index(
    model: Any,
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    M: int = 16,
    ef_construction: int = 200,
    ef: int = 128,
    overwrite: bool = False,
    batch_size: int = DEFAULT_BATCH,
    command: str | None = None,
    on_error: OnError = _ignore,
    progress: Progress = _ignore,
    source_options: Mapping[str, Any] | None = None,
) -> IndexReport:
    """Embed every photo of ``source`` and write a new index at ``out``.

    Raises :class:`MktError` when ``out`` already holds an index (unless ``overwrite``) or
    ``source`` has no photos. ``command``: recorded in the index's provenance with the
    source (which :class:`~mkt.runtime.html.PhotoResolver` uses to find the photos again).
    """
    from .catalogue import open_source
    from .dburl import is_db_url, redact
    from .index import INDEX_JSON, Index, check_index_writable

    out = Path(out)
    if (out / INDEX_JSON).exists() and not overwrite:
        raise MktError(f"{out}: an index already exists (use --force, or `mkt index add`)")
    check_index_writable(out)  # before minutes of embedding, not after
    items = list(open_source(source, **(source_options or {})))  # database: streamed
    shown = redact(str(source)) if is_db_url(source) else str(source)
    if not items:
        raise MktError(f"{shown}: no photos found")
    root = source_root(source, source_options)
    emb = embed_items(model, items, batch_size=batch_size, on_error=on_error,
                      progress=progress)
    provenance = {"source": shown,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "photos": len(items), "skipped": len(emb.errors)}
    if command:
        provenance["command"] = command
    idx = Index.create(
        out, model_id=model.model_id, dim=model.embedding_dim, M=M,
        ef_construction=ef_construction, ef=ef, overwrite=overwrite,
        ids=[it.id for it in emb.items], vectors=emb.vectors,
        meta=[it.meta(root) for it in emb.items], provenance=provenance,
        text_vectors=emb.text_vectors,
    )
    embed_listing_text(model, idx, batch_size=batch_size)
    return IndexReport(idx, idx.count, emb.errors)


def add_to_index(
    model: Any,
    index: Any,
    sources: Sequence[str | os.PathLike],
    *,
    batch_size: int = DEFAULT_BATCH,
    on_error: OnError = _ignore,
    progress: Progress = _ignore,
) -> IndexReport:
    """Add the photos of ``sources`` to ``index`` (an open
    :class:`~mkt.runtime.index.Index`; id = file stem, an existing id is replaced). A source
    that cannot be read or has no photos is a failure; the other sources are still added."""
    from .catalogue import open_source

    errors: list[PhotoError] = []

    def fail(e: PhotoError) -> None:
        errors.append(e)
        on_error(e)

    items: list[Any] = []
    roots: dict[int, Path] = {}
    for s in sources:
        try:
            got = list(open_source(s))
        except CatalogueError as e:
            fail(PhotoError(str(s), str(e)))
            continue
        if not got:  # a folder without photos: say so rather than add nothing silently
            fail(PhotoError(str(s), f"{s}: no photos found"))
            continue
        root = source_root(s)
        items += got
        roots.update((id(it), root) for it in got)
    emb = embed_items(model, items, batch_size=batch_size, on_error=on_error,
                      progress=progress)
    n = index.add([it.id for it in emb.items], emb.vectors,
                  [it.meta(roots.get(id(it))) for it in emb.items],
                  text_vectors=emb.text_vectors)
    embed_listing_text(model, index, batch_size=batch_size)
    return IndexReport(index, n, errors + emb.errors)


__all__ = [
    "EmbeddedItems",
    "IndexReport",
    "add_to_index",
    "build_index",
    "embed_items",
    "embed_listing_text",
    "source_root",
]
