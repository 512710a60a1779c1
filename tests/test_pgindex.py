"""The shared pgvector index against a REAL PostgreSQL (pgserver + pgvector): push, similar,
search, add/remove, refusals, credentials never printed, recall vs exact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import build_index, jlines, run

pytest.importorskip("pgvector")


@pytest.fixture(scope="module")
def local_index(tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path,
                dataset_dir: Path) -> Path:
    return build_index(tmp_path_factory, bundle_dir, dataset_dir)


@pytest.fixture(scope="module")
def pg_url(postgres: Any, local_index: Path) -> str:
    url = postgres.fresh_database("scale_idx") + "&index=shop"
    mp = pytest.MonkeyPatch()
    mp.setenv("MKT_DB_PASSWORD", postgres.password)
    res = run("index", "push", str(local_index), url)
    mp.undo()
    assert res.exit_code == 0, res.stderr
    assert "pushed 26 photos" in res.stderr
    assert postgres.password not in res.stdout + res.stderr
    return url


@pytest.fixture(autouse=True)
def _password(postgres: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MKT_DB_PASSWORD", postgres.password)


def _ids(out: str) -> list[list[str]]:
    return [[h["id"] for h in r["results"]] for r in jlines(out)]


def test_similar_same_as_local_and_recall(pg_url: str, local_index: Path, bundle_dir: Path,
                                          dataset_dir: Path) -> None:
    from mkt.runtime.index import Index
    from mkt.runtime.pgindex import PgIndex

    photos = [str(p) for p in sorted((dataset_dir / "images").glob("*.jpg"))[:8]]
    args = ("--bundle", str(bundle_dir), "--json", "-k", "10")
    a = run("similar", *photos, "--index", str(local_index), *args)
    b = run("similar", *photos, "--index", pg_url, *args)
    assert a.exit_code == 0 and b.exit_code == 0, b.stderr
    la, lb = _ids(a.stdout), _ids(b.stdout)
    overlap = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(la, lb, strict=True)])
    assert overlap >= 0.9, overlap
    assert [x[0] for x in la] == [y[0] for y in lb]  # each photo finds itself first

    # recall@10 against exact search, both backends, all photos as queries
    local = Index.open(local_index)
    ids, _, vecs = local.photo_vectors()
    pg = PgIndex.open(pg_url)
    exact = pg.exact_search(vecs, 10)
    sims = vecs @ vecs.T
    exact_np = [[ids[j] for j in np.argsort(-s, kind="stable")[:10]] for s in sims]
    rec_pg = np.mean([len({h.id for h in hs} & set(e)) / 10
                      for hs, e in zip(pg.search(vecs, 10), exact_np, strict=True)])
    rec_local = np.mean([len({h.id for h in hs} & set(e)) / 10
                         for hs, e in zip(local.search(vecs, 10), exact_np, strict=True)])
    rec_seq = np.mean([len(set(x) & set(e)) / 10 for x, e in zip(exact, exact_np, strict=True)])
    print(f"recall@10 vs exact: pgvector {rec_pg:.3f}, hnswlib {rec_local:.3f}, "
          f"pg seq scan {rec_seq:.3f}")
    assert rec_seq >= 0.99 and rec_pg >= 0.95 and rec_local >= 0.95
    pg.close()
    local.close()


def test_search_text_same_as_local(pg_url: str, local_index: Path, bundle_dir: Path) -> None:
    args = ("--bundle", str(bundle_dir), "--json", "-k", "5")
    a = run("search", "sofa", "wooden table", "--index", str(local_index), *args)
    b = run("search", "sofa", "wooden table", "--index", pg_url, *args)
    assert a.exit_code == 0 and b.exit_code == 0, b.stderr
    for x, y in zip(jlines(a.stdout), jlines(b.stdout), strict=True):
        px = [h["product_id"] for h in x["results"]]
        py = [h["product_id"] for h in y["results"]]
        assert px[0] == py[0] and len(set(px) & set(py)) >= 3, (px, py)


def test_add_and_remove_on_pg(postgres: Any, local_index: Path, bundle_dir: Path,
                              fixture_photos: list[Path], tmp_path: Path) -> None:
    url = postgres.fresh_database("scale_rw")
    assert run("index", "push", str(local_index), url).exit_code == 0
    photo = tmp_path / "brand_new_photo.jpg"  # an id the index does not have yet
    photo.write_bytes(fixture_photos[0].read_bytes())
    res = run("index", "add", url, str(photo), "--bundle", str(bundle_dir))
    assert res.exit_code == 0, res.stderr
    assert "index now has 27" in res.stderr
    res = run("similar", str(photo), "--index", url, "--bundle", str(bundle_dir), "--json",
              "-k", "2")  # a copy of fixture_photos[0]: the two tie at cosine 1
    assert set(_ids(res.stdout)[0]) == {photo.stem, fixture_photos[0].stem}
    # the old rows are still there, and a push replaced nothing else
    res = run("index", "info", url, "--json")
    assert jlines(res.stdout)[0]["count"] == 27
    res = run("index", "remove", url, photo.stem, "nope")
    assert res.exit_code == 1 and "'nope'" in res.stderr and "now has 26" in res.stderr


def test_refusals_are_one_line(postgres: Any, pg_url: str, make_bundle: Any,
                               monkeypatch: pytest.MonkeyPatch, dataset_dir: Path) -> None:
    photo = str(sorted((dataset_dir / "images").glob("*.jpg"))[0])
    other = make_bundle(seed=3)
    res = run("similar", photo, "--index", pg_url, "--bundle", str(other))
    assert res.exit_code == 2 and "model" in res.stderr and len(res.stderr.splitlines()) == 1
    res = run("similar", photo, "--index", pg_url.replace("index=shop", "index=nosuch"))
    assert res.exit_code == 2 and "no index named 'nosuch'" in res.stderr
    monkeypatch.setenv("MKT_DB_PASSWORD", "wrong-password-xyz")
    res = run("similar", photo, "--index", pg_url)
    assert res.exit_code == 2 and "cannot connect" in res.stderr
    assert "wrong-password-xyz" not in res.stderr and postgres.password not in res.stderr


def test_failed_push_leaves_the_old_index(postgres: Any, pg_url: str, local_index: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A real failure half-way: a reader holds the old table, the push cannot drop it within
    its lock_timeout; everything it did is rolled back."""
    from mkt.runtime.pgindex import connect

    before = jlines(run("index", "info", pg_url, "--json").stdout)[0]
    conn, _, _ = connect(pg_url)
    conn.autocommit = False
    with conn.cursor() as cur:  # a transaction reading the table keeps its lock until rollback
        cur.execute("SELECT count(*) FROM mkt_shop_photos")
    monkeypatch.setenv("PGOPTIONS", "-c lock_timeout=300")
    try:
        res = run("index", "push", str(local_index), pg_url)
    finally:
        conn.rollback()
        conn.close()
    assert res.exit_code == 2 and "previous index is unchanged" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    monkeypatch.delenv("PGOPTIONS")
    after = jlines(run("index", "info", pg_url, "--json").stdout)[0]
    assert after["count"] == before["count"] == 26 and after["version"] == before["version"]
    tables = postgres.psql("SELECT tablename FROM pg_tables WHERE tablename LIKE 'mkt_shop%' "
                           "ORDER BY 1", database="scale_idx")
    assert tables == "[('mkt_shop_listings',), ('mkt_shop_photos',)]", tables


def test_serve_on_pgvector(pg_url: str, bundle_dir: Path, fixture_photos: list[Path]) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mkt.serve import create_app

    with TestClient(create_app(bundle_dir, pg_url)) as c:
        h = c.get("/health").json()
        assert h["index"]["count"] == 26 and h["index"]["model_id"] == h["model_id"]
        r = c.post("/similar", params={"k": 3},
                   files={"file": ("q.jpg", fixture_photos[0].read_bytes(), "image/jpeg")})
        assert r.status_code == 200, r.text
        assert len(r.json()["results"]) == 3
        r = c.post("/search", json={"query": "sofa", "k": 3})
        assert r.status_code == 200 and r.json()["results"], r.text
