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
(tmp + fsync + ``os.replace``), then deletes older generations. A crash at any point leaves
either the old or the new index, never a mix. Loading checks the sha256 of every file, and
refuses queries embedded by a bundle with another ``model_id``: vectors from two different
models are not comparable, so silently mixing them would return nonsense.

Concurrency (several processes on one index folder):

- **Writers serialise** on ``INDEX/index.lock`` (``fcntl.flock``, released by the kernel when
  a writer dies). The lock is held for the whole read-modify-commit: under it the writer
  re-reads ``index.json`` and, if another writer committed since this object was opened,
  reloads that generation and applies its change on top of it (no lost updates). A writer
  that cannot get the lock within ``wait`` seconds (default :data:`DEFAULT_WAIT`, env
  ``MKT_INDEX_WAIT``) raises :class:`IndexBusyError` and writes nothing.
- **Readers never lock and never fail because of a writer.** :meth:`Index.open` reads
  ``index.json``, opens the generation's files at once (``O_NOFOLLOW``) and from then on reads
  only through those descriptors: a file deleted afterwards stays readable, and the bytes that
  are hashed are the bytes that are loaded. If a listed file is missing or does not match
  while ``index.json`` has meanwhile changed, it starts again on the new generation.
- **Garbage collection** runs only under the lock, after a commit: it keeps the current and
  the previous generation (a reader that has just read the previous ``index.json`` still
  finds its files) and deletes older generations, orphans of a crashed writer and
  ``index.json`` tmp files. So after any crash every command still loads the index, and the
  next write removes the junk.

``index.json`` is untrusted input: size and nesting are capped, every field is type- and
range-checked, file names must be exactly the generation's names inside the folder (no
paths, no symlinks), and the sqlite schema is checked, so a hostile or corrupt index is
refused with one :class:`MktIndexError` line.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import re
import sqlite3
import stat
import struct
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
LOCK_NAME = "index.lock"
DEFAULT_WAIT = 60.0  # seconds a writer waits for another writer (env MKT_INDEX_WAIT)
MAX_INDEX_JSON = 1 << 20  # bytes of index.json read at most
MAX_JSON_DEPTH = 16  # nesting of index.json ({"text": {...}} is 2)
# sane ranges of the numeric fields of index.json (inclusive)
_RANGES = {"dim": (1, 16384), "M": (2, 2048), "ef_construction": (1, 100_000),
           "ef": (1, 100_000), "count": (0, 2**31 - 1), "generation": (0, 2**53)}
_TEXT_DIM_RANGE = (1, 4096)
#: optional items columns: the listing's place (mkt.runtime.location) and the photo file's
#: signature (mkt index sync); absent in indexes written before them
_GEO_COLS = (("lat", "REAL"), ("lon", "REAL"), ("fsig", "TEXT"))
_TEXT_COUNTS = ("listings", "listing_vectors", "photo_text_vectors")
_OPEN_TRIES = 20  # a reader starts again at most this often when a writer swaps under it
_GEN_RE = re.compile(r"^(vectors|meta|ltext|xmodal)-(\d+)\.(hnsw|sqlite|npy)(\.tmp)?$")
_TMP_RE = re.compile(r"^\.?index\.json(\..*)?\.tmp$")
_SHA_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

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
    for c, typ in _GEO_COLS:  # nullable, added by the next write: older indexes still open
        if c not in cols:
            conn.execute(f"ALTER TABLE items ADD COLUMN {c} {typ}")
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


