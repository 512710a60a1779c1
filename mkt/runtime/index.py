"""Similarity index: hnswlib (cosine) vectors + sqlite3 metadata, crash-safe on disk.

Layout (docs/design.md)::

    INDEX/index.json             names the current generation, with sha256 of its files
    INDEX/vectors-<gen>.hnsw     hnswlib save_index (photo embeddings)
    INDEX/meta-<gen>.sqlite      table items(label INTEGER PRIMARY KEY, id TEXT UNIQUE, ...),
                                 table listings (one row a product_id) + FTS5 listing_fts
    INDEX/ltext-<gen>.npy        float16 [L, 384] MiniLM embeddings of listing text
                                 (row = listings.vrow)             [schema 2]
    INDEX/xmodal-<gen>.npy       float16 [P, 384] photos' cross-modal text embeddings
                                 (row = items.xrow)                [schema 2]

Schema 1 (before text search) indexes still open and answer photo queries; they are upgraded
to schema 2 by the next change written to them. :attr:`Index.has_text` says which.

Every change writes a complete new generation, then atomically replaces ``index.json``
(tmp + fsync + ``os.replace``), then deletes the old generation. A crash at any point leaves
either the old or the new index, never a mix. Loading checks the sha256 of both files, and
refuses queries embedded by a bundle with another ``model_id``: vectors from two different
models are not comparable, so silently mixing them would return nonsense.

Not safe for two writers at once (no lock); readers are fine.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sqlite3
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import fsutil
from .bundle import packaged_asset, sha256_file
from .errors import MktIndexError

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
INDEX_JSON = "index.json"
META_FIELDS = ("product_id", "title", "price", "category", "location", "path")
ITEM_FIELDS = META_FIELDS + ("description",)
TEXT_DIM = 384
DESCRIPTION_MAX = 10_000  # characters kept of a listing description
NO_TEXT_MSG = "index built before text search; rebuild with mkt index build"
_GEN_RE = re.compile(r"^(vectors|meta|ltext|xmodal)-(\d+)\.(hnsw|sqlite|npy)(\.tmp)?$")
_TMP_RE = re.compile(r"^\.?index\.json(\..*)?\.tmp$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    label INTEGER PRIMARY KEY,
    id TEXT UNIQUE NOT NULL,
    product_id TEXT,
    title TEXT,
    price REAL,
    category TEXT,
    location TEXT,
    path TEXT
)
"""

# Schema 2: text of each photo's listing + its cross-modal vector row, and one row a listing
# (rebuilt from items on every commit) with a full-text index over title + description.
_SCHEMA2 = """
CREATE TABLE IF NOT EXISTS listings (
    lid INTEGER PRIMARY KEY,
    product_id TEXT UNIQUE NOT NULL,
    title TEXT,
    description TEXT,
    price REAL,
    category TEXT,
    vrow INTEGER,
    vkey TEXT
);
CREATE VIRTUAL TABLE IF NOT EXISTS listing_fts USING fts5(
    title, description, content='listings', content_rowid='lid',
    tokenize='porter unicode61 remove_diacritics 2'
);
CREATE INDEX IF NOT EXISTS items_product ON items(product_id);
"""


def _ensure_schema2(conn: sqlite3.Connection) -> None:
    conn.execute(_SCHEMA)
    cols = {r[1] for r in conn.execute("PRAGMA table_info(items)")}
    if "description" not in cols:
        conn.execute("ALTER TABLE items ADD COLUMN description TEXT")
    if "xrow" not in cols:
        conn.execute("ALTER TABLE items ADD COLUMN xrow INTEGER")
    conn.executescript(_SCHEMA2)


def listing_text(title: str | None, description: str | None, max_chars: int = 300) -> str:
    """The text a listing's MiniLM embedding is computed from: title, then the start of
    the description (MiniLM reads at most 128 tokens anyway)."""
    t = (title or "").strip()
    d = " ".join((description or "").split())[:max_chars]
    if t and d:
        return f"{t}. {d}"
    return t or d


def _text_key(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(arr, dtype=np.float16), allow_pickle=False)


def _load_npy(path: Path, dim: int, where: Path) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise MktIndexError(f"{path}: cannot read ({e})") from None
    if a.ndim != 2 or a.shape[1] != dim or a.dtype != np.float16:
        raise MktIndexError(
            f"{where}: {path.name} holds {a.dtype} {list(a.shape)}, expected float16 [n, {dim}]"
            "; index corrupt or modified, rebuild it"
        )
    return a.astype(np.float32)


