"""Turn the raw marketplace CSVs and photos into one cleaned, typed table.

The raw files have real traps (bare ``\\r`` inside descriptions, prices as text, the site name
in every title, listings without photos, photos reused across listings). Every later step
reads the cleaned table instead of the raw CSVs, so those traps are handled exactly once.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mkt.runtime.catalogue import clean_title as strip_title
from mkt.runtime.catalogue import parse_price as _parse_price
from mkt.runtime.catalogue import root_category, split_location
from mkt.runtime.location import place

HAS_LETTER = re.compile(r"[A-Za-z]")


def parse_price(text: object) -> float:
    """The runtime's price parser (one rule), with NaN for "not a price" in a DataFrame."""
    v = _parse_price(text)
    return float("nan") if v is None else v


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip()) and bool(HAS_LETTER.search(value))


def read_products(path: Path) -> pd.DataFrame:
    """Read Products.csv; descriptions hold bare ``\\r``, so only ``\\n`` may end a row."""
    return pd.read_csv(path, lineterminator="\n", index_col=0, dtype=str, keep_default_na=False)


def read_images(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, lineterminator="\n", index_col=0, dtype=str, keep_default_na=False)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class CleanReport:
    """What the cleaning kept and dropped, by reason, so no row disappears silently."""

    listings_in: int = 0
    listings_kept: int = 0
    listings_dropped: dict[str, int] = field(default_factory=dict)
    listings_without_photo: int = 0
    photos_in: int = 0
    photos_kept: int = 0
    photos_dropped: dict[str, int] = field(default_factory=dict)
    bad_photos: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "listings_in": self.listings_in,
            "listings_kept": self.listings_kept,
            "listings_dropped": dict(self.listings_dropped),
            "listings_without_photo": self.listings_without_photo,
            "photos_in": self.photos_in,
            "photos_kept": self.photos_kept,
            "photos_dropped": dict(self.photos_dropped),
            "bad_photos": self.bad_photos[:100],
        }


def clean_listings(products: pd.DataFrame) -> tuple[pd.DataFrame, Counter]:
    """Typed, de-suffixed listings plus the count of rows dropped for each reason."""
    drops: Counter = Counter()
    rows = []
    seen: set[str] = set()
    for rec in products.to_dict("records"):
        pid = str(rec.get("id", "")).strip()
        desc = str(rec.get("product_description", "")).replace("\r", " ").strip()
        loc = str(rec.get("location", "")).replace("\r", " ").strip()
        cat_path = str(rec.get("category", "")).strip()
        if not pid:
            drops["missing_id"] += 1
            continue
        if pid in seen:
            drops["duplicate_id"] += 1
            continue
        if not cat_path:
            drops["missing_category"] += 1
            continue
        if not desc:
            drops["empty_description"] += 1
            continue
        if not _is_text(desc):
            drops["non_alphabetic_description"] += 1
            continue
        if not loc:
            drops["empty_location"] += 1
            continue
        if not _is_text(loc):
            drops["non_alphabetic_location"] += 1
            continue
        seen.add(pid)
        town, county = split_location(loc)
        where = place(loc)
        rows.append(
            {
                "product_id": pid,
                "title": strip_title(rec.get("product_name", "")),
                "description": re.sub(r"\s+", " ", desc),
                "category": root_category(cat_path),
                "category_path": cat_path,
                "price": parse_price(rec.get("price")),
                "location": loc,
                "town": town,
                "county": county,
                "lat": None if where is None else where[0],
                "lon": None if where is None else where[1],
            }
        )
    return pd.DataFrame(rows), drops


def _photo_problem(path: Path) -> str | None:
    from PIL import Image

    if not path.exists():
        return "missing_file"
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception:  # noqa: BLE001 - any decode failure means "unreadable"
        return "unreadable"
    return None


def _read_db(url: str, opts: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Products and images tables of a database URL as the CSVs' string frames (streamed
    reads, :mod:`mkt.runtime.sql_source`)."""
    from mkt.runtime.sql_source import read_images_sql, read_products_sql

    cred = opts.get("credentials")
    products = pd.DataFrame(list(read_products_sql(
        url, products_table=opts.get("products_table", "products"), credentials=cred)))
    images = pd.DataFrame(list(read_images_sql(
        url, images_table=opts.get("images_table", "images"), credentials=cred)),
        columns=["id", "product_id"])
    return products, images


def clean(src: Path | str, out: Path, check_photos: bool = True,
          **db_options: Any) -> CleanReport:
    """Clean ``src`` (Products.csv, Images.csv, images/; or a database URL with tables
    ``products``/``images`` and ``photos=DIR``, see :func:`mkt.runtime.catalogue.open_source`)
    into ``out``; returns the report."""
    from mkt.runtime.dburl import is_db_url, redact

    out = Path(out)
    db = is_db_url(src)
    if db:
        if not db_options.get("photos"):
            from mkt.runtime.dburl import DatabaseError

            raise DatabaseError(f"{redact(str(src))}: say where the photos are: --photos DIR")
        products, images = _read_db(str(src), db_options)
        img_dir = Path(db_options["photos"])
        source = {"src": redact(str(src)), "photos": str(img_dir.resolve())}
    else:
        src = Path(src)
        products = read_products(src / "Products.csv")
        images = read_images(src / "Images.csv")
        img_dir = src / "images"
        source = {"src": str(src.resolve())}
    out.mkdir(parents=True, exist_ok=True)
    report = CleanReport()
    report.listings_in = len(products)
    listings, drops = clean_listings(products)
    report.listings_dropped = dict(drops)

    report.photos_in = len(images)
    kept_ids = set(listings["product_id"]) if len(listings) else set()
    category_of = (dict(zip(listings["product_id"], listings["category"], strict=True))
                   if len(listings) else {})
    photo_rows = []
    pdrops: Counter = Counter()
    for rec in images.to_dict("records"):
        photo_id, pid = str(rec.get("id", "")).strip(), str(rec.get("product_id", "")).strip()
        if pid not in kept_ids:
            pdrops["listing_dropped_or_unknown"] += 1
            continue
        path = img_dir / f"{photo_id}.jpg"
        if check_photos:
            problem = _photo_problem(path)
        else:
            problem = None if path.exists() else "missing_file"
        if problem:
            pdrops[problem] += 1
            report.bad_photos.append({"photo_id": photo_id, "reason": problem})
            continue
        photo_rows.append(
            {"photo_id": photo_id, "product_id": pid, "category": category_of[pid],
             "sha256": file_sha256(path)}
        )
    photos = pd.DataFrame(photo_rows, columns=["photo_id", "product_id", "category", "sha256"])
    photos = photos.drop_duplicates("photo_id")
    report.photos_dropped = dict(pdrops)
    report.photos_kept = len(photos)

    by_listing = photos.groupby("product_id")["photo_id"].apply(list).to_dict()
    listings["photo_ids"] = [by_listing.get(pid, []) for pid in listings["product_id"]]
    report.listings_kept = len(listings)
    report.listings_without_photo = int(sum(1 for p in listings["photo_ids"] if not p))

    labels = sorted(listings["category"].unique().tolist())
    listings.to_parquet(out / "listings.parquet", index=False)
    photos.to_parquet(out / "photos.parquet", index=False)
    (out / "labels.json").write_text(json.dumps({"labels": labels}, indent=2, ensure_ascii=False))
    (out / "clean_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    (out / "source.json").write_text(json.dumps(source, indent=2))
    return report


def load_labels(data: Path) -> list[str]:
    return json.loads((Path(data) / "labels.json").read_text())["labels"]