def _load_npy(data: bytes, name: str, dim: int, where: Path) -> np.ndarray:
    try:
        a = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise MktIndexError(f"{where}: {name}: cannot read ({e})") from None
    if not isinstance(a, np.ndarray) or a.ndim != 2 or a.shape[1] != dim \
            or a.dtype != np.float16:
        raise MktIndexError(
            f"{where}: {name} holds {a.dtype} {list(a.shape)}, expected float16 [n, {dim}]"
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


def _check_hnsw_header(f: Any, size: int, name: str, dim: int, count: int,
                       where: Path) -> int:
    """Refuse a vectors file whose header hnswlib would trust into a crash or garbage, and
    return its element count. hnswlib trusts the ``dim`` it is given: a wrong one (e.g. an
    edited index.json) reads past each vector. The header (6 x uint64: offsetLevel0,
    max_elements, count, size_per_element, label_offset, data_offset; int32 maxlevel, uint32
    entry point, 3 x uint64 maxM, maxM0, M; double mult; uint64 ef_construction) holds the
    vector size in bytes, and sizes that must fit the file."""
    f.seek(0)
    head = f.read(96)
    if len(head) < 96:
        raise MktIndexError(f"{where}: {name}: truncated vectors file ({len(head)} bytes)")
    _, max_el, cur, per, label_off, data_off = struct.unpack("<6Q", head[:48])
    if label_off - data_off != 4 * int(dim):
        raise MktIndexError(
            f"{where}: says dim {dim} but {name} holds {(label_off - data_off) / 4:g}-d "
            "vectors; index corrupt or modified, rebuild it"
        )
    if per != label_off + 8 or cur > max_el or max_el > 4 * cur + 1024 or cur < count \
            or size < 96 + cur * (per + 4):
        raise MktIndexError(
            f"{where}: {name}: inconsistent vectors header (elements {cur} of {max_el}, "
            f"{per} bytes each, file {size} bytes, index.json count {count}); index corrupt "
            "or modified, rebuild it"
        )
    return int(cur)


def _write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to ``path`` atomically (fsutil: tmp file, fsync, ``os.replace``)."""
    fsutil.atomic_write_json(path, obj, sort_keys=True)


class IndexBusyError(MktIndexError):
    """Another process held the index's writer lock for longer than we were willing to wait;
    nothing was written."""


def _lock_wait(wait: float | None) -> float:
    if wait is not None:
        return max(0.0, float(wait))
    env = os.environ.get("MKT_INDEX_WAIT")
    if env:
        with contextlib.suppress(ValueError):
            return max(0.0, float(env))
    return DEFAULT_WAIT


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike, wait: float | None = None) -> Iterator[None]:
    """Hold the writer lock of the index folder ``path`` (``index.lock``, ``fcntl.flock``).
    Waits up to ``wait`` seconds (None: :data:`DEFAULT_WAIT` or env ``MKT_INDEX_WAIT``) for
    another writer, then raises :class:`IndexBusyError`. Not re-entrant: a second
    acquisition, even in the same process, waits like any other writer."""
    d = Path(path)
    lp = d / LOCK_NAME
    try:
        fd = os.open(lp, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _NONBLOCK | _CLOEXEC, 0o644)
    except OSError as e:
        raise MktIndexError(f"{d}: cannot open the writer lock {LOCK_NAME} "
                            f"({e.strerror or e})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MktIndexError(f"{d}: {LOCK_NAME} is not a regular file")
        limit = _lock_wait(wait)
        t0 = time.monotonic()
        delay = 0.002
        while not _try_lock(fd):
            waited = time.monotonic() - t0
            if waited >= limit:
                holder = ""
                with contextlib.suppress(OSError, ValueError):
                    pid = int(os.pread(fd, 32, 0).split()[0])
                    holder = f" (pid {pid})"
                raise IndexBusyError(
                    f"{d}: index busy: another process{holder} is writing it; gave up after "
                    f"{limit:g} s, nothing written"
                )
            time.sleep(min(delay, limit - waited))
            delay = min(delay * 2, 0.05)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise MktIndexError(f"cannot lock {LOCK_NAME} ({e.strerror or e})") from None


def check_index_writable(path: str | os.PathLike) -> None:
    """Raise :class:`MktIndexError` unless an index can be written at ``path`` (the folder, or
    its nearest existing ancestor, is a directory we can create files in). Call it before
    expensive work (embedding) so a build onto a read-only path fails at once. Leaves
    nothing behind."""
    d = Path(path)
    p = d
    while not os.path.lexists(p) and p.parent != p:
        p = p.parent
    if not p.is_dir():
        what = "is not a directory" if p == d else f"{p} is not a directory"
        raise MktIndexError(f"{d}: cannot write an index here ({what})")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".mkt-write-check.", suffix=".tmp", dir=p)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        where = "" if p == d else f" ({p})"
        raise MktIndexError(
            f"{d}: cannot write an index here{where}: {e.strerror or e}") from None


def _json_depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` in JSON text (strings skipped), without recursion."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    depth = best = 0
    for ch in bare:
        if ch in "[{":
            depth += 1
            best = max(best, depth)
        elif ch in "]}":
            depth -= 1
    return best


def _read_raw(ij: Path) -> bytes:
    """index.json's bytes: a regular file (not a FIFO/device), at most MAX_INDEX_JSON."""
    fd = os.open(ij, os.O_RDONLY | _NONBLOCK | _CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > MAX_INDEX_JSON:
            raise ValueError(f"{st.st_size} bytes, more than the {MAX_INDEX_JSON} allowed")
        chunks, n = [], 0
        while n <= MAX_INDEX_JSON:
            b = os.read(fd, 1 << 16)
            if not b:
                break
            chunks.append(b)
            n += len(b)
        if n > MAX_INDEX_JSON:
            raise ValueError(f"more than {MAX_INDEX_JSON} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _int_field(obj: Mapping[str, Any], key: str, lo: int, hi: int, where: str = "") -> int:
    if key not in obj:
        raise ValueError(f"missing '{where}{key}'")
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"'{where}{key}' must be an integer in {lo}..{hi}, not {v!r}")
    return v


def _expected_files(gen: int, v2: bool) -> tuple[str, ...]:
    names = (f"vectors-{gen}.hnsw", f"meta-{gen}.sqlite")
    return names + ((f"ltext-{gen}.npy", f"xmodal-{gen}.npy") if v2 else ())


def _parse_info(raw: bytes) -> dict[str, Any]:
    """Parse and validate index.json (types, ranges, file names); ValueError says why."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 ({e.reason})") from None
    if _json_depth(text) > MAX_JSON_DEPTH:
        raise ValueError(f"nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        info = json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(info, dict):
        raise ValueError("not a JSON object")
    sv = info.get("schema_version")
    if isinstance(sv, bool) or sv not in READABLE_SCHEMAS:
        raise ValueError(f"unsupported schema_version {sv!r}")
    if info.get("space", "cosine") != "cosine":
        raise ValueError(f"unsupported space {info.get('space')!r}")
    for k, (lo, hi) in _RANGES.items():
        _int_field(info, k, lo, hi)
    mid = info.get("model_id")
    if not isinstance(mid, str) or not 0 < len(mid) <= 256:
        raise ValueError(f"bad model_id {mid!r}" if "model_id" in info else "missing 'model_id'")
    if "provenance" in info and not isinstance(info["provenance"], dict):
        raise ValueError("'provenance' is not an object")
    v2 = sv >= 2
    if v2:
        t = info.get("text")
        if not isinstance(t, dict):
            raise ValueError("'text' is not an object" if "text" in info else "missing 'text'")
        _int_field(t, "dim", *_TEXT_DIM_RANGE, where="text.")
        for k in _TEXT_COUNTS:
            _int_field(t, k, 0, 2**31 - 1, where="text.")
    files = info.get("files")
    if not isinstance(files, dict):
        raise ValueError("'files' is not an object" if "files" in info else "missing 'files'")
    want = _expected_files(info["generation"], v2)
    for name, sha in files.items():
        if name not in want:
            raise ValueError(f"unexpected file name in 'files': {name!r}")
        if not isinstance(sha, str) or not _SHA_RE.match(sha):
            raise ValueError(f"bad sha256 for {name}")
    for name in want:
        if name not in files:
            raise ValueError(f"'files' does not list {name}")
    return info


def _open_member(d: Path, name: str, ij: Path) -> tuple[Any, int]:
    """Open a generation file listed in index.json: a regular file directly in ``d`` (no
    symlink, no FIFO). Returns (binary file object, size)."""
    fp = d / name
    try:
        fd = os.open(fp, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC)
    except FileNotFoundError:
        raise MktIndexError(f"{fp}: listed in index.json but missing") from None
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(fp):
            raise MktIndexError(f"{fp}: is a symlink; index files must be regular files inside "
                                f"{d}") from None
        raise MktIndexError(f"{fp}: cannot read ({e.strerror or e})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (not _NOFOLLOW and os.path.islink(fp)):
        os.close(fd)
        raise MktIndexError(f"{fp}: not a regular file; listed in {ij.name}")
    return os.fdopen(fd, "rb"), int(st.st_size)


def _sha_stream(f: Any) -> str:
    f.seek(0)
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def _fd_path(f: Any, fallback: Path) -> str:
    """A path that opens the same file as ``f`` even if it has been unlinked since (Linux
    /proc); elsewhere the file's own path."""
    p = f"/proc/self/fd/{f.fileno()}"
    return p if os.path.exists(p) else str(fallback)


_ITEM_COLS = ("label", "id") + META_FIELDS
_ITEM_COLS2 = _ITEM_COLS + ("description", "xrow")
_LISTING_COLS = ("lid", "product_id", "title", "description", "price", "category", "vrow",
                 "vkey")


def _check_db(db: sqlite3.Connection, v2: bool) -> None:
    """The metadata database has our schema (ValueError/sqlite3.Error otherwise), so later
    queries cannot fail on a hostile file whose hash was recomputed."""
    qc = db.execute("PRAGMA quick_check").fetchall()
    if qc != [("ok",)]:
        raise ValueError(f"metadata fails sqlite's check: {str(qc[0][0])[:80]}")
    odd = db.execute("SELECT type, name FROM sqlite_master WHERE type IN ('trigger', 'view')"
                     ).fetchone()
    if odd:
        raise ValueError(f"unexpected {odd[0]} {odd[1]!r} in the metadata")
    cols = {r[1]: r for r in db.execute("PRAGMA table_info(items)")}
    for c in _ITEM_COLS2 if v2 else _ITEM_COLS:
        if c not in cols:
            raise ValueError(f"metadata table items lacks column {c!r}")
    if cols["label"][5] != 1 or str(cols["label"][2]).upper() != "INTEGER":
        raise ValueError("metadata items.label is not the integer primary key")
    if v2:
        lc = {r[1] for r in db.execute("PRAGMA table_info(listings)")}
        for c in _LISTING_COLS:
            if c not in lc:
                raise ValueError(f"metadata table listings lacks column {c!r}")
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name='listing_fts' AND "
                          "sql LIKE '%fts5%'").fetchone():
            raise ValueError("metadata has no full-text table listing_fts")
        db.execute("SELECT rowid FROM listing_fts WHERE listing_fts MATCH 'x' LIMIT 1"
                   ).fetchall()


class _Rows:
    """The rows of one query, fetched at once (so a bad page fails inside ``execute``)."""

    __slots__ = ("_rows", "_i")

    def __init__(self, rows: list[Any]):
        self._rows, self._i = rows, 0

    def fetchone(self) -> Any:
        if self._i >= len(self._rows):
            return None
        self._i += 1
        return self._rows[self._i - 1]

    def fetchall(self) -> list[Any]:
        out, self._i = self._rows[self._i:], len(self._rows)
        return out

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


class _DB:
    """The in-memory metadata of an open index: every query error becomes one
    :class:`MktIndexError` line instead of a raw ``sqlite3`` exception."""

    def __init__(self, conn: sqlite3.Connection, where: Path):
        self.conn, self.where = conn, where

    def execute(self, sql: str, params: Any = ()) -> _Rows:
        try:
            return _Rows(self.conn.execute(sql, params).fetchall())
        except sqlite3.Error as e:
            raise MktIndexError(f"{self.where}: index metadata unreadable ({e}); rebuild it"
                                ) from None

    def backup(self, target: sqlite3.Connection) -> None:
        self.conn.backup(target)

    def close(self) -> None:
        self.conn.close()


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


def _geo_meta(row: Mapping[str, Any] | None) -> tuple[Any, Any, Any]:
    """``(lat, lon, fsig)`` of a metadata row: finite in-range coordinates or None."""
    row = row or {}
    lat, lon = row.get("lat"), row.get("lon")
    try:
        lat, lon = float(lat), float(lon)  # type: ignore[arg-type]
        ok = math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180
    except (TypeError, ValueError):
        ok = False
    sig = row.get("fsig")
    return (lat, lon, None if sig is None else str(sig)[:64]) if ok else \
        (None, None, None if sig is None else str(sig)[:64])


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
        self._db = db if isinstance(db, _DB) else _DB(db, path)
        self._vecs = vecs if vecs is not None else _empty_vecs(self.text_dim)
        self._ef = int(info["ef"])  # this session's search breadth (set_ef; not saved)
        self._locked = False  # this object holds the writer lock (inside create)
        self._raw: bytes | None = None  # index.json as read by open
        #: seconds a write waits for another writer before IndexBusyError (None: default)
        self.wait: float | None = None

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
        ef: int = 128,
        overwrite: bool = False,
        ids: Sequence[str] | None = None,
        vectors: np.ndarray | None = None,
        meta: Sequence[Mapping[str, Any] | None] | None = None,
        provenance: Mapping[str, Any] | None = None,
        text_vectors: np.ndarray | None = None,
        text_dim: int = TEXT_DIM,
        wait: float | None = None,
    ) -> Index:
        """Create an index directory, empty or with ``ids``/``vectors``/``meta``
        (/``text_vectors``, see :meth:`add`), written as one generation. Refuses to replace an
        existing index unless ``overwrite``; the old one then stays valid until the new one is
        committed. ``provenance`` (source, command, time) is kept in index.json so a shipped
        index says how it was made. ``text_dim``: size of the text (MiniLM) vectors.
        ``wait``: seconds to wait for another writer of the same folder (see
        :func:`writer_lock`). A failed create leaves no files behind (and removes the folder
        if it made it)."""
        d = Path(path)
        if os.path.lexists(d) and not d.is_dir():
            raise MktIndexError(f"{d}: exists and is not a directory")
        if (d / INDEX_JSON).exists() and not overwrite:
            raise MktIndexError(f"{d}: an index already exists here (use overwrite/--force)")
        for k, v in (("dim", dim), ("M", M), ("ef_construction", ef_construction),
                     ("ef", ef)):
            lo, hi = _RANGES[k]
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) \
                    or not lo <= int(v) <= hi:
                raise MktIndexError(f"{d}: bad index parameter {k}={v!r} (allowed {lo}..{hi})")
        if isinstance(text_dim, bool) or not _TEXT_DIM_RANGE[0] <= int(text_dim) \
                <= _TEXT_DIM_RANGE[1]:
            raise MktIndexError(f"{d}: bad text_dim {text_dim!r}")
        check_index_writable(d)
        made = not d.exists()
        d.mkdir(parents=True, exist_ok=True)
        ok = False
        try:
            with writer_lock(d, wait):
                if (d / INDEX_JSON).exists() and not overwrite:  # another create won the race
                    raise MktIndexError(
                        f"{d}: an index already exists here (use overwrite/--force)")
                gens = [int(m.group(2)) for m in map(_GEN_RE.match, os.listdir(d)) if m]
                with contextlib.suppress(Exception):
                    gens.append(int(json.loads(_read_raw(d / INDEX_JSON))["generation"]))
                info = {
                    "schema_version": SCHEMA_VERSION,
                    "model_id": str(model_id),
                    "dim": int(dim),
                    "space": "cosine",
                    "M": int(M),
                    "ef_construction": int(ef_construction),
                    "ef": int(ef),
                    "count": 0,
                    "generation": max(gens, default=-1),
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
                idx.wait = wait
                idx._locked = True
                try:
                    if vectors is None:
                        idx._commit(lambda conn, st: None)
                    else:  # one generation with everything: never seen empty
                        idx._commit(idx._add_change(ids or [], vectors, meta, text_vectors))
                finally:
                    idx._locked = False
            ok = True
            return idx
        finally:
            if not ok and made:  # leave nothing of a failed first build
                for n in os.listdir(d) if d.is_dir() else ():
                    if _GEN_RE.match(n) or _TMP_RE.match(n) or n == LOCK_NAME:
                        with contextlib.suppress(OSError):
                            (d / n).unlink()
                with contextlib.suppress(OSError):
                    d.rmdir()

    @classmethod
    def open(
        cls, path: str | os.PathLike | None = None, *, model_id: str | None = None,
        verify: bool = True,
    ) -> Index:
        """Open an index directory (default: the packaged ``mkt/assets/index``).

        ``model_id``: refuse the index unless it was built by that bundle's model.
        ``verify``: check the sha256 of the generation files against ``index.json``.
        Schema-1 indexes (before text search) open too; ``has_text`` is then False.
        Takes no lock: if a writer replaces the generation while it is being opened, it
        starts again on the new one.
        """
        d = Path(path) if path is not None else default_index_dir()
        ij = d / INDEX_JSON
        if not ij.is_file():
            hint = "" if path is not None else " (no packaged index; pass --index DIR)"
            what = "index directory not found" if not d.is_dir() else "no index.json here"
            raise MktIndexError(f"{d}: {what}{hint}")
        err: MktIndexError | None = None
        for attempt in range(_OPEN_TRIES):
            raw, info = cls._read_info(d)
            if model_id is not None and str(model_id) != str(info["model_id"]):
                raise MktIndexError(
                    f"{d}: index was built with model {info['model_id']}, but the bundle is "
                    f"model {model_id}; embeddings are not comparable (rebuild the index)"
                )
            try:
                idx = cls._load(d, info, verify)
                idx._raw = raw
                return idx
            except MktIndexError as e:
                err = e
            try:  # a writer swapped generations under us? then start again on the new one
                if _read_raw(ij) == raw:
                    raise err
            except (OSError, ValueError):
                raise err from None
            time.sleep(min(0.002 * 2**attempt, 0.05))
        assert err is not None
        raise err

    @staticmethod
    def _read_info(d: Path) -> tuple[bytes, dict[str, Any]]:
        ij = d / INDEX_JSON
        try:
            raw = _read_raw(ij)
            return raw, _parse_info(raw)
        except FileNotFoundError:
            raise MktIndexError(f"{d}: no index.json here") from None
        except (OSError, ValueError) as e:
            msg = e.strerror if isinstance(e, OSError) and e.strerror else e
            raise MktIndexError(f"{ij}: malformed index.json ({msg})") from None

    @classmethod
    def _load(cls, d: Path, info: dict[str, Any], verify: bool) -> Index:
        """Load the generation ``info`` names, reading each file through one descriptor
        opened up front (so a writer deleting it afterwards does not matter)."""
        ij = d / INDEX_JSON
        gen, dim, count = info["generation"], info["dim"], info["count"]
        v2 = info["schema_version"] >= 2
        tinfo = info.get("text") or {}
        tdim = int(tinfo.get("dim", TEXT_DIM)) if v2 else TEXT_DIM
        names = _expected_files(gen, v2)
        vec, meta = names[0], names[1]
        handles: dict[str, tuple[Any, int]] = {}
        try:
            for name in names:
                handles[name] = _open_member(d, name, ij)
            data: dict[str, bytes] = {}
            for name, (f, _) in handles.items():
                if name != vec:
                    f.seek(0)
                    data[name] = f.read()
            if verify:
                for name, (f, _) in handles.items():
                    got = hashlib.sha256(data[name]).hexdigest() if name in data \
                        else _sha_stream(f)
                    want = str(info["files"][name]).lower()
                    if got != want:
                        raise MktIndexError(
                            f"{d / name}: sha256 mismatch (index.json {want[:12]}..., file "
                            f"{got[:12]}...); index corrupt or modified, rebuild it"
                        )
            vf, vsize = handles[vec]
            n_hnsw = _check_hnsw_header(vf, vsize, vec, dim, count, ij)
            import hnswlib

            try:
                h = hnswlib.Index(space="cosine", dim=dim)
                h.load_index(_fd_path(vf, d / vec), max_elements=0)
                h.set_ef(int(info["ef"]))
                if h.get_current_count() != n_hnsw:
                    raise ValueError(f"{vec} holds {h.get_current_count()} vectors, header "
                                     f"says {n_hnsw}")
                db = sqlite3.connect(":memory:", check_same_thread=False)
                db.deserialize(data[meta])
                _check_db(db, v2)
                n = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
                lo, hi = db.execute("SELECT MIN(label), MAX(label) FROM items").fetchone()
                if n and (lo < 0 or hi >= n_hnsw):
                    raise ValueError(f"item labels {lo}..{hi} outside the {n_hnsw} vectors")
                vecs = _empty_vecs(tdim)
                if v2:
                    vecs = _Vecs(_load_npy(data[names[2]], names[2], tdim, ij),
                                 _load_npy(data[names[3]], names[3], tdim, ij))
                    for sql, arr, what in (
                            ("SELECT MIN(vrow), MAX(vrow) FROM listings", vecs.ltext, "listing"),
                            ("SELECT MIN(xrow), MAX(xrow) FROM items", vecs.xmod, "photo")):
                        a, b = db.execute(sql).fetchone()
                        if b is not None and (a < 0 or b >= len(arr)):
                            raise ValueError(f"{what} text vector rows out of range")
                    nl = db.execute("SELECT COUNT(*) FROM listings").fetchone()[0]
                    for k, have in (("listings", nl), ("listing_vectors", len(vecs.ltext)),
                                    ("photo_text_vectors", len(vecs.xmod))):
                        if tinfo[k] != have:
                            raise MktIndexError(
                                f"{ij}: text.{k} is {tinfo[k]} but the files hold {have}; "
                                "index corrupt or modified, rebuild it")
            except (RuntimeError, sqlite3.Error, OSError, ValueError, TypeError,
                    MemoryError) as e:
                raise MktIndexError(f"{d}: cannot load index files ({e})") from None
        finally:
            for f, _ in handles.values():
                f.close()
        if n != count:
            raise MktIndexError(f"{d}: index.json says {count} items, metadata has {n}")
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
        return self._ef

    def set_ef(self, ef: int) -> None:
        """Search-time recall/speed knob for this session (not saved)."""
        self._ef = int(ef)
        self._hnsw.set_ef(int(ef))

    def info(self) -> dict[str, Any]:
        """``index.json`` contents plus the path, for `mkt index info`."""
        d: dict[str, Any] = {"path": str(self.path)}
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
            rows = self._db.conn.execute(
                "SELECT l.product_id, -bm25(listing_fts, 2.0, 1.0) AS s FROM listing_fts "
                "JOIN listings l ON l.lid = listing_fts.rowid WHERE listing_fts MATCH ? "
                "ORDER BY bm25(listing_fts, 2.0, 1.0) LIMIT ?",
                (match, int(k)),
            ).fetchall()
        except sqlite3.Error as e:
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

    def photo_vectors(self) -> tuple[list[str], list[str | None], np.ndarray]:
        """Every indexed photo: ``(photo ids, product ids, float32 [N, dim] embeddings)``,
        for listing-level computations (e.g. the price kNN over the whole catalogue)."""
        rows = self._db.execute("SELECT label, id, product_id FROM items ORDER BY label"
                                ).fetchall()
        if not rows:
            return [], [], np.zeros((0, self.dim), np.float32)
        vecs = np.asarray(self._hnsw.get_items([r[0] for r in rows]), np.float32)
        return [r[1] for r in rows], [r[2] for r in rows], vecs

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

    def _has_cols(self, *cols: str) -> bool:
        have = {r[1] for r in self._db.execute("PRAGMA table_info(items)")}
        return all(c in have for c in cols)

    def places(self, photo_ids: Sequence[str]) -> dict[str, tuple[Any, Any, Any]]:
        """``{photo id: (location, lat, lon)}``; lat/lon None where not stored (an index
        written before they were: :func:`mkt.runtime.location.coords_of` places the text)."""
        geo = self._has_cols("lat", "lon")
        cols = "location, lat, lon" if geo else "location, NULL, NULL"
        out: dict[str, tuple[Any, Any, Any]] = {}
        ids = list(dict.fromkeys(str(p) for p in photo_ids))
        for s in range(0, len(ids), 500):
            chunk = ids[s: s + 500]
            ph = ",".join("?" * len(chunk))
            for r in self._db.execute(f"SELECT id, {cols} FROM items WHERE id IN ({ph})",
                                      chunk):
                out[r[0]] = (r[1], r[2], r[3])
        return out

    def sync_state(self) -> dict[str, dict[str, Any]]:
        """``{photo id: stored metadata}`` (ITEM_FIELDS + lat, lon, fsig; None where the
        index has no such column), what ``mkt index sync`` compares the source with."""
        extra = [c for c, _ in _GEO_COLS]
        have = {r[1] for r in self._db.execute("PRAGMA table_info(items)")}
        fields = [c for c in ITEM_FIELDS + tuple(extra) if c in have]
        out = {}
        for r in self._db.execute(f"SELECT id, {', '.join(fields)} FROM items"):
            d = {c: None for c in ITEM_FIELDS + tuple(extra)}
            d.update(zip(fields, r[1:], strict=True))
            out[r[0]] = d
        return out

    def sync(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        meta: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        text_vectors: np.ndarray | None = None,
        update: Mapping[str, Mapping[str, Any]] | None = None,
        remove: Iterable[str] = (),
    ) -> bool:
        """One generation with three kinds of change: add/replace ``ids`` (as :meth:`add`),
        ``update`` metadata of photos in place (their vectors kept: nothing re-embedded),
        and ``remove`` photos. Ids no longer present when the write happens are skipped.
        Returns False when there was nothing to write."""
        add = self._add_change(ids, vectors, meta, text_vectors)
        upd = {str(k): (_clean_meta(v), _geo_meta(v)) for k, v in (update or {}).items()}
        rem = list(dict.fromkeys(str(i) for i in remove))
        if not (len(ids) or upd or rem):
            return False
        cols = ", ".join(f"{k}=?" for k in ITEM_FIELDS + ("lat", "lon", "fsig"))

        def change(conn: sqlite3.Connection, st: _Vecs) -> None:
            for i in rem:
                r = conn.execute("SELECT label FROM items WHERE id=?", (i,)).fetchone()
                if r is not None:
                    self._hnsw.mark_deleted(int(r[0]))
                    conn.execute("DELETE FROM items WHERE label=?", (int(r[0]),))
            conn.executemany(f"UPDATE items SET {cols} WHERE id=?",
                             [(*(m[k] for k in ITEM_FIELDS), *g, i)
                              for i, (m, g) in upd.items()])
            add(conn, st)

        self._commit(change)
        return True

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
        geo = [_geo_meta(meta[i] if meta is not None else None) for i in range(len(ids))]

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
                for j, si in enumerate(sel):
                    xrows[int(si)] = base + j
            conn.executemany(
                "INSERT INTO items (label, id, product_id, title, price, category, location, "
                "path, description, xrow, lat, lon, fsig) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (int(lab), i, *(r[k] for k in ITEM_FIELDS), xr, *g)
                    for lab, i, r, xr, g in zip(labels, ids, rows, xrows, geo, strict=True)
                ],
            )

        return change

    def remove(self, ids: Iterable[str]) -> list[str]:
        """Remove photos by id (hnswlib ``mark_deleted`` + delete the row); writes a new
        generation. Returns the ids that were not in the index (nothing is written if none
        were). Which ids are present is decided under the writer lock, on the latest
        generation."""
        ids = list(dict.fromkeys(str(i) for i in ids))
        if not any(self._db.execute("SELECT 1 FROM items WHERE id=?", (i,)).fetchone()
                   for i in ids) and self._on_latest():
            return ids  # nothing to remove (and nobody committed since we opened)
        missing: list[str] = []

        def change(conn: sqlite3.Connection, st: _Vecs) -> bool:
            missing.clear()
            found = []
            for i in ids:
                r = conn.execute("SELECT label FROM items WHERE id=?", (i,)).fetchone()
                if r is None:
                    missing.append(i)
                else:
                    found.append(int(r[0]))
            if not found:
                return False
            for lab in found:
                self._hnsw.mark_deleted(lab)
            conn.executemany("DELETE FROM items WHERE label=?", [(lab,) for lab in found])
            return True

        self._commit(change)
        return list(missing)

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
            key: str | None = _text_key(listing_text(t, dsc))
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

    def _on_latest(self) -> bool:
        """Whether index.json still names the generation this object holds."""
        try:
            _, info = self._read_info(self.path)
        except MktIndexError:
            return False
        return info["generation"] == self.generation and info["files"] == self._info["files"]

    def latest(self) -> Index:
        """This index if it is still the current generation, else a new :class:`Index` of
        the one a writer committed since (verified, same model; this object is left as it
        was, so searches in flight on it finish). For long-running readers: a server
        follows ``mkt index add`` without a restart."""
        if self._on_latest():
            return self
        fresh = Index.open(self.path, model_id=self.model_id)
        fresh.set_ef(self.ef)
        return fresh

    def _catch_up(self) -> None:
        """Under the writer lock: if another writer committed since this object was loaded,
        load the latest generation (verified) so our change goes on top of it."""
        if not self._info["files"]:
            return  # first generation of a new index (create, possibly over an old one)
        _, info = self._read_info(self.path)
        if info["generation"] == self.generation and info["files"] == self._info["files"]:
            return
        fresh = self._load(self.path, info, verify=True)
        for what, a, b in (("model", fresh.model_id, self.model_id), ("dim", fresh.dim, self.dim),
                           ("text dim", fresh.text_dim, self.text_dim)):
            if a != b:
                fresh.close()
                raise MktIndexError(
                    f"{self.path}: the index was rebuilt meanwhile ({what} {a}, was {b}); "
                    "nothing written, open it again")
        self._db.close()
        self._hnsw, self._db, self._info, self._vecs = (fresh._hnsw, fresh._db, fresh._info,
                                                        fresh._vecs)
        self._hnsw.set_ef(self._ef)

    def _commit(self, change) -> None:
        """Under the writer lock: catch up with the latest generation, apply
        ``change(conn, vecs)`` to a copy of the metadata + text vectors + the in-memory graph,
        write them as generation n+1, swap index.json, then delete generations older than n
        and any junk. ``change`` returning False means there is nothing to write. On any
        failure the in-memory state is rolled back to what is on disk, this write's files are
        removed, and the error re-raised. A schema-1 index is upgraded to schema 2 here."""
        if self._locked:
            self._commit_locked(change)
            return
        with writer_lock(self.path, self.wait):
            self._locked = True
            try:
                self._commit_locked(change)
            finally:
                self._locked = False

    def _commit_locked(self, change) -> None:
        d = self.path
        try:
            self._catch_up()
        except BaseException:
            self._rollback()
            raise
        prev = dict(self._info.get("files") or {})
        if not prev:  # create over an old index: keep the old one like a previous generation
            with contextlib.suppress(MktIndexError):
                prev = dict(self._read_info(d)[1]["files"])
        new_gen = self.generation + 1
        vec, meta = f"vectors-{new_gen}.hnsw", f"meta-{new_gen}.sqlite"
        ltext, xmod = f"ltext-{new_gen}.npy", f"xmodal-{new_gen}.npy"
        names = (vec, meta, ltext, xmod)
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        st = _Vecs(self._vecs.ltext, self._vecs.xmod)
        try:
            self._db.backup(conn)
            _ensure_schema2(conn)
            if change(conn, st) is False:
                conn.close()
                return
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
            self._remove_unlisted()
            if isinstance(e, (OSError, sqlite3.Error, RuntimeError, ValueError)):
                raise MktIndexError(f"{d}: cannot write index ({e})") from None
            raise
        old = self._db
        self._db, self._info = _DB(conn, d), info
        self._raw = None
        self._vecs = _Vecs(st.ltext.astype(np.float16).astype(np.float32),
                           st.xmod.astype(np.float16).astype(np.float32))
        old.close()
        self._cleanup(prev)

    def _rollback(self) -> None:
        """Reload the committed state after a failed write (in-memory graph may be dirty)."""
        try:
            fresh = Index.open(self.path, verify=False)
        except MktIndexError:
            return  # nothing committed yet (failed create): leave as is
        self._db.close()
        self._hnsw, self._db, self._info = fresh._hnsw, fresh._db, fresh._info
        self._vecs = fresh._vecs
        self._hnsw.set_ef(self._ef)

    def _remove_unlisted(self) -> None:
        """After a failed write (lock held): remove its files, keep whatever index.json and
        the generation before it name."""
        keep: set[str] = set()
        with contextlib.suppress(MktIndexError):
            keep = set(self._read_info(self.path)[1]["files"])
        gens = {int(m.group(2)) for m in map(_GEN_RE.match, keep) if m}
        if gens or not (self.path / INDEX_JSON).exists():
            newest = max(gens, default=-1)
            for p in self.path.iterdir():
                m = _GEN_RE.match(p.name)
                if (m and int(m.group(2)) > newest) or _TMP_RE.match(p.name):
                    with contextlib.suppress(OSError):
                        p.unlink()

    def _cleanup(self, prev: Mapping[str, str] | None = None) -> None:
        """Garbage collection, under the writer lock, right after a commit: keep the current
        generation and ``prev`` (the one it replaced: a reader may have just read the old
        index.json), delete every other generation file (older ones, orphans of crashed
        writers) and index.json tmp files."""
        keep = set(self._info["files"]) | set(prev or ())
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


__all__ = ["DEFAULT_WAIT", "ITEM_FIELDS", "LOCK_NAME", "META_FIELDS", "NO_TEXT_MSG",
           "SCHEMA_VERSION", "Hit", "Index", "IndexBusyError", "check_index_writable",
           "default_index_dir", "listing_text", "writer_lock"]