def _norm_rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def default_index_dir() -> Path:
    """The catalogue index shipped in the package: ``mkt/assets/index/``."""
    return packaged_asset("index")


def _fsync_file(path: Path) -> None:
    fsutil.fsync_file(path)


def _check_hnsw_dim(path: Path, dim: int, where: Path) -> None:
    """Refuse a vectors file whose vector size is not ``dim``. hnswlib trusts the ``dim`` it
    is given: a wrong one (e.g. an edited index.json) reads past each vector, giving garbage
    scores or a crash. Its header (6 x uint64: offsetLevel0, max_elements, count,
    size_per_element, label_offset, data_offset) holds the vector size in bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(48)
    except OSError as e:
        raise MktIndexError(f"{path}: cannot read ({e})") from None
    if len(head) < 48:
        raise MktIndexError(f"{path}: truncated vectors file ({len(head)} bytes)")
    label_off, data_off = struct.unpack("<2Q", head[32:48])
    if label_off - data_off != 4 * int(dim):
        raise MktIndexError(
            f"{where}: says dim {dim} but {path.name} holds {(label_off - data_off) / 4:g}-d "
            "vectors; index corrupt or modified, rebuild it"
        )


def _write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` atomically (fsutil: tmp file, fsync, ``os.replace``)."""
    fsutil.atomic_write_json(path, obj, sort_keys=True)


@dataclass
class Hit:
    """One search result: the photo id, cosine similarity, and its metadata row."""

    id: str
    score: float
    label: int
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, fields: Sequence[str] = ("product_id", "title", "price", "category")):
        """``{"id", "score", <metadata fields that are not null>}`` for JSON output."""
        d: dict[str, Any] = {"id": self.id, "score": round(float(self.score), 6)}
        for k in fields:
            v = self.meta.get(k)
            if v is not None:
                d[k] = v
        return d


def _clean_meta(row: Mapping[str, Any] | None) -> dict[str, Any]:
    row = row or {}
    out: dict[str, Any] = {}
    for k in ITEM_FIELDS:
        v = row.get(k)
        if v is None or (isinstance(v, str) and v == ""):
            out[k] = None
        elif k == "price":
            try:
                f = float(v)
                out[k] = f if math.isfinite(f) else None
            except (TypeError, ValueError):
                out[k] = None
        elif k == "description":
            t = str(v).replace("\r", " ")
            out[k] = t[:DESCRIPTION_MAX] if t.strip() else None
        else:
            out[k] = str(v)
    return out


@dataclass
class _Vecs:
    """The text-vector arrays of one state of the index (replaced, never edited in place)."""

    ltext: np.ndarray  # float32 [L, TEXT_DIM], row = listings.vrow
    xmod: np.ndarray  # float32 [P, TEXT_DIM], row = items.xrow


def _empty_vecs(dim: int = TEXT_DIM) -> _Vecs:
    return _Vecs(np.zeros((0, dim), np.float32), np.zeros((0, dim), np.float32))


