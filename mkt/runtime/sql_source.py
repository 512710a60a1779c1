"""Listings from a SQL database (PostgreSQL, SQLite, MySQL/MariaDB via SQLAlchemy): the
reader behind ``mkt index build|sync URL`` and ``mkt data clean --src URL``.

Why SQLAlchemy Core: one reader for every database a catalogue lives in, identifiers quoted
for us, and streaming (``stream_results`` + ``yield_per``: a server-side cursor on
PostgreSQL and MySQL) so a million-row table is read in chunks of :data:`CHUNK`, never at
once.

The tables have the columns of the dataset's CSVs: ``products(id, product_name, category,
product_description, price, location)`` and ``images(id, product_id)``
(``--products-table``/``--images-table`` to rename; ``schema.table`` works). Photos are
``--photos DIR/<image id>.jpg``, or the images table's ``--path-column`` (a relative path is
relative to ``--photos`` when given). Rows are cleaned with the dataset reader's rules
(:mod:`mkt.runtime.catalogue`): a NULL or garbage price becomes ``None`` with one warning line
naming the table and row; a photo whose listing is missing keeps no metadata.

Credentials: :mod:`mkt.runtime.dburl` (``MKT_DB_PASSWORD`` or ``--credentials FILE.yaml``).
Every error is one :class:`~mkt.runtime.dburl.DatabaseError` line with the URL redacted and
the password scrubbed from the driver's message.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .catalogue import PhotoItem, clean_title, parse_price, root_category
from .dburl import DatabaseError, password_of, redact, resolve_url, scrub

CHUNK = 1000  # rows fetched a round trip
PRODUCT_COLUMNS = ("id", "product_name", "category", "price", "location")
IMAGE_COLUMNS = ("id", "product_id")
_log = logging.getLogger("mkt")


def _sqlalchemy() -> Any:
    try:
        import sqlalchemy
    except ImportError:
        raise DatabaseError("database sources need the 'sql' extra: pip install 'mkt[sql]'"
                            ) from None
    return sqlalchemy


def _reason(e: BaseException, secret: str | None) -> str:
    """The driver's first message line, password scrubbed, without SQLAlchemy's
    background-link footer."""
    orig = getattr(e, "orig", None) or e
    text = str(orig).strip().splitlines()
    line = next((ln for ln in text if ln.strip()), type(orig).__name__)
    return scrub(line, secret)[:300]


def connect(url: str, credentials: str | os.PathLike | None = None) -> tuple[Any, Any, str]:
    """``(engine, connection, redacted url)`` for ``url`` (password from
    ``MKT_DB_PASSWORD`` or ``credentials``); :class:`DatabaseError` when it cannot connect."""
    sa = _sqlalchemy()
    shown = redact(url)
    full = resolve_url(url, credentials)
    secret = password_of(full)
    try:
        engine = sa.create_engine(full, pool_pre_ping=False)
    except Exception as e:  # bad dialect/driver name
        raise DatabaseError(f"{shown}: cannot use this database URL ({_reason(e, secret)})"
                            ) from None
    try:
        conn = engine.connect()
    except Exception as e:
        engine.dispose()
        raise DatabaseError(f"{shown}: cannot connect ({_reason(e, secret)})") from None
    return engine, conn, shown


def _table(sa: Any, conn: Any, name: str, need: tuple[str, ...], shown: str) -> Any:
    schema, _, tname = name.rpartition(".")
    try:
        t = sa.Table(tname, sa.MetaData(), schema=schema or None, autoload_with=conn)
    except sa.exc.NoSuchTableError:
        raise DatabaseError(f"{shown}: no table {name!r} (rename with --products-table / "
                            "--images-table)") from None
    missing = [c for c in need if c not in t.c]
    if missing:
        raise DatabaseError(f"{shown}: table {name!r} has no column "
                            f"{', '.join(repr(c) for c in missing)} (has "
                            f"{', '.join(t.c.keys())})")
    return t


def _join_on(sa: Any, pid: Any, fk: Any) -> Any:
    """``products.id = images.product_id``; compared as text only when the two columns'
    types differ (a cast on both sides would keep PostgreSQL from using an index)."""
    try:
        same = pid.type.python_type is fk.type.python_type
    except NotImplementedError:
        same = False
    return pid == fk if same else sa.cast(pid, sa.String) == sa.cast(fk, sa.String)


def iter_sql(
    url: str,
    *,
    products_table: str = "products",
    images_table: str = "images",
    photos: str | os.PathLike | None = None,
    path_column: str | None = None,
    credentials: str | os.PathLike | None = None,
    on_warning: Callable[[str], None] | None = None,
    chunk: int = CHUNK,
) -> Iterator[PhotoItem]:
    """Every photo row of ``images_table`` joined to its listing in ``products_table``, as
    :class:`~mkt.runtime.catalogue.PhotoItem` s, streamed in chunks (ordered by image id).

    Connection, table and column problems raise :class:`DatabaseError` before the first
    item. A photo without a file is still yielded (the indexer reports it); a row whose
    ``--path-column`` is NULL is skipped with a warning."""
    if photos is None and path_column is None:
        raise DatabaseError(f"{redact(url)}: say where the photos are: --photos DIR "
                            "(files <image id>.jpg) or --path-column COLUMN")
    warn = on_warning or _log.warning
    root = Path(photos) if photos is not None else None
    if root is not None and not root.is_dir():
        raise DatabaseError(f"{root}: --photos is not a folder")
    sa = _sqlalchemy()
    engine, conn, shown = connect(url, credentials)
    secret = password_of(resolve_url(url, credentials))
    try:
        products = _table(sa, conn, products_table, PRODUCT_COLUMNS, shown)
        images = _table(sa, conn, images_table,
                        IMAGE_COLUMNS + ((path_column,) if path_column else ()), shown)
        p, i = products.c, images.c
        cols = [i.id.label("image_id"), i.product_id.label("product_id"),
                p.product_name, p.category, p.price, p.location]
        if "product_description" in p:
            cols.append(p.product_description)
        if path_column:
            cols.append(i[path_column].label("photo_path"))
        q = (sa.select(*cols)
             .select_from(images.outerjoin(products, _join_on(sa, p.id, i.product_id)))
             .order_by(i.id))
        warned: set[str] = set()
        try:
            result = conn.execution_options(stream_results=True, yield_per=chunk).execute(q)
            for row in result:
                m = row._mapping
                iid, pid = str(m["image_id"]), m["product_id"]
                pid = None if pid is None else str(pid)
                if path_column:
                    raw = m["photo_path"]
                    if raw is None or not str(raw).strip():
                        warn(f"{images_table} row id={iid}: {path_column} is NULL; photo "
                             "skipped")
                        continue
                    path = Path(str(raw))
                    if root is not None and not path.is_absolute():
                        path = root / path
                else:
                    assert root is not None
                    path = root / f"{iid}.jpg"
                known = m["product_name"] is not None or m["category"] is not None
                price = parse_price(m["price"])
                if known and price is None and pid not in warned:
                    warned.add(str(pid))
                    what = "NULL" if m["price"] is None else repr(str(m["price"])[:40])
                    warn(f"{products_table} row id={pid}: price {what} is not a price; "
                         "kept without one")
                desc = m.get("product_description")
                loc = m["location"]
                yield PhotoItem(
                    id=iid,
                    path=path,
                    product_id=pid,
                    title=clean_title(str(m["product_name"])) if m["product_name"] else None,
                    price=price,
                    category=root_category(m["category"]) or None if known else None,
                    location=str(loc).strip() or None if loc is not None else None,
                    description=" ".join(str(desc).split()) or None if desc else None,
                )
        except sa.exc.SQLAlchemyError as e:
            raise DatabaseError(f"{shown}: reading {images_table}/{products_table} failed "
                                f"({_reason(e, secret)})") from None
    finally:
        conn.close()
        engine.dispose()


def read_products_sql(
    url: str,
    *,
    products_table: str = "products",
    credentials: str | os.PathLike | None = None,
    chunk: int = CHUNK,
) -> Iterator[dict[str, Any]]:
    """The raw rows of ``products_table`` as dicts with the dataset CSV's columns (for
    ``mkt data clean --src URL``), streamed."""
    sa = _sqlalchemy()
    engine, conn, shown = connect(url, credentials)
    secret = password_of(resolve_url(url, credentials))
    try:
        t = _table(sa, conn, products_table, PRODUCT_COLUMNS, shown)
        try:
            res = conn.execution_options(stream_results=True, yield_per=chunk).execute(
                sa.select(t).order_by(t.c.id))
            for row in res:
                yield {k: ("" if v is None else str(v)) for k, v in row._mapping.items()}
        except sa.exc.SQLAlchemyError as e:
            raise DatabaseError(f"{shown}: reading {products_table} failed "
                                f"({_reason(e, secret)})") from None
    finally:
        conn.close()
        engine.dispose()


def read_images_sql(
    url: str,
    *,
    images_table: str = "images",
    credentials: str | os.PathLike | None = None,
    chunk: int = CHUNK,
) -> Iterator[dict[str, Any]]:
    """The rows of ``images_table`` (``id``, ``product_id``) as dicts of strings, streamed."""
    sa = _sqlalchemy()
    engine, conn, shown = connect(url, credentials)
    secret = password_of(resolve_url(url, credentials))
    try:
        t = _table(sa, conn, images_table, IMAGE_COLUMNS, shown)
        try:
            res = conn.execution_options(stream_results=True, yield_per=chunk).execute(
                sa.select(t.c.id, t.c.product_id).order_by(t.c.id))
            for row in res:
                yield {"id": str(row[0]), "product_id": "" if row[1] is None else str(row[1])}
        except sa.exc.SQLAlchemyError as e:
            raise DatabaseError(f"{shown}: reading {images_table} failed "
                                f"({_reason(e, secret)})") from None
    finally:
        conn.close()
        engine.dispose()


__all__ = ["CHUNK", "connect", "iter_sql", "read_images_sql", "read_products_sql"]
