"""Photo sources for indexing: a marketplace dataset folder or a plain folder of photos.

A dataset folder has ``Products.csv``, ``Images.csv`` and ``images/<photo id>.jpg`` (the
format of ``../shared/data/marketplace``). It is read with the stdlib ``csv`` module (the
runtime has no pandas). Trap: descriptions contain bare ``\\r`` characters, also in unquoted
fields, which the csv module treats as line ends. Rows end with ``\\n`` and no field contains
``\\n``, so the file is split on ``\\n`` first and ``\\r`` is replaced by a space before parsing.

A plain folder: every photo file in it (not recursive), id = file stem, no metadata.
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CatalogueError
from .images import is_image_file

_TITLE_SUFFIX = re.compile(r"\s*\|\s*in\s+[^|]*\|\s*Gumtree\s*$", re.IGNORECASE)

#: Asking prices above this are treated as unknown (the data has absurd asks up to
#: £10,000,000). The one price rule: training, evaluation, baselines and ``mkt price`` use it.
MAX_VALID_PRICE = 100_000.0


@dataclass
class PhotoItem:
    """One photo to index, with the metadata of its listing when known."""

    id: str
    path: Path
    product_id: str | None = None
    title: str | None = None
    price: float | None = None
    category: str | None = None
    location: str | None = None
    description: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    #: the listing's place (:func:`mkt.runtime.location.place` of ``location``), when known
    lat: float | None = None
    lon: float | None = None

    def meta(self, root: Path | None = None) -> dict[str, Any]:
        """Row for the index's ``items`` table; ``path`` relative to ``root`` if inside it."""
        p = self.path
        if root is not None:
            try:
                p = self.path.resolve().relative_to(root.resolve())
            except ValueError:
                pass
        return {
            "product_id": self.product_id,
            "title": self.title,
            "price": self.price,
            "category": self.category,
            "location": self.location,
            "description": self.description,
            "path": p.as_posix(),
            "lat": self.lat,
            "lon": self.lon,
            "fsig": file_signature(self.path),
        }


def file_signature(path: str | os.PathLike) -> str | None:
    """``"<size>:<mtime_ns>"`` of a photo file (None if missing): how ``mkt index sync``
    tells a changed photo from an unchanged one without reading every file again."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


def clean_title(name: str) -> str:
    """``"Sofa | in Leeds, West Yorkshire | Gumtree"`` -> ``"Sofa"``."""
    return _TITLE_SUFFIX.sub("", name).strip()


def parse_price(text: Any) -> float | None:
    """``"£1,250.00"`` -> ``1250.0``; None when unparseable."""
    if text is None or (isinstance(text, float) and not math.isfinite(text)):
        return None
    t = re.sub(r"[£,\s]", "", str(text))
    if not t:
        return None
    try:
        v = float(t)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def valid_price(price: Any, max_price: float = MAX_VALID_PRICE) -> bool:
    """True when ``price`` is a known number above £0 and at most ``max_price`` (a bool is
    not a price)."""
    if isinstance(price, bool):
        return False
    try:
        p = float(price)
    except (TypeError, ValueError):
        return False
    return math.isfinite(p) and 0.0 < p <= max_price


def root_category(path: Any) -> str:
    """``"Home & Garden / Garden & Patio / ..."`` -> ``"Home & Garden"``."""
    return str(path or "").split(" / ", 1)[0].strip()


def split_location(location: Any) -> tuple[str, str]:
    """``"Wokingham, Berkshire"`` -> (town, county); a location without a comma is all town."""
    parts = [p.strip() for p in str(location or "").split(",")]
    town = parts[0] if parts else ""
    county = ", ".join(parts[1:]) if len(parts) > 1 else ""
    return town, county


def read_csv_rows(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read one of the dataset CSVs into dicts (header row = keys; the leading unnamed
    index column is kept under the key ``""``)."""
    p = Path(path)
    try:
        with open(p, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise CatalogueError(f"{p}: cannot read ({e})") from None
    lines = [ln.replace("\r", " ") for ln in text.split("\n") if ln.strip()]
    try:
        rows = list(csv.reader(lines))
    except csv.Error as e:
        raise CatalogueError(f"{p}: malformed CSV ({e})") from None
    if not rows:
        raise CatalogueError(f"{p}: empty CSV")
    header = rows[0]
    out = []
    for i, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise CatalogueError(f"{p}: line {i}: {len(r)} fields, header has {len(header)}")
        out.append(dict(zip(header, r, strict=True)))
    return out


def is_dataset_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / "Products.csv").is_file() and (p / "Images.csv").is_file()