class Index:
    """An on-disk similarity index. Open with :meth:`open`, make with :meth:`create`."""

    def __init__(self, path: Path, info: dict[str, Any], hnsw: Any, db: sqlite3.Connection,
                 vecs: _Vecs | None = None):
        self.path = path
        self._info = info
        self._hnsw = hnsw
        self._db = db
        self._vecs = vecs if vecs is not None else _empty_vecs(self.text_dim)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        model_id: str,
        dim: int,
        M: int = 16,
        ef_construction: int = 200,
        ef: int = 64,
        overwrite: bool = False,
        ids: Sequence[str] | None = None,
        vectors: np.ndarray | None = None,
        meta: Sequence[Mapping[str, Any] | None] | None = None,
        provenance: Mapping[str, Any] | None = None,
        text_vectors: np.ndarray | None = None,
        text_dim: int = TEXT_DIM,
    ) -> Index:
        """Create an index directory, empty or with ``ids``/``vectors``/``meta``
        (/``text_vectors``, see :meth:`add`), written as one generation. Refuses to replace an
        existing index unless ``overwrite``; the old one then stays valid until the new one is
        committed. ``provenance`` (source, command, time) is kept in index.json so a shipped
        index says how it was made. ``text_dim``: size of the text (MiniLM) vectors."""
        d = Path(path)
        if (d / INDEX_JSON).exists() and not overwrite:
            raise MktIndexError(f"{d}: an index already exists here (use overwrite/--force)")
        if d.exists() and not d.is_dir():
            raise MktIndexError(f"{d}: exists and is not a directory")
        if int(dim) <= 0 or int(M) < 2 or int(ef_construction) < 1 or int(ef) < 1 \
                or int(text_dim) <= 0:
            raise MktIndexError(f"{d}: bad index parameters dim={dim} M={M} ef={ef}")
        d.mkdir(parents=True, exist_ok=True)
        old_gen = -1
        if (d / INDEX_JSON).exists():
            with contextlib.suppress(Exception):
                old_gen = int(json.loads((d / INDEX_JSON).read_text())["generation"])
        info = {
            "schema_version": SCHEMA_VERSION,
            "model_id": str(model_id),
            "dim": int(dim),
            "space": "cosine",
            "M": int(M),
            "ef_construction": int(ef_construction),
            "ef": int(ef),
            "count": 0,
            "generation": old_gen,
            "files": {},
            "text": {"dim": int(text_dim)},
        }
        if provenance:
            info["provenance"] = dict(provenance)
        import hnswlib

        h = hnswlib.Index(space="cosine", dim=int(dim))
        h.init_index(max_elements=16, ef_construction=int(ef_construction), M=int(M))
        h.set_ef(int(ef))
        db = sqlite3.connect(":memory:", check_same_thread=False)
        _ensure_schema2(db)
        idx = cls(d, info, h, db, _empty_vecs(int(text_dim)))
        if vectors is None:
            idx._commit(lambda conn, st: None)
        else:  # one generation with everything: an overwritten index is never seen empty
            idx._commit(idx._add_change(ids or [], vectors, meta, text_vectors))
        return idx

    @classmethod
    def open(
        cls, path: str | os.PathLike | None = None, *, model_id: str | None = None,
        verify: bool = True,
    ) -> Index:
        """Open an index directory (default: the packaged ``mkt/assets/index``).

        ``model_id``: refuse the index unless it was built by that bundle's model.
        ``verify``: check the sha256 of the generation files against ``index.json``.
        Schema-1 indexes (before text search) open too; ``has_text`` is then False.
        """
        d = Path(path) if path is not None else default_index_dir()
        ij = d / INDEX_JSON
        if not ij.is_file():
            hint = "" if path is not None else " (no packaged index; pass --index DIR)"
            what = "index directory not found" if not d.is_dir() else "no index.json here"
            raise MktIndexError(f"{d}: {what}{hint}")
        try:
            info = json.loads(ij.read_text(encoding="utf-8"))
            if not isinstance(info, dict):
                raise ValueError("not a JSON object")
            if info.get("schema_version") not in READABLE_SCHEMAS:
                raise ValueError(f"unsupported schema_version {info.get('schema_version')!r}")
            if info.get("space", "cosine") != "cosine":
                raise ValueError(f"unsupported space {info.get('space')!r}")
            gen = int(info["generation"])
            dim = int(info["dim"])
            files = dict(info["files"])
            for k in ("model_id", "M", "ef_construction", "ef", "count"):
                if k not in info:
                    raise ValueError(f"missing '{k}'")
            v2 = info["schema_version"] >= 2
            tdim = int((info.get("text") or {}).get("dim", TEXT_DIM)) if v2 else TEXT_DIM
            if tdim <= 0:
                raise ValueError(f"bad text dim {tdim}")
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError,
                AttributeError) as e:
            raise MktIndexError(f"{ij}: malformed index.json ({e})") from None
        vec, meta = f"vectors-{gen}.hnsw", f"meta-{gen}.sqlite"
        ltext, xmod = f"ltext-{gen}.npy", f"xmodal-{gen}.npy"
        for name in (vec, meta) + ((ltext, xmod) if v2 else ()):
            if name not in files:
                raise MktIndexError(f"{ij}: 'files' does not list {name}")
        for name in files:
            if Path(name).name != name or name in (".", ".."):
                raise MktIndexError(f"{ij}: bad file name in 'files': {name!r}")
        if verify:
            for name, want in files.items():
                fp = d / name
                if not fp.is_file():
                    raise MktIndexError(f"{fp}: listed in index.json but missing")
                got = sha256_file(fp)
                if got != str(want).lower():
                    raise MktIndexError(
                        f"{fp}: sha256 mismatch (index.json {str(want)[:12]}..., file "
                        f"{got[:12]}...); index corrupt or modified, rebuild it"
                    )
        if model_id is not None and str(model_id) != str(info["model_id"]):
            raise MktIndexError(
                f"{d}: index was built with model {info['model_id']}, but the bundle is "
                f"model {model_id}; embeddings are not comparable (rebuild the index)"
            )
        _check_hnsw_dim(d / vec, dim, ij)
        import hnswlib

        try:
            h = hnswlib.Index(space="cosine", dim=dim)
            h.load_index(str(d / vec), max_elements=0)
            h.set_ef(int(info["ef"]))
            src = sqlite3.connect(f"file:{d / meta}?mode=ro", uri=True)
            db = sqlite3.connect(":memory:", check_same_thread=False)
            try:
                src.backup(db)
            finally:
                src.close()
            n = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            vecs = _empty_vecs(tdim)
            if v2:
                vecs = _Vecs(_load_npy(d / ltext, tdim, ij), _load_npy(d / xmod, tdim, ij))
                nl = db.execute("SELECT MAX(vrow) FROM listings").fetchone()[0]
                nx = db.execute("SELECT MAX(xrow) FROM items").fetchone()[0]
                if (nl is not None and nl >= len(vecs.ltext)) or \
                        (nx is not None and nx >= len(vecs.xmod)):
                    raise ValueError("text vector rows out of range")
        except (RuntimeError, sqlite3.Error, OSError, ValueError) as e:
            raise MktIndexError(f"{d}: cannot load index files ({e})") from None
        if n != int(info["count"]):
            raise MktIndexError(f"{d}: index.json says {info['count']} items, metadata has {n}")
        return cls(d, info, h, db, vecs)

    # -- properties -----------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return str(self._info["model_id"])

    @property
    def dim(self) -> int:
        return int(self._info["dim"])

    @property
    def schema_version(self) -> int:
        return int(self._info["schema_version"])

    @property
    def has_text(self) -> bool:
        """True for an index that stores listing text (schema 2); False for one built before
        text search (it still answers photo queries)."""
        return self.schema_version >= 2

    @property
    def text_dim(self) -> int:
        return int((self._info.get("text") or {}).get("dim", TEXT_DIM))

    @property
    def count(self) -> int:
        return int(self._info["count"])

    def __len__(self) -> int:
        return self.count

    @property
    def generation(self) -> int:
        return int(self._info["generation"])

    @property
    def ef(self) -> int:
        return int(self._info["ef"])

    def set_ef(self, ef: int) -> None:
        """Search-time recall/speed knob for this session (not saved)."""
        self._info["ef"] = int(ef)
        self._hnsw.set_ef(int(ef))

    def info(self) -> dict[str, Any]:
        """``index.json`` contents plus the path, for `mkt index info`."""
        d = {"path": str(self.path)}
        d.update({k: v for k, v in self._info.items()})
        row = self._db.execute(
            "SELECT COUNT(product_id), COUNT(DISTINCT product_id) FROM items"
        ).fetchone()
        d["with_metadata"] = int(row[0])
        d["listings"] = int(row[1])
        return d

    def ids(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT id FROM items ORDER BY label")]

    def __contains__(self, photo_id: object) -> bool:
        return self._db.execute("SELECT 1 FROM items WHERE id=?", (str(photo_id),)).fetchone() \
            is not None

    def get(self, photo_id: str) -> dict[str, Any] | None:
        """Metadata row of ``photo_id`` (or None); with ``description`` on a schema-2 index."""
        cols = ITEM_FIELDS if self.has_text else META_FIELDS
        cur = self._db.execute(
            f"SELECT id, {', '.join(cols)} FROM items WHERE id=?", (str(photo_id),)
        )
        r = cur.fetchone()
        return None if r is None else dict(zip(("id",) + cols, r, strict=True))

    # -- text side (schema 2) -------------------------------------------------------------
    def require_text(self) -> None:
        """:class:`MktIndexError` unless this index stores text (schema 2)."""
        if not self.has_text:
            raise MktIndexError(f"{self.path}: {NO_TEXT_MSG}")

    def listing_texts(self, missing_only: bool = True) -> dict[str, str]:
        """``{product_id: text}`` to embed (see :func:`listing_text`) for listings with some
        text and, with ``missing_only``, no up-to-date vector yet."""
        self.require_text()
        q = "SELECT product_id, title, description FROM listings"
        if missing_only:
            q += " WHERE vrow IS NULL"
        out = {}
        for pid, t, dsc in self._db.execute(q + " ORDER BY lid"):
            txt = listing_text(t, dsc)
            if txt:
                out[str(pid)] = txt
        return out

    def set_listing_vectors(self, product_ids: Sequence[str], vectors: np.ndarray) -> int:
        """Store MiniLM embeddings of listings' text (``listing_texts()`` gives what to embed);
        writes a new generation. Unknown product ids are refused. Returns how many were set."""
        self.require_text()
        pids = [str(p) for p in product_ids]
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim != 2 or v.shape != (len(pids), self.text_dim):
            raise MktIndexError(
                f"{self.path}: expected listing vectors [{len(pids)}, {self.text_dim}], got "
                f"{list(v.shape)}"
            )
        if not np.all(np.isfinite(v)):
            raise MktIndexError(f"{self.path}: listing vectors contain NaN/inf")
        if len(set(pids)) != len(pids):
            raise MktIndexError(f"{self.path}: duplicate product ids in one set")
        if not pids:
            return 0
        rows = {}
        for pid in pids:
            r = self._db.execute("SELECT title, description FROM listings WHERE product_id=?",
                                 (pid,)).fetchone()
            if r is None:
                raise MktIndexError(f"{self.path}: no listing {pid!r} in the index")
            rows[pid] = _text_key(listing_text(r[0], r[1]))
        v = _norm_rows(v)

        def change(conn: sqlite3.Connection, st: _Vecs) -> None:
            base = len(st.ltext)
            st.ltext = np.concatenate([st.ltext, v])
            conn.executemany(
                "UPDATE listings SET vrow=?, vkey=? WHERE product_id=?",
                [(base + i, rows[p], p) for i, p in enumerate(pids)],
            )

        self._commit(change)
        return len(pids)

    def listing_vectors(self) -> tuple[list[str], np.ndarray]:
        """``(product_ids, float32 [L, text_dim])`` of listings that have a text vector."""
        if not self.has_text:
            return [], np.zeros((0, self.text_dim), np.float32)
        rows = self._db.execute(
            "SELECT product_id, vrow FROM listings WHERE vrow IS NOT NULL ORDER BY vrow"
        ).fetchall()
        return [r[0] for r in rows], self._vecs.ltext[[r[1] for r in rows]]

    def photo_text_vectors(self) -> tuple[list[str], np.ndarray]:
        """``(photo ids, float32 [P, text_dim])`` of photos with a cross-modal vector."""
        if not self.has_text:
            return [], np.zeros((0, self.text_dim), np.float32)
        rows = self._db.execute(
            "SELECT id, xrow FROM items WHERE xrow IS NOT NULL ORDER BY xrow"
        ).fetchall()
        return [r[0] for r in rows], self._vecs.xmod[[r[1] for r in rows]]

    def text_counts(self) -> dict[str, int]:
        """Listings, listings with text, with a text vector; photos with a cross-modal
        vector (all 0 on a schema-1 index)."""
        if not self.has_text:
            return {"listings": 0, "with_text": 0, "listing_vectors": 0,
                    "photo_text_vectors": 0}
        r = self._db.execute(
            "SELECT COUNT(*), SUM(COALESCE(title,'') != '' OR COALESCE(description,'') != ''),"
            " COUNT(vrow) FROM listings").fetchone()
        x = self._db.execute("SELECT COUNT(xrow) FROM items").fetchone()[0]
        return {"listings": int(r[0]), "with_text": int(r[1] or 0),
                "listing_vectors": int(r[2]), "photo_text_vectors": int(x)}

    def fts(self, match: str, k: int = 50) -> list[tuple[str, float]]:
        """Listings matching an FTS5 ``match`` expression, best first: ``(product_id, score)``
        with score = -bm25 (higher is better; title weighted 2x description). The caller
        builds ``match`` safely (see :func:`mkt.runtime.search.fts_query`)."""
        self.require_text()
        try:
            rows = self._db.execute(
                "SELECT l.product_id, -bm25(listing_fts, 2.0, 1.0) AS s FROM listing_fts "
                "JOIN listings l ON l.lid = listing_fts.rowid WHERE listing_fts MATCH ? "
                "ORDER BY bm25(listing_fts, 2.0, 1.0) LIMIT ?",
                (match, int(k)),
            ).fetchall()
        except sqlite3.OperationalError as e:
            raise MktIndexError(f"{self.path}: full-text query failed ({e})") from None
        return [(str(p), float(s)) for p, s in rows]

    def listings_meta(self, product_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``{product_id: {title, price, category, photo}}``; ``photo`` = the listing's
        first indexed photo id."""
        out: dict[str, dict[str, Any]] = {}
        pids = list(dict.fromkeys(str(p) for p in product_ids))
        for s in range(0, len(pids), 500):
            chunk = pids[s: s + 500]
            ph = ",".join("?" * len(chunk))
            for pid, t, p, c, photo in self._db.execute(
                f"SELECT product_id, title, price, category, "
                f"(SELECT id FROM items i WHERE i.product_id = listings.product_id "
                f"ORDER BY label LIMIT 1) FROM listings WHERE product_id IN ({ph})",
                chunk,
            ):
                out[str(pid)] = {"title": t, "price": p, "category": c, "photo": photo}
        return out

    def photos_meta(self, photo_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``{photo id: metadata row}`` for several photos at once."""
        out: dict[str, dict[str, Any]] = {}
        ids = list(dict.fromkeys(str(p) for p in photo_ids))
        for s in range(0, len(ids), 500):
            chunk = ids[s: s + 500]
            ph = ",".join("?" * len(chunk))
            for r in self._db.execute(
                f"SELECT id, {', '.join(META_FIELDS)} FROM items WHERE id IN ({ph})", chunk
            ):
                out[r[0]] = dict(zip(META_FIELDS, r[1:], strict=True))
        return out

    # -- mutation -------------------------------------------------------------------------
    def add(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        meta: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        text_vectors: np.ndarray | None = None,
    ) -> int:
        """Add (or replace, for ids already present) photos; writes a new generation.

        ``vectors``: ``float32 [N, dim]`` embeddings from the model named by ``model_id``.
        ``meta``: one dict per photo with any of product_id, title, description, price,
        category, location, path. ``text_vectors``: optional ``float32 [N, text_dim]``
        cross-modal embeddings of the photos (the model's ``text_embedding`` output, in
        MiniLM's space); a row of NaN means "none for this photo". Returns the number of
        items added or replaced.
        """
        change = self._add_change(ids, vectors, meta, text_vectors)
        if len(ids) == 0:
            return 0
        self._commit(change)
        return len(ids)

    def _add_change(self, ids: Sequence[str], vectors: Any, meta: Any,
                    text_vectors: Any = None) -> Any:
        ids = [str(i) for i in ids]
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim == 1 and len(ids) == 1:
            v = v[None]
        if v.ndim != 2 or v.shape[0] != len(ids) or v.shape[1] != self.dim:
            raise MktIndexError(
                f"{self.path}: expected vectors [{len(ids)}, {self.dim}], got {list(v.shape)}"
            )
        if not np.all(np.isfinite(v)):
            raise MktIndexError(f"{self.path}: vectors contain NaN/inf")
        if len(set(ids)) != len(ids):
            raise MktIndexError(f"{self.path}: duplicate ids in one add")
        if meta is not None and len(meta) != len(ids):
            raise MktIndexError(f"{self.path}: {len(ids)} ids but {len(meta)} metadata rows")
        tv = None
        if text_vectors is not None:
            tv = np.asarray(text_vectors, dtype=np.float32)
            if tv.ndim == 1 and len(ids) == 1:
                tv = tv[None]
            if tv.ndim != 2 or tv.shape != (len(ids), self.text_dim):
                raise MktIndexError(
                    f"{self.path}: expected text vectors [{len(ids)}, {self.text_dim}], got "
                    f"{list(tv.shape)}"
                )
            has = ~np.any(np.isnan(tv), axis=1)
            if not np.all(np.isfinite(tv[has])):
                raise MktIndexError(f"{self.path}: text vectors contain inf")
            tv = np.where(has[:, None], tv, 0.0).astype(np.float32)
            tv[has] = _norm_rows(tv[has])
        else:
            has = np.zeros(len(ids), bool)
        rows = [_clean_meta(meta[i] if meta is not None else None) for i in range(len(ids))]

        def change(conn: sqlite3.Connection, st: _Vecs) -> None:
            if not ids:
                return
            h = self._hnsw
            replaced = []
            for i in ids:
                r = conn.execute("SELECT label FROM items WHERE id=?", (i,)).fetchone()
                if r is not None:
                    replaced.append(int(r[0]))
            for lab in replaced:
                h.mark_deleted(lab)
            if replaced:
                conn.executemany("DELETE FROM items WHERE label=?", [(x,) for x in replaced])
            start = h.get_current_count()
            need = start + len(ids)
            if need > h.get_max_elements():
                h.resize_index(max(need, 2 * h.get_max_elements(), 16))
            labels = np.arange(start, need, dtype=np.int64)
            h.add_items(v, labels)
            xrows: list[int | None] = [None] * len(ids)
            if tv is not None and has.any():
                base = len(st.xmod)
                sel = np.flatnonzero(has)
                st.xmod = np.concatenate([st.xmod, tv[sel]])
                for j, i in enumerate(sel):
                    xrows[int(i)] = base + j
            conn.executemany(
                "INSERT INTO items (label, id, product_id, title, price, category, location, "
                "path, description, xrow) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [
                    (int(lab), i, *(r[k] for k in ITEM_FIELDS), xr)
                    for lab, i, r, xr in zip(labels, ids, rows, xrows, strict=True)
                ],
            )

        return change

    def remove(self, ids: Iterable[str]) -> list[str]:
        """Remove photos by id (hnswlib ``mark_deleted`` + delete the row); writes a new
        generation. Returns the ids that were not in the index (nothing is written if none
        were)."""
        ids = [str(i) for i in ids]
        found: list[tuple[str, int]] = []
        missing = []
        for i in dict.fromkeys(ids):
            r = self._db.execute("SELECT label FROM items WHERE id=?", (i,)).fetchone()
            if r is None:
                missing.append(i)
            else:
                found.append((i, int(r[0])))
        if not found:
            return missing

        def change(conn: sqlite3.Connection, st: _Vecs) -> None:
            for _, lab in found:
                self._hnsw.mark_deleted(lab)
            conn.executemany("DELETE FROM items WHERE label=?", [(lab,) for _, lab in found])

        self._commit(change)
        return missing

    @staticmethod
    def _refresh_listings(conn: sqlite3.Connection, st: _Vecs) -> None:
        """Rebuild ``listings`` (one row a product_id, text of its first photo) and its FTS
        index from ``items``; keep a listing's text vector while its text is unchanged;
        compact the vector arrays to the rows still referenced."""
        old = {p: (vr, vk) for p, vr, vk in
               conn.execute("SELECT product_id, vrow, vkey FROM listings")}
        rows = conn.execute(
            "SELECT i.product_id, i.title, i.description, i.price, i.category FROM items i "
            "JOIN (SELECT MIN(label) AS l FROM items WHERE product_id IS NOT NULL "
            "GROUP BY product_id) m ON i.label = m.l ORDER BY i.label"
        ).fetchall()
        keep_l: list[int] = []
        new = []
        for pid, t, dsc, price, cat in rows:
            vr, vk = old.get(pid, (None, None))
            key = _text_key(listing_text(t, dsc))
            if vr is not None and vk == key:
                keep_l.append(int(vr))
                nr: int | None = len(keep_l) - 1
            else:
                nr, key = None, None
            new.append((pid, t, dsc, price, cat, nr, key))
        conn.execute("DELETE FROM listings")
        conn.executemany(
            "INSERT INTO listings (product_id, title, description, price, category, vrow, vkey)"
            " VALUES (?,?,?,?,?,?,?)", new,
        )
        conn.execute("INSERT INTO listing_fts(listing_fts) VALUES ('rebuild')")
        st.ltext = st.ltext[keep_l] if keep_l else st.ltext[:0]
        xr = conn.execute("SELECT label, xrow FROM items WHERE xrow IS NOT NULL "
                          "ORDER BY label").fetchall()
        st.xmod = st.xmod[[r[1] for r in xr]] if xr else st.xmod[:0]
        conn.executemany("UPDATE items SET xrow=? WHERE label=?",
                         [(j, r[0]) for j, r in enumerate(xr)])

    def _commit(self, change) -> None:
        """Apply ``change(conn, vecs)`` to a copy of the metadata + text vectors + the
        in-memory graph, write them as generation n+1, swap index.json, delete older
        generations. On any failure the in-memory state is rolled back to what is on disk and
        the error re-raised. A schema-1 index is upgraded to schema 2 here."""
        d = self.path
        new_gen = self.generation + 1
        vec, meta = f"vectors-{new_gen}.hnsw", f"meta-{new_gen}.sqlite"
        ltext, xmod = f"ltext-{new_gen}.npy", f"xmodal-{new_gen}.npy"
        names = (vec, meta, ltext, xmod)
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        st = _Vecs(self._vecs.ltext, self._vecs.xmod)
        try:
            self._db.backup(conn)
            _ensure_schema2(conn)
            change(conn, st)
            self._refresh_listings(conn, st)
            conn.commit()
            count = conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    (d / name).unlink()
            self._hnsw.save_index(str(d / vec))
            disk = sqlite3.connect(str(d / meta))
            try:
                conn.backup(disk)
                disk.commit()
            finally:
                disk.close()
            _save_npy(d / ltext, st.ltext)
            _save_npy(d / xmod, st.xmod)
            for name in names:
                _fsync_file(d / name)
            info = dict(self._info)
            tinfo = dict(info.get("text") or {"dim": self.text_dim})
            tinfo.update(
                listings=int(conn.execute("SELECT COUNT(*) FROM listings").fetchone()[0]),
                listing_vectors=int(len(st.ltext)),
                photo_text_vectors=int(len(st.xmod)),
            )
            info.update(
                schema_version=SCHEMA_VERSION,
                generation=new_gen,
                count=int(count),
                files={name: sha256_file(d / name) for name in names},
                text=tinfo,
            )
            _write_json_atomic(d / INDEX_JSON, info)
        except BaseException as e:
            conn.close()
            self._rollback()
            if isinstance(e, (OSError, sqlite3.Error, RuntimeError, ValueError)):
                raise MktIndexError(f"{d}: cannot write index ({e})") from None
            raise
        old = self._db
        self._db, self._info = conn, info
        self._vecs = _Vecs(st.ltext.astype(np.float16).astype(np.float32),
                           st.xmod.astype(np.float16).astype(np.float32))
        old.close()
        self._cleanup()

    def _rollback(self) -> None:
        """Reload the committed state after a failed write (in-memory graph may be dirty)."""
        try:
            fresh = Index.open(self.path, verify=False)
        except MktIndexError:
            return  # nothing committed yet (failed create): leave as is
        ef = self.ef
        self._db.close()
        self._hnsw, self._db, self._info = fresh._hnsw, fresh._db, fresh._info
        self._vecs = fresh._vecs
        self.set_ef(ef)

    def _cleanup(self) -> None:
        keep = set(self._info["files"])
        for p in self.path.iterdir():
            if (_GEN_RE.match(p.name) and p.name not in keep) or _TMP_RE.match(p.name):
                with contextlib.suppress(OSError):
                    p.unlink()

    # -- search ---------------------------------------------------------------------------
    def search(self, vectors: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Nearest photos for each query vector: ``k`` hits (fewer if the index is smaller),
        best first, ``score`` = cosine similarity = 1 - cosine distance. Nothing is
        filtered out: a byte-identical copy of the query comes back like any other photo."""
        q = np.asarray(vectors, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise MktIndexError(
                f"{self.path}: query vectors must be [N, {self.dim}], got {list(q.shape)}"
            )
        n = self.count
        k = min(int(k), n)
        if k <= 0 or q.shape[0] == 0:
            return [[] for _ in range(q.shape[0])]
        labels, dists = self._knn(q, k)
        out = []
        for lrow, drow in zip(labels, dists, strict=True):
            hits = []
            labs = [int(x) for x in lrow]
            ph = ",".join("?" * len(labs))
            rows = {
                r[0]: r
                for r in self._db.execute(
                    f"SELECT label, id, {', '.join(META_FIELDS)} FROM items "
                    f"WHERE label IN ({ph})",
                    labs,
                )
            }
            for lab, dist in zip(labs, drow, strict=True):
                r = rows.get(lab)
                if r is None:  # deleted but still returned: should not happen
                    continue
                meta = dict(zip(META_FIELDS, r[2:], strict=True))
                hits.append(Hit(id=r[1], score=float(1.0 - dist), label=lab, meta=meta))
            out.append(hits)
        return out

    def _knn(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        h = self._hnsw
        ef = self.ef
        try:
            h.set_ef(max(ef, k))
            return h.knn_query(q, k=k)
        except RuntimeError:
            pass
        try:  # deletions can leave hnsw short of k at low ef: search exhaustively
            h.set_ef(max(h.get_current_count(), k))
            return h.knn_query(q, k=k)
        except RuntimeError:
            return self._brute(q, k)
        finally:
            h.set_ef(ef)

    def _brute(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        labs = np.array([r[0] for r in self._db.execute("SELECT label FROM items")], np.int64)
        x = np.asarray(self._hnsw.get_items(labs), dtype=np.float32)
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        dist = 1.0 - qn @ xn.T
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        return labs[order], np.take_along_axis(dist, order, axis=1)

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._db.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Index(path={str(self.path)!r}, count={self.count}, dim={self.dim}, "
            f"model_id={self.model_id!r}, generation={self.generation})"
        )


__all__ = ["ITEM_FIELDS", "META_FIELDS", "NO_TEXT_MSG", "SCHEMA_VERSION", "Hit", "Index",
           "default_index_dir", "listing_text"]
