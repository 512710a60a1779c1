"""Load a dataset folder's ``Products.csv`` / ``Images.csv`` into SQL tables ``products`` and
``images`` (the columns of the CSVs, all text), for trying ``mkt index build|sync URL``.

    python benchmarks/sql_load.py ../shared/data/marketplace sqlite:///listings.db
    MKT_DB_PASSWORD=... python benchmarks/sql_load.py DATASET postgresql+psycopg://me@host/db

``--replace`` drops the tables first. The password comes from ``MKT_DB_PASSWORD`` (or
``--credentials FILE.yaml``), never the command line. Tests use :func:`load` too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mkt.runtime.catalogue import read_csv_rows  # noqa: E402
from mkt.runtime.dburl import resolve_url  # noqa: E402

PRODUCT_COLS = ("id", "product_name", "category", "product_description", "price", "location")
IMAGE_COLS = ("id", "product_id")


def load(dataset: Path, url: str, *, credentials: Any = None, replace: bool = False,
         limit: int | None = None) -> tuple[int, int]:
    """Create ``products`` and ``images`` at ``url`` from ``dataset``'s CSVs; returns the
    row counts. ``limit``: only the first N listings (and their photos)."""
    import sqlalchemy as sa

    products = read_csv_rows(dataset / "Products.csv")[:limit]
    keep = {r["id"] for r in products}
    images = [r for r in read_csv_rows(dataset / "Images.csv") if r["product_id"] in keep]
    engine = sa.create_engine(resolve_url(url, credentials))
    md = sa.MetaData()
    tp = sa.Table("products", md, sa.Column("id", sa.String(64), primary_key=True),
                  *(sa.Column(c, sa.Text) for c in PRODUCT_COLS[1:]))
    ti = sa.Table("images", md, sa.Column("id", sa.String(64), primary_key=True),
                  sa.Column("product_id", sa.String(64), index=True))
    try:
        with engine.begin() as conn:
            if replace:
                md.drop_all(conn)
            md.create_all(conn)
            conn.execute(tp.insert(), [{c: r.get(c) for c in PRODUCT_COLS} for r in products])
            conn.execute(ti.insert(), [{c: r[c] for c in IMAGE_COLS} for r in images])
    finally:
        engine.dispose()
    return len(products), len(images)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("url")
    ap.add_argument("--credentials", type=Path, default=None)
    ap.add_argument("--replace", action="store_true")
    ap.add_argument("--limit", type=int, default=None)
    a = ap.parse_args()
    t0 = time.perf_counter()
    n_p, n_i = load(a.dataset, a.url, credentials=a.credentials, replace=a.replace,
                    limit=a.limit)
    print(f"loaded {n_p} products and {n_i} images in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