def read_products(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """``Products.csv`` -> ``{product_id: {title, price, category, category_path, location}}``."""
    p = Path(folder) / "Products.csv"
    rows = read_csv_rows(p)
    need = {"id", "product_name", "category", "price", "location"}
    if rows and not need <= set(rows[0]):
        raise CatalogueError(f"{p}: missing columns {sorted(need - set(rows[0]))}")
    out = {}
    for r in rows:
        out[r["id"]] = {
            "title": clean_title(r["product_name"]),
            "description": " ".join(r.get("product_description", "").split()) or None,
            "price": parse_price(r["price"]),
            "category": root_category(r["category"]),
            "category_path": r["category"],
            "location": r["location"].strip() or None,
        }
    return out


def iter_dataset(folder: str | os.PathLike) -> Iterator[PhotoItem]:
    """Photos of a dataset folder in ``Images.csv`` order, with their listing's metadata.
    Photos whose file is missing are still yielded (the indexer reports them as bad)."""
    d = Path(folder)
    products = read_products(d)
    rows = read_csv_rows(d / "Images.csv")
    if rows and not {"id", "product_id"} <= set(rows[0]):
        raise CatalogueError(f"{d / 'Images.csv'}: needs columns id, product_id")
    for r in rows:
        pid = r["product_id"]
        prod = products.get(pid, {})
        yield PhotoItem(
            id=r["id"],
            path=d / "images" / f"{r['id']}.jpg",
            product_id=pid,
            title=prod.get("title"),
            price=prod.get("price"),
            category=prod.get("category"),
            location=prod.get("location"),
            description=prod.get("description"),
        )


def iter_folder(folder: str | os.PathLike) -> Iterator[PhotoItem]:
    """Photo files directly in ``folder`` (sorted), id = file stem, no metadata.

    Anything with a photo extension that is not a directory is yielded, also a broken or
    looping symlink: the indexer then reports it as bad instead of skipping it silently."""
    d = Path(folder)
    for p in sorted(d.iterdir()):
        if is_image_file(p) and not p.is_dir():
            yield PhotoItem(id=p.stem, path=p)


def iter_source(source: str | os.PathLike) -> list[PhotoItem]:
    """Everything to index from ``source``: a dataset folder, a plain folder, or a photo."""
    s = Path(source)
    if s.is_dir():
        items = list(iter_dataset(s) if is_dataset_dir(s) else iter_folder(s))
    elif s.is_file():
        items = [PhotoItem(id=s.stem, path=s)]
    elif s.is_symlink():
        raise CatalogueError(f"{s}: broken symbolic link (missing target or a link loop)")
    else:
        raise CatalogueError(f"{s}: no such file or directory")
    return items


def with_places(items: Iterable[PhotoItem]) -> Iterator[PhotoItem]:
    """The items with ``lat``/``lon`` from their ``location`` (the packaged gazetteer)."""
    from .location import place

    for it in items:
        if it.location and it.lat is None:
            got = place(it.location)
            if got is not None:
                it.lat, it.lon = got[0], got[1]
        yield it


def open_source(
    source: str | os.PathLike,
    *,
    products_table: str = "products",
    images_table: str = "images",
    photos: str | os.PathLike | None = None,
    path_column: str | None = None,
    credentials: str | os.PathLike | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> Iterable[PhotoItem]:
    """The one entry point for "photos to index or embed": a database URL (SQLAlchemy:
    ``postgresql+psycopg://user@host/db``, ``sqlite:///listings.db``, MySQL/MariaDB; read
    by :mod:`mkt.runtime.sql_source`, streamed), a dataset folder, a plain folder or a photo.
    Every item carries its place (``lat``/``lon``). The table/photo options only apply to a
    database; ``on_warning`` gets one line per row kept with a problem (a NULL or garbage
    price), default: logged (``logging`` ``mkt``)."""
    from .dburl import is_db_url

    if is_db_url(source):
        from .sql_source import iter_sql

        items: Iterable[PhotoItem] = iter_sql(
            str(source), products_table=products_table, images_table=images_table,
            photos=photos, path_column=path_column, credentials=credentials,
            on_warning=on_warning)
    else:
        items = iter_source(source)
    return with_places(items)


__all__ = [
    "MAX_VALID_PRICE",
    "PhotoItem",
    "clean_title",
    "file_signature",
    "open_source",
    "with_places",
    "is_dataset_dir",
    "iter_dataset",
    "iter_folder",
    "iter_source",
    "parse_price",
    "read_csv_rows",
    "read_products",
    "root_category",
    "split_location",
    "valid_price",
]
