"""A deterministic train/val/test split by listing, stratified by root category.

Two photos of one listing on both sides of a split inflate accuracy, and the data reuses some
photos byte-for-byte across listings. So listings that share any photo bytes are joined into one
group first, and whole groups are assigned to a side.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def listing_groups(listings: pd.DataFrame, photos: pd.DataFrame) -> dict[str, str]:
    """Map each listing to a group id; listings sharing byte-identical photos share a group."""
    uf = _UnionFind()
    for pid in listings["product_id"]:
        uf.find(pid)
    for _, grp in photos.groupby("sha256"):
        pids = sorted(set(grp["product_id"]))
        for other in pids[1:]:
            uf.union(pids[0], other)
    return {pid: uf.find(pid) for pid in listings["product_id"]}


def make_split(
    listings: pd.DataFrame,
    photos: pd.DataFrame,
    seed: int = 0,
    val: float = 0.1,
    test: float = 0.15,
) -> pd.DataFrame:
    """Assign each listing to train/val/test; returns ``product_id, split`` sorted by id."""
    groups = listing_groups(listings, photos)
    cat = dict(zip(listings["product_id"], listings["category"], strict=False))
    group_members: dict[str, list[str]] = {}
    for pid, g in groups.items():
        group_members.setdefault(g, []).append(pid)
    # A group's stratum is its most common category (ties broken by name, deterministic).
    strata: dict[str, list[str]] = {}
    for g, members in sorted(group_members.items()):
        cats = sorted(cat[m] for m in members)
        top = max(sorted(set(cats)), key=cats.count)
        strata.setdefault(top, []).append(g)
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for _, gs in sorted(strata.items()):
        order = list(gs)
        rng.shuffle(order)
        n = sum(len(group_members[g]) for g in order)
        n_test, n_val = round(n * test), round(n * val)
        done = 0
        for g in order:
            side = "test" if done < n_test else "val" if done < n_test + n_val else "train"
            for pid in group_members[g]:
                assignment[pid] = side
            done += len(group_members[g])
    out = pd.DataFrame(sorted(assignment.items()), columns=["product_id", "split"])
    return out


def write_split(data: Path, seed: int = 0, val: float = 0.1, test: float = 0.15) -> dict:
    """Split the cleaned data dir in place: writes ``split.csv`` and ``split.json``."""
    data = Path(data)
    listings = pd.read_parquet(data / "listings.parquet")
    photos = pd.read_parquet(data / "photos.parquet")
    split = make_split(listings, photos, seed=seed, val=val, test=test)
    csv_path = data / "split.csv"
    split.to_csv(csv_path, index=False)
    digest = hashlib.sha256(csv_path.read_bytes()).hexdigest()
    merged = photos.merge(split, on="product_id")
    info = {
        "seed": seed,
        "fractions": {"train": round(1 - val - test, 6), "val": val, "test": test},
        "listings": split["split"].value_counts().reindex(SPLITS, fill_value=0).to_dict(),
        "photos": merged["split"].value_counts().reindex(SPLITS, fill_value=0).to_dict(),
        "sha256": digest,
    }
    info = json.loads(json.dumps(info, default=int))
    (data / "split.json").write_text(json.dumps(info, indent=2))
    return info


def load_split(data: Path) -> pd.DataFrame:
    """Photos of the cleaned data with their listing's split; fails clearly if not split yet."""
    data = Path(data)
    if not (data / "split.csv").exists():
        raise FileNotFoundError(f"{data}: no split.csv; run `mkt data split --data {data}` first")
    photos = pd.read_parquet(data / "photos.parquet")
    split = pd.read_csv(data / "split.csv", dtype=str)
    return photos.merge(split, on="product_id")
