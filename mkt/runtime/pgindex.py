"""A shared index in PostgreSQL + pgvector: the same query interface as the local
:class:`~mkt.runtime.index.Index`, for ``--index postgresql://...``.

Why: one hnswlib process per machine stops being the right tool when several servers and
writers must see one catalogue (docs/scale.md). PostgreSQL gives transactions, concurrent
readers and writers, and pgvector an HNSW index inside it.

Layout, per index name (``?index=NAME`` in the URL, stripped before connecting; default
``mkt``): a table ``mkt_<name>_photos`` (id, product_id, listing fields, ``embedding
vector(D)`` with an HNSW cosine index, ``xmodal vector(384)``: the photo in the text space),
a table ``mkt_<name>_listings`` (product_id, title, price, category, description, a weighted
``tsvector`` with a GIN index for full-text search, ``ltext vector(384)``: the listing text
vector) and a row in ``mkt_indexes`` (schema version, model id, dims, parameters, version
number, source). ``mkt index push`` writes both tables in one transaction (new tables, then
drop + rename), so a push that fails leaves the old index as it was.

Text search reuses :mod:`mkt.runtime.search` (the same RRF fusion): this class ranks each
path in SQL (:meth:`PgIndex.rank_paths`: ``ts_rank_cd`` for lexical, ``<=>`` for semantic
and cross-modal). Credentials: :mod:`mkt.runtime.dburl` (never printed; errors scrubbed).
psycopg and pgvector are imported lazily (extra ``scale``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .errors import MktError, MktIndexError
from .index import ITEM_FIELDS, META_FIELDS, TEXT_DIM, Hit, listing_text

SCHEMA_VERSION = 1
DEFAULT_NAME = "mkt"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_WORD = re.compile(r"\w+", re.UNICODE)
REGISTRY = "mkt_indexes"


def _need() -> tuple[Any, Any]:
    from .embed_job import need

    return need("psycopg"), need("pgvector.psycopg")


def split_url(url: str) -> tuple[str, str]:
    """``(url without ?index=, index name)``; the name is checked (lower-case identifier)."""
    from .dburl import _url_module, redact

    try:
        u = _url_module()(str(url))
    except MktError:
        raise
    except Exception:
        raise MktError(f"not a database URL: {redact(str(url))}") from None
    name = u.query.get("index", DEFAULT_NAME)
    if isinstance(name, tuple):
        name = name[-1]
    if not _NAME.match(str(name)):
        raise MktError(f"index name {name!r}: use lower-case letters, digits and _ "
                       "(at most 40, starting with a letter)")
    base = u.difference_update_query(["index"]).render_as_string(hide_password=False)
    return base, str(name)


def connect(url: str, credentials: Any = None) -> tuple[Any, str, str]:
    """``(psycopg connection with pgvector registered, index name, redacted URL)``;
    one-line :class:`~mkt.runtime.dburl.DatabaseError` (password scrubbed) if it fails."""
    from .dburl import DatabaseError, libpq_url, password_of, redact, resolve_url, scrub

    psycopg, pgv = _need()
    base, name = split_url(url)
    full = resolve_url(base, credentials)
    secret = password_of(full)
    shown = redact(base) + ("" if name == DEFAULT_NAME else f" (index {name})")
    try:
        conn = psycopg.connect(libpq_url(full), autocommit=True)
    except psycopg.Error as e:
        raise DatabaseError(f"{redact(base)}: cannot connect ({scrub(str(e), secret)})"
                            ) from None
    try:
        pgv.register_vector(conn)
    except psycopg.ProgrammingError:
        conn.close()
        raise DatabaseError(f"{redact(base)}: the pgvector extension is not installed in "
                            "this database (CREATE EXTENSION vector)") from None
    return conn, name, shown


def _vec(v: Any) -> Any:
    return None if v is None else np.asarray(v, np.float32)


class PgIndex:
    """An index stored in PostgreSQL (see the module doc). Read methods mirror
    :class:`~mkt.runtime.index.Index`: ``search``, ``get``, ``count``, ``model_id``, ``dim``,
    text search paths; ``add`` / ``remove`` / ``set_listing_vectors`` write in one
    transaction each."""

    def __init__(self, conn: Any, name: str, shown: str, row: dict[str, Any]) -> None:
        self.conn, self.name, self.path = conn, name, shown
        self.photos, self.listings = f"mkt_{name}_photos", f"mkt_{name}_listings"
        self._row = row
        self._ef = int(row["ef"])
        self.wait: float | None = None  # the CLI sets it for local indexes; unused here

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, url: str, *, credentials: Any = None, model_id: str | None = None
             ) -> PgIndex:
        conn, name, shown = connect(url, credentials)
        row = _registry_row(conn, name)
        if row is None:
            conn.close()
            raise MktIndexError(f"{shown}: no index named '{name}' (push one with "
                                "`mkt index push INDEX URL`)")
        if row["schema_version"] != SCHEMA_VERSION:
            conn.close()
            raise MktIndexError(f"{shown}: index schema {row['schema_version']}, this mkt "
                                f"reads {SCHEMA_VERSION}")
        if model_id is not None and row["model_id"] != model_id:
            conn.close()
            raise MktIndexError(f"{shown}: index built with model {row['model_id']}, but the "
                                f"bundle is model {model_id}")
        return cls(conn, name, shown, row)

    def _refresh(self) -> None:
        row = _registry_row(self.conn, self.name)
        if row is None:
            raise MktIndexError(f"{self.path}: index '{self.name}' was dropped")
        self._row = row

    # -- properties -------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return str(self._row["model_id"])

    @property
    def dim(self) -> int:
        return int(self._row["dim"])

    @property
    def text_dim(self) -> int:
        return int(self._row["text_dim"] or TEXT_DIM)

    @property
    def has_text(self) -> bool:
        return True

    @property
    def schema_version(self) -> int:
        return SCHEMA_VERSION

    @property
    def count(self) -> int:
        return int(self._q(f"SELECT count(*) FROM {self.photos}")[0][0])

    def __len__(self) -> int:
        return self.count

    @property
    def generation(self) -> int:
        """The registry's version number (bumped by every write)."""
        self._refresh()
        return int(self._row["version"])

    @property
    def ef(self) -> int:
        return self._ef

    def set_ef(self, ef: int) -> None:
        self._ef = int(ef)

    def info(self) -> dict[str, Any]:
        self._refresh()
        d = {"path": self.path, "backend": "postgresql+pgvector", "name": self.name}
        d.update({k: v if isinstance(v, (str, int, float, type(None))) else str(v)
                  for k, v in self._row.items()})
        d["count"] = self.count
        return d

    def _q(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        from .dburl import DatabaseError

        psycopg, _ = _need()
        try:
            with self.conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        except psycopg.Error as e:
            raise DatabaseError(f"{self.path}: query failed ({' '.join(str(e).split())})"
                                ) from None

    # -- photo queries ----------------------------------------------------------------------
    def search(self, vectors: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """Nearest photos for each query vector (pgvector HNSW, cosine), ``score`` =
        cosine similarity, like :meth:`Index.search`."""
        q = np.asarray(vectors, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise MktIndexError(f"{self.path}: query vectors must be [N, {self.dim}], got "
                                f"{list(q.shape)}")
        k = max(0, int(k))
        out = []
        cols = ", ".join(META_FIELDS)
        # hnsw.ef_search: candidates kept while searching (pgvector's ef); >= k
        self._q(f"SET hnsw.ef_search = {max(self._ef, k, 1):d}")
        for v in q:
            rows = self._q(f"SELECT label, id, {cols}, 1 - (embedding <=> %s) FROM "
                           f"{self.photos} ORDER BY embedding <=> %s LIMIT %s", (v, v, k))
            out.append([Hit(id=r[1], score=float(r[-1]), label=int(r[0]),
                            meta=dict(zip(META_FIELDS, r[2:-1], strict=True))) for r in rows])
        return out

    def exact_search(self, vectors: np.ndarray, k: int = 10) -> list[list[str]]:
        """Exact top-k ids (no index: a sequential scan), for recall measurements."""
        out = []
        with self.conn.transaction():
            self._q("SET LOCAL enable_indexscan = off")
            for v in np.asarray(vectors, np.float32):
                out.append([r[0] for r in self._q(
                    f"SELECT id FROM {self.photos} ORDER BY embedding <=> %s LIMIT %s",
                    (v, int(k)))])
        return out

    def ids(self) -> list[str]:
        return [r[0] for r in self._q(f"SELECT id FROM {self.photos} ORDER BY label")]

    def __contains__(self, photo_id: object) -> bool:
        return bool(self._q(f"SELECT 1 FROM {self.photos} WHERE id=%s", (str(photo_id),)))

    def get(self, photo_id: str) -> dict[str, Any] | None:
        rows = self._q(f"SELECT id, {', '.join(ITEM_FIELDS)} FROM {self.photos} WHERE id=%s",
                       (str(photo_id),))
        return dict(zip(("id",) + ITEM_FIELDS, rows[0], strict=True)) if rows else None

    def photos_meta(self, photo_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        rows = self._q(f"SELECT id, {', '.join(META_FIELDS)} FROM {self.photos} "
                       "WHERE id = ANY(%s)", (list(map(str, photo_ids)),))
        return {r[0]: dict(zip(META_FIELDS, r[1:], strict=True)) for r in rows}

    def photo_vectors(self) -> tuple[list[str], list[str | None], np.ndarray]:
        rows = self._q(f"SELECT id, product_id, embedding FROM {self.photos} ORDER BY label")
        vecs = (np.stack([np.asarray(r[2], np.float32) for r in rows]) if rows
                else np.zeros((0, self.dim), np.float32))
        return [r[0] for r in rows], [r[1] for r in rows], vecs

    # -- text side (what mkt.runtime.search asks) -------------------------------------------
    def listings_meta(self, product_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        rows = self._q(
            f"SELECT l.product_id, l.title, l.price, l.category, (SELECT p.id FROM "
            f"{self.photos} p WHERE p.product_id = l.product_id ORDER BY p.label LIMIT 1) "
            f"FROM {self.listings} l WHERE l.product_id = ANY(%s)",
            (list(map(str, product_ids)),))
        return {r[0]: {"title": r[1], "price": r[2], "category": r[3], "photo": r[4]}
                for r in rows}

    def text_counts(self) -> dict[str, int]:
        r = self._q(f"SELECT count(*), count(*) FILTER (WHERE coalesce(title,'') <> '' OR "
                    f"coalesce(description,'') <> ''), count(ltext) FROM {self.listings}")[0]
        x = self._q(f"SELECT count(xmodal) FROM {self.photos}")[0][0]
        return {"listings": int(r[0]), "with_text": int(r[1]), "listing_vectors": int(r[2]),
                "photo_text_vectors": int(x)}

    def text_paths(self) -> tuple[str, ...]:
        """The search paths this index can answer (see
        :func:`mkt.runtime.search.available_paths`)."""
        c = self.text_counts()
        paths = tuple(p for p, n in (("lexical", c["with_text"]),
                                     ("semantic", c["listing_vectors"]),
                                     ("crossmodal", c["photo_text_vectors"])) if n)
        if not paths:
            raise MktIndexError(f"{self.path}: index has no text to search")
        return paths

    def rank_paths(self, qvec: np.ndarray, text: str, depth: int,
                   paths: Sequence[str]) -> dict[str, list[tuple[str, str | None]]]:
        """Each path's ranked listings for one query, in SQL; the same shape as
        :func:`mkt.runtime.search.path_rankings` (listing key, best photo id or None)."""
        q = np.asarray(qvec, np.float32)
        out: dict[str, list[tuple[str, str | None]]] = {}
        if "lexical" in paths:
            toks = [t for t in dict.fromkeys(_WORD.findall(text)[:64]) if t.strip("_")]
            out["lexical"] = [] if not toks else [(r[0], None) for r in self._q(
                f"SELECT product_id FROM {self.listings}, to_tsquery('english', %s) q "
                "WHERE tsv @@ q ORDER BY ts_rank_cd(tsv, q) DESC, product_id LIMIT %s",
                (" | ".join(toks), int(depth)))]
        if "semantic" in paths:
            out["semantic"] = [(r[0], None) for r in self._q(
                f"SELECT product_id FROM {self.listings} WHERE ltext IS NOT NULL "
                "ORDER BY ltext <=> %s LIMIT %s", (q, int(depth)))]
        if "crossmodal" in paths:
            seen: dict[str, str] = {}
            for pid, key in self._q(
                    f"SELECT id, product_id FROM {self.photos} WHERE xmodal IS NOT NULL "
                    "ORDER BY xmodal <=> %s LIMIT %s", (q, int(depth) * 8)):
                seen.setdefault(key or f"\0{pid}", pid)
                if len(seen) >= depth:
                    break
            out["crossmodal"] = list(seen.items())
        return out

    def fts(self, match: str, k: int = 50) -> list[tuple[str, float]]:
        """Not FTS5: listings matching ``match``'s words (``ts_rank_cd``, best first)."""
        toks = [t for t in dict.fromkeys(_WORD.findall(match)) if t.strip("_")]
        if not toks:
            return []
        return [(r[0], float(r[1])) for r in self._q(
            f"SELECT product_id, ts_rank_cd(tsv, q) FROM {self.listings}, "
            "to_tsquery('english', %s) q WHERE tsv @@ q ORDER BY 2 DESC LIMIT %s",
            (" | ".join(toks), int(k)))]

    def listing_texts(self, missing_only: bool = True) -> dict[str, str]:
        where = " WHERE ltext IS NULL" if missing_only else ""
        out = {}
        for pid, t, d in self._q(f"SELECT product_id, title, description FROM "
                                 f"{self.listings}{where} ORDER BY product_id"):
            txt = listing_text(t, d)
            if txt:
                out[pid] = txt
        return out

    def set_listing_vectors(self, product_ids: Sequence[str], vectors: np.ndarray) -> int:
        v = np.asarray(vectors, np.float32)
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(f"UPDATE {self.listings} SET ltext=%s WHERE product_id=%s",
                            [(v[i], str(p)) for i, p in enumerate(product_ids)])
            self._bump(cur)
        return len(product_ids)

    # -- writes -----------------------------------------------------------------------------
    def _bump(self, cur: Any) -> None:
        cur.execute(f"UPDATE {REGISTRY} SET version = version + 1, updated = now() "
                    "WHERE name=%s", (self.name,))

    def add(self, ids: Sequence[str], vectors: np.ndarray,
            meta: Sequence[dict[str, Any]] | None = None,
            text_vectors: np.ndarray | None = None) -> int:
        """Add or replace photos (an existing id is replaced), their listings too; one
        transaction. Returns how many were written."""
        v = np.asarray(vectors, np.float32)
        if v.ndim != 2 or v.shape != (len(ids), self.dim):
            raise MktIndexError(f"{self.path}: expected vectors [{len(ids)}, {self.dim}], got "
                                f"{list(v.shape)}")
        meta = list(meta) if meta is not None else [{} for _ in ids]
        rows = []
        for i, pid in enumerate(ids):
            m = meta[i] or {}
            x = None if text_vectors is None else text_vectors[i]
            x = None if x is None or not np.all(np.isfinite(x)) else x
            rows.append((str(pid), m.get("product_id"), m.get("title"), m.get("price"),
                         m.get("category"), m.get("location"), m.get("path"),
                         m.get("description"), v[i], _vec(x)))
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(f"LOCK TABLE {self.photos} IN SHARE ROW EXCLUSIVE MODE")
            cur.execute(f"SELECT coalesce(max(label), -1) FROM {self.photos}")
            base = int(cur.fetchone()[0]) + 1
            cur.executemany(
                f"INSERT INTO {self.photos} (label, id, product_id, title, price, category, "
                "location, path, description, embedding, xmodal) VALUES "
                "(%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT (id) DO UPDATE SET "
                "product_id=EXCLUDED.product_id, title=EXCLUDED.title, price=EXCLUDED.price, "
                "category=EXCLUDED.category, location=EXCLUDED.location, path=EXCLUDED.path, "
                "description=EXCLUDED.description, embedding=EXCLUDED.embedding, "
                "xmodal=EXCLUDED.xmodal", [(base + j, *r) for j, r in enumerate(rows)])
            _upsert_listings(cur, self.listings, [r for r in rows if r[1]])
            self._bump(cur)
        return len(rows)

    def remove(self, ids: Iterable[str]) -> list[str]:
        """Remove photos by id (and listings left without a photo); returns ids not found."""
        want = list(dict.fromkeys(str(i) for i in ids))
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(f"DELETE FROM {self.photos} WHERE id = ANY(%s) RETURNING id", (want,))
            gone = {r[0] for r in cur.fetchall()}
            cur.execute(f"DELETE FROM {self.listings} l WHERE NOT EXISTS (SELECT 1 FROM "
                        f"{self.photos} p WHERE p.product_id = l.product_id)")
            if gone:
                self._bump(cur)
        return [i for i in want if i not in gone]

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> PgIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PgIndex({self.path!r}, name={self.name!r}, model={self.model_id})"


def _upsert_listings(cur: Any, table: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """Listings of photo rows ``(id, product_id, title, price, category, location, path,
    description, ...)``; a changed title/description clears the listing's text vector."""
    seen: dict[str, tuple[Any, ...]] = {}
    for r in rows:
        seen.setdefault(r[1], (r[1], r[2], r[3], r[4], r[7]))
    cur.executemany(
        f"INSERT INTO {table} AS l (product_id, title, price, category, description) "
        "VALUES (%s,%s,%s,%s,%s) ON CONFLICT (product_id) DO UPDATE SET title=EXCLUDED.title,"
        " price=EXCLUDED.price, category=EXCLUDED.category, description=EXCLUDED.description,"
        " ltext = CASE WHEN l.title IS NOT DISTINCT FROM EXCLUDED.title AND l.description IS "
        "NOT DISTINCT FROM EXCLUDED.description THEN l.ltext END", list(seen.values()))


def _registry_row(conn: Any, name: str) -> dict[str, Any] | None:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (REGISTRY,))
        if cur.fetchone()[0] is None:
            return None
        cur.execute(f"SELECT * FROM {REGISTRY} WHERE name=%s", (name,))
        r = cur.fetchone()
        return None if r is None else dict(zip([d.name for d in cur.description], r,
                                               strict=True))


def push_index(index: Any, url: str, *, credentials: Any = None, M: int = 16,
               ef_construction: int = 64, ef: int | None = None) -> PgIndex:
    """``mkt index push``: copy a local index (photo vectors, listing fields, listing text
    vectors, cross-modal vectors) into pgvector tables with an HNSW index, replacing an index
    of the same name in one transaction (a failed push leaves the old one intact)."""
    conn, name, shown = connect(url, credentials)
    psycopg, _ = _need()
    photos, listings = f"mkt_{name}_photos", f"mkt_{name}_listings"
    ids, _, vecs = index.photo_vectors()
    dim = int(index.dim)
    xids, xvec = index.photo_text_vectors() if index.has_text else ([], None)
    xpos = {p: i for i, p in enumerate(xids)}
    lpids, lvec = index.listing_vectors() if index.has_text else ([], None)
    lpos = {p: i for i, p in enumerate(lpids)}
    tdim = int(index.text_dim) if index.has_text else TEXT_DIM
    suffix = f"_{int(time.time() * 1000) % 10**10}"
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(f"CREATE TABLE IF NOT EXISTS {REGISTRY} (name text PRIMARY KEY, "
                        "schema_version int NOT NULL, model_id text NOT NULL, dim int NOT NULL,"
                        " text_dim int, m int, ef_construction int, ef int, version bigint "
                        "NOT NULL DEFAULT 1, source text, created timestamptz DEFAULT now(), "
                        "updated timestamptz DEFAULT now())")
            cur.execute(f"CREATE TABLE {photos}{suffix} (label bigint NOT NULL, id text "
                        "PRIMARY KEY, product_id text, title text, price double precision, "
                        "category text, location text, path text, description text, "
                        f"embedding vector({dim}) NOT NULL, xmodal vector({tdim}))")
            with cur.copy(f"COPY {photos}{suffix} (label, id, product_id, title, price, "
                          "category, location, path, description, embedding, xmodal) FROM "
                          "STDIN") as cp:
                for s in range(0, len(ids), 1000):
                    chunk = ids[s:s + 1000]
                    for j, pid in enumerate(chunk):
                        m = index.get(pid) or {}
                        x = xpos.get(pid)
                        cp.write_row((s + j, pid, m.get("product_id"), m.get("title"),
                                      m.get("price"), m.get("category"), m.get("location"),
                                      m.get("path"), m.get("description"), vecs[s + j],
                                      None if x is None else xvec[x]))
            cur.execute(f"CREATE INDEX ON {photos}{suffix} USING hnsw (embedding "
                        f"vector_cosine_ops) WITH (m = {int(M)}, ef_construction = "
                        f"{int(ef_construction)})")
            cur.execute(f"CREATE TABLE {listings}{suffix} (product_id text PRIMARY KEY, "
                        "title text, price double precision, category text, description "
                        f"text, ltext vector({tdim}), tsv tsvector GENERATED ALWAYS AS ("
                        "setweight(to_tsvector('english', coalesce(title, '')), 'A') || "
                        "setweight(to_tsvector('english', coalesce(description, '')), 'B')) "
                        "STORED)")
            cur.execute(f"INSERT INTO {listings}{suffix} (product_id, title, price, category,"
                        f" description) SELECT DISTINCT ON (product_id) product_id, title, "
                        f"price, category, description FROM {photos}{suffix} WHERE product_id"
                        " IS NOT NULL ORDER BY product_id, label")
            if lpids:
                cur.executemany(f"UPDATE {listings}{suffix} SET ltext=%s WHERE product_id=%s",
                                [(lvec[lpos[p]], p) for p in lpids])
            cur.execute(f"CREATE INDEX ON {listings}{suffix} USING gin (tsv)")
            cur.execute(f"CREATE INDEX ON {listings}{suffix} USING hnsw (ltext "
                        "vector_cosine_ops)")
            for t in (photos, listings):
                cur.execute(f"DROP TABLE IF EXISTS {t}")
                cur.execute(f"ALTER TABLE {t}{suffix} RENAME TO {t}")
            src = (index.info().get("provenance") or {}).get("source")
            cur.execute(
                f"INSERT INTO {REGISTRY} (name, schema_version, model_id, dim, text_dim, m, "
                "ef_construction, ef, source) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT "
                "(name) DO UPDATE SET schema_version=EXCLUDED.schema_version, model_id="
                "EXCLUDED.model_id, dim=EXCLUDED.dim, text_dim=EXCLUDED.text_dim, m=EXCLUDED.m,"
                " ef_construction=EXCLUDED.ef_construction, ef=EXCLUDED.ef, source="
                f"EXCLUDED.source, version={REGISTRY}.version + 1, updated=now()",
                (name, SCHEMA_VERSION, index.model_id, dim, tdim, int(M), int(ef_construction),
                 int(ef or getattr(index, "ef", 64)), src))
    except psycopg.Error as e:
        conn.close()
        from .dburl import DatabaseError

        raise DatabaseError(f"{shown}: push failed, the previous index is unchanged "
                            f"({' '.join(str(e).split())})") from None
    row = _registry_row(conn, name)
    return PgIndex(conn, name, shown, row or {})


__all__ = ["DEFAULT_NAME", "SCHEMA_VERSION", "PgIndex", "connect", "push_index", "split_url"]
