"""``mkt index sync SOURCE --index DIR``: bring an index up to date with its catalogue.

Why not rebuild: a catalogue (a SQL database, a dataset folder) changes a little at a time,
and embedding is the expensive part. Sync compares every photo of the source with what the
index stores and embeds only photos that are new or whose file changed (another path, or
another size/mtime: :func:`~mkt.runtime.catalogue.file_signature`); a changed title, price,
category, description or location is written without re-embedding; photos gone from the
source are removed. All of it is one generation (:meth:`~mkt.runtime.index.Index.sync`), so
a crash leaves the old index or the new one; the listings' text vectors of changed
listings then follow in a second commit, as after ``index add``.

A photo that cannot be read is reported and skipped; if the index already has it, its
entry is kept as it was (a missing file in the source is not a deletion).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .batch import DEFAULT_BATCH, PhotoError
from .indexing import (
    EmbeddedItems,
    OnError,
    Progress,
    _ignore,
    embed_items,
    embed_listing_text,
)

#: listing metadata that, when it differs, is an update (written without re-embedding);
#: lat/lon follow the location (a differing place alone, e.g. an index written before they
#: were stored, or a new gazetteer, is written too but counted as unchanged)
_COMPARED = ("product_id", "title", "price", "category", "location", "description")


@dataclass
class SyncReport:
    """What a sync did: photos added (new), updated (re-embedded or metadata), removed,
    unchanged; the failures; the seconds it took."""

    index: Any
    added: int = 0
    updated: int = 0
    reembedded: int = 0
    removed: int = 0
    unchanged: int = 0
    errors: list[PhotoError] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"added": self.added, "updated": self.updated, "reembedded": self.reembedded,
                "removed": self.removed, "unchanged": self.unchanged,
                "errors": len(self.errors), "seconds": round(self.seconds, 2),
                "count": self.index.count, "generation": self.index.generation}


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (int, float)) or isinstance(b, (int, float)):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-6)
        except (TypeError, ValueError):
            return False
    return str(a) == str(b)


def _meta_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    from .index import _clean_meta

    o, n = _clean_meta(old), _clean_meta(new)
    return any(not _same(o[k], n[k]) for k in _COMPARED)


def _bookkeeping(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """The photo's stored place or file signature is missing or stale (nothing a user
    changed): rewrite the row, count it unchanged."""
    return old.get("fsig") is None or any(not _same(old.get(k), new.get(k))
                                          for k in ("lat", "lon"))


def sync_index(
    model: Any,
    index: Any,
    source: str | os.PathLike,
    *,
    source_options: Mapping[str, Any] | None = None,
    batch_size: int = DEFAULT_BATCH,
    on_error: OnError = _ignore,
    progress: Progress = _ignore,
) -> SyncReport:
    """Make ``index`` (open, writable) hold exactly the photos of ``source`` (see the module
    doc); ``source_options``: :func:`~mkt.runtime.catalogue.open_source`'s keywords."""
    from .catalogue import open_source
    from .dburl import is_db_url
    from .indexing import source_root

    t0 = time.perf_counter()
    rep = SyncReport(index)

    def fail(e: PhotoError) -> None:
        rep.errors.append(e)
        on_error(e)

    opts = dict(source_options or {})
    if is_db_url(source):
        root = Path(opts["photos"]) if opts.get("photos") else None
    else:
        root = source_root(source)
    stored = index.sync_state()
    seen: set[str] = set()
    embed: list[Any] = []
    update: dict[str, dict[str, Any]] = {}
    for it in open_source(source, **opts):
        if it.id in seen:
            fail(PhotoError(str(it.path), f"{it.path}: duplicate photo id '{it.id}', skipped"))
            continue
        seen.add(it.id)
        meta = it.meta(root)
        old = stored.get(it.id)
        if old is None:
            embed.append(it)
        elif meta["fsig"] is None:  # the file is gone: report, keep the indexed entry
            fail(PhotoError(str(it.path), f"{it.path}: photo file not found (photo "
                            f"'{it.id}' kept in the index as it was)"))
        elif meta["path"] != old["path"] or (old["fsig"] is not None
                                             and meta["fsig"] != old["fsig"]):
            embed.append(it)
        elif _meta_changed(old, meta):
            update[it.id] = meta
            rep.updated += 1
        else:
            if _bookkeeping(old, meta):  # e.g. an index built before signatures and places
                update[it.id] = meta
            rep.unchanged += 1
    remove = [i for i in stored if i not in seen]
    if embed:
        emb = embed_items(model, embed, batch_size=batch_size, on_error=fail,
                          progress=progress)
    else:  # metadata only: the model is not run at all
        emb = EmbeddedItems([], np.zeros((0, model.embedding_dim), np.float32))
    for it in emb.items:
        if it.id in stored:
            rep.updated += 1
            rep.reembedded += 1
        else:
            rep.added += 1
    index.sync([it.id for it in emb.items], emb.vectors, [it.meta(root) for it in emb.items],
               text_vectors=emb.text_vectors, update=update, remove=remove)
    rep.removed = len(remove)
    embed_listing_text(model, index, batch_size=batch_size)
    rep.seconds = time.perf_counter() - t0
    return rep


__all__ = ["SyncReport", "sync_index"]
