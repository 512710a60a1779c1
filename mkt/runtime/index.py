"""Similarity index: hnswlib (cosine) vectors + sqlite3 metadata, crash-safe on disk.

Layout (docs/design.md)::

    INDEX/index.json             names the current generation, with sha256 of its files
    INDEX/vectors-<gen>.hnsw     hnswlib save_index
    INDEX/meta-<gen>.sqlite      table items(label INTEGER PRIMARY KEY, id TEXT UNIQUE, ...)

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

from .bundle import packaged_asset, sha256_file
from .errors import MktIndexError

SCHEMA_VERSION = 1
INDEX_JSON = "index.json"
META_FIELDS = ("product_id", "title", "price", "category", "location", "path")
_GEN_RE = re.compile(r"^(vectors|meta)-(\d+)\.(hnsw|sqlite)(\.tmp)?$")

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


def default_index_dir() -> Path:
    """The catalogue index shipped in the package: ``mkt/assets/index/``."""
    return packaged_asset("index")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # pragma: no cover - no directory fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    """Write JSON to ``path`` atomically: tmp file, fsync, ``os.replace``, fsync the dir."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


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
    for k in META_FIELDS:
        v = row.get(k)
        if v is None or (isinstance(v, str) and v == ""):
            out[k] = None
        elif k == "price":
            try:
                f = float(v)
                out[k] = f if math.isfinite(f) else None
            except (TypeError, ValueError):
                out[k] = None
        else:
            out[k] = str(v)
    return out


