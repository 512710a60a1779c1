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


def listing_groups(listings: pd.DataFrame, photos: pd.DataFrame) -> dict[str, str]:
    """Map each listing to a group id; listings sharing byte-identical photos share a group.

    The groups are the connected components (scipy) of the graph whose nodes are listings and
    photo hashes, with an edge from each listing to each of its photos' hashes. A group's id
    is its smallest product id, so it does not depend on row order.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pids = sorted(set(listings["product_id"]))
    index = {pid: i for i, pid in enumerate(pids)}
    ph = photos[photos["product_id"].isin(index)]
    hashes = {h: len(pids) + i for i, h in enumerate(sorted(set(ph["sha256"])))}
    rows = [index[p] for p in ph["product_id"]]
    cols = [hashes[h] for h in ph["sha256"]]
    n = len(pids) + len(hashes)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    first: dict[int, str] = {}
    for pid in pids:  # sorted, so the first listing met is the smallest id
        first.setdefault(int(comp[index[pid]]), pid)
    return {pid: first[int(comp[index[pid]])] for pid in pids}


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
