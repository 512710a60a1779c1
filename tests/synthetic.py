"""A tiny synthetic marketplace dataset in the raw format, with the real data's traps.

Photos are flat colours with a category-dependent tint, so a model can learn something in a
few steps; descriptions carry bare ``\\r``; prices are text; some photos are byte-identical
copies reused across listings.
"""

from __future__ import annotations

import csv
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = ["Home & Garden / Furniture", "Phones, Mobile Phones & Telecoms / Phones",
              "Music, Films, Books & Games / Books"]


def make_raw_dataset(root: Path, listings_per_cat: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    products, images = [], []
    shared_photo: str | None = None
    n = 0
    for c, cat in enumerate(CATEGORIES):
        for i in range(listings_per_cat):
            pid = str(uuid.UUID(int=int(rng.integers(2**62)) * 7 + n))
            n += 1
            price = f"£{int(rng.integers(1, 3000)):,}.00"
            desc = f"Nice item {i}\rgood condition\r\nlocal pickup"
            products.append([pid, f"Item {c}-{i} | in Town{i}, County{c} | Gumtree", cat, desc,
                             price, f"Town{i}, County{c}"])
            for k in range(1 + (i % 2)):
                photo = str(uuid.UUID(int=int(rng.integers(2**62)) * 11 + n * 3 + k))
                base = np.zeros((224, 224, 3), np.uint8)
                base[..., c] = 160 + int(rng.integers(0, 60))
                base[40:180, 40 + 20 * k:180] = rng.integers(0, 255, 3, dtype=np.uint8)
                Image.fromarray(base).save(root / "images" / f"{photo}.jpg", quality=90)
                images.append([photo, pid])
                if c == 0 and i == 0 and k == 0:
                    shared_photo = photo
    # reuse listing 0's photo bytes in a listing of another category (a real trap)
    assert shared_photo is not None
    copy = str(uuid.UUID(int=999))
    (root / "images" / f"{copy}.jpg").write_bytes(
        (root / "images" / f"{shared_photo}.jpg").read_bytes())
    images.append([copy, products[-1][0]])
    # a listing whose description has no letters, and one with an empty location
    products.append([str(uuid.UUID(int=1001)), "Junk | in A, B | Gumtree", CATEGORIES[0],
                     "12345 !!!", "£5.00", "A, B"])
    products.append([str(uuid.UUID(int=1002)), "Thing | in A, B | Gumtree", CATEGORIES[1],
                     "a real description", "£5.00", ""])
    _write_csv(root / "Products.csv",
               ["id", "product_name", "category", "product_description", "price", "location"],
               products)
    _write_csv(root / "Images.csv", ["id", "product_id"], images)
    return root


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    # The original files: a leading unnamed index column, rows ending in \n, \r inside fields.
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["", *header])
        for i, r in enumerate(rows):
            w.writerow([i, *r])


def make_split_dataset(root: Path, listings_per_cat: int = 6, val: float = 0.2,
                       test: float = 0.2) -> Path:
    """The synthetic dataset cleaned and split (what training reads): its data folder."""
    from mkt.training.clean import clean
    from mkt.training.split import write_split

    clean(make_raw_dataset(root / "raw", listings_per_cat=listings_per_cat), root / "data")
    write_split(root / "data", seed=0, val=val, test=test)
    return root / "data"