class Index:
    """An on-disk similarity index. Open with :meth:`open`, make with :meth:`create`."""

    def __init__(self, path: Path, info: dict[str, Any], hnsw: Any, db: sqlite3.Connection):
        self.path = path
        self._info = info
        self._hnsw = hnsw
        self._db = db

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
    ) -> Index:
        """Create an index directory, empty or with ``ids``/``vectors``/``meta`` (see
        :meth:`add`), written as one generation. Refuses to replace an existing index unless
        ``overwrite``; the old one then stays valid until the new one is committed.
        ``provenance`` (source, command, time) is kept in index.json so a shipped index says
        how it was made."""
        d = Path(path)
        if (d / INDEX_JSON).exists() and not overwrite:
            raise MktIndexError(f"{d}: an index already exists here (use overwrite/--force)")
        if d.exists() and not d.is_dir():
            raise MktIndexError(f"{d}: exists and is not a directory")
        if int(dim) <= 0 or int(M) < 2 or int(ef_construction) < 1 or int(ef) < 1:
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
        }
        if provenance:
            info["provenance"] = dict(provenance)
        import hnswlib

        h = hnswlib.Index(space="cosine", dim=int(dim))
        h.init_index(max_elements=16, ef_construction=int(ef_construction), M=int(M))
        h.set_ef(int(ef))
        db = sqlite3.connect(":memory:", check_same_thread=False)
        db.execute(_SCHEMA)
        idx = cls(d, info, h, db)
        if vectors is None:
            idx._commit(lambda conn: None)
        else:  # one generation with everything: an overwritten index is never seen empty
            idx._commit(idx._add_change(ids or [], vectors, meta))
        return idx

    @classmethod
    def open(
        cls, path: str | os.PathLike | None = None, *, model_id: str | None = None,
        verify: bool = True,
    ) -> Index:
        """Open an index directory (default: the packaged ``mkt/assets/index``).

        ``model_id``: refuse the index unless it was built by that bundle's model.
        ``verify``: check the sha256 of the generation files against ``index.json``.
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
            if info.get("schema_version") != SCHEMA_VERSION:
                raise ValueError(f"unsupported schema_version {info.get('schema_version')!r}")
            if info.get("space", "cosine") != "cosine":
                raise ValueError(f"unsupported space {info.get('space')!r}")
            gen = int(info["generation"])
            dim = int(info["dim"])
            files = dict(info["files"])
            for k in ("model_id", "M", "ef_construction", "ef", "count"):
                if k not in info:
                    raise ValueError(f"missing '{k}'")
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise MktIndexError(f"{ij}: malformed index.json ({e})") from None
        vec, meta = f"vectors-{gen}.hnsw", f"meta-{gen}.sqlite"
        for name in (vec, meta):
            if name not in files:
                raise MktIndexError(f"{ij}: 'files' does not list {name}")
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
        except (RuntimeError, sqlite3.Error, OSError, ValueError) as e:
            raise MktIndexError(f"{d}: cannot load index files ({e})") from None
        if n != int(info["count"]):
            raise MktIndexError(f"{d}: index.json says {info['count']} items, metadata has {n}")
        return cls(d, info, h, db)

    # -- properties -----------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return str(self._info["model_id"])

    @property
    def dim(self) -> int:
        return int(self._info["dim"])

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
        """Metadata row of ``photo_id`` (or None)."""
        cur = self._db.execute(
            f"SELECT id, {', '.join(META_FIELDS)} FROM items WHERE id=?", (str(photo_id),)
        )
        r = cur.fetchone()
        return None if r is None else dict(zip(("id",) + META_FIELDS, r, strict=True))

    # -- mutation -------------------------------------------------------------------------
    def add(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        meta: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> int:
        """Add (or replace, for ids already present) photos; writes a new generation.

        ``vectors``: ``float32 [N, dim]`` embeddings from the model named by ``model_id``.
        ``meta``: one dict per photo with any of product_id, title, price, category,
        location, path. Returns the number of items added or replaced.
        """
        change = self._add_change(ids, vectors, meta)
        if len(ids) == 0:
            return 0
        self._commit(change)
        return len(ids)

    def _add_change(self, ids: Sequence[str], vectors: Any, meta: Any) -> Any:
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
        rows = [_clean_meta(meta[i] if meta is not None else None) for i in range(len(ids))]

        def change(conn: sqlite3.Connection) -> None:
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
            conn.executemany(
                "INSERT INTO items (label, id, product_id, title, price, category, location, "
                "path) VALUES (?,?,?,?,?,?,?,?)",
                [
                    (int(lab), i, *(r[k] for k in META_FIELDS))
                    for lab, i, r in zip(labels, ids, rows, strict=True)
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

        def change(conn: sqlite3.Connection) -> None:
            for _, lab in found:
                self._hnsw.mark_deleted(lab)
            conn.executemany("DELETE FROM items WHERE label=?", [(lab,) for _, lab in found])

        self._commit(change)
        return missing

    def _commit(self, change) -> None:
        """Apply ``change`` to a copy of the metadata + the in-memory graph, write them as
        generation n+1, swap index.json, delete older generations. On any failure the
        in-memory state is rolled back to what is on disk and the error re-raised."""
        d = self.path
        new_gen = self.generation + 1
        vec, meta = f"vectors-{new_gen}.hnsw", f"meta-{new_gen}.sqlite"
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        try:
            self._db.backup(conn)
            conn.execute(_SCHEMA)
            change(conn)
            conn.commit()
            count = conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            for name in (vec, meta):
                with contextlib.suppress(FileNotFoundError):
                    (d / name).unlink()
            self._hnsw.save_index(str(d / vec))
            disk = sqlite3.connect(str(d / meta))
            try:
                conn.backup(disk)
                disk.commit()
            finally:
                disk.close()
            _fsync_file(d / vec)
            _fsync_file(d / meta)
            info = dict(self._info)
            info.update(
                generation=new_gen,
                count=int(count),
                files={vec: sha256_file(d / vec), meta: sha256_file(d / meta)},
            )
            _write_json_atomic(d / INDEX_JSON, info)
        except BaseException as e:
            conn.close()
            self._rollback()
            if isinstance(e, (OSError, sqlite3.Error, RuntimeError)):
                raise MktIndexError(f"{d}: cannot write index ({e})") from None
            raise
        old = self._db
        self._db, self._info = conn, info
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
        self.set_ef(ef)

    def _cleanup(self) -> None:
        keep = set(self._info["files"])
        for p in self.path.iterdir():
            m = _GEN_RE.match(p.name)
            if m and p.name not in keep:
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


__all__ = ["META_FIELDS", "Hit", "Index", "default_index_dir"]
