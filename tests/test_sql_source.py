"""Listings from a database: ``mkt index build URL``, ``mkt index sync URL``, ``mkt data
clean --src URL``, against a REAL PostgreSQL (the ``postgres`` fixture: scram password) and
SQLite; bad input (wrong password, unreachable host, missing table/column, NULL and garbage
prices, a photo without a file); the password never in any output or file."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import jlines, run

pytest.importorskip("sqlalchemy")

from benchmarks.sql_load import load  # noqa: E402
from mkt.runtime.catalogue import read_csv_rows  # noqa: E402
from mkt.runtime.dburl import redact  # noqa: E402
from mkt.runtime.index import Index  # noqa: E402


def _with_pw(url: str, pw: str) -> str:
    return url.replace("mkt@", f"mkt:{pw}@", 1)


@pytest.fixture()
def photos(tmp_path: Path, dataset_dir: Path) -> Path:
    """A private copy of the fixture photos (the tests change files)."""
    d = tmp_path / "photos"
    shutil.copytree(dataset_dir / "images", d)
    return d


def _sql(engine_url: str, *stmts: tuple[str, dict]) -> None:
    import sqlalchemy as sa

    eng = sa.create_engine(engine_url)
    with eng.begin() as c:
        for q, params in stmts:
            c.execute(sa.text(q), params)
    eng.dispose()


def _vectors(index_dir: Path) -> dict[str, np.ndarray]:
    ids, _, vecs = Index.open(index_dir).photo_vectors()
    return dict(zip(ids, vecs, strict=True))


def test_postgres_build_then_sync(postgres, bundle_dir, dataset_dir, photos, tmp_path,
                                  monkeypatch):
    url = postgres.fresh_database("sync_pg")
    full = _with_pw(url, postgres.password)
    n_products, n_images = load(dataset_dir, full)
    monkeypatch.setenv("MKT_DB_PASSWORD", postgres.password)
    out = tmp_path / "idx"
    res = run("index", "build", url, "--photos", photos, "--out", out, "--bundle", bundle_dir)
    assert res.exit_code == 0, res.output
    idx = Index.open(out)
    assert idx.count == n_images
    assert idx.info()["provenance"]["source"] == redact(url)  # the URL, without password
    placed = idx.places(idx.ids())
    assert all(lat is not None for _, lat, _ in placed.values() if _)

    images = read_csv_rows(dataset_dir / "Images.csv")
    by_product: dict[str, list[str]] = {}
    for r in images:
        by_product.setdefault(r["product_id"], []).append(r["id"])
    multi = next(p for p, ids in by_product.items() if len(ids) == 2)  # metadata change
    gone = next(r["id"] for r in images if r["product_id"] != multi)  # deleted photo
    changed = next(r["id"] for r in images if r["product_id"] != multi and r["id"] != gone)
    donor = next(r["id"] for r in images if r["id"] not in (gone, changed)
                 and r["product_id"] != multi)
    before = _vectors(out)
    # a new listing with a new photo (its file: a copy of another photo)
    shutil.copy(photos / f"{donor}.jpg", photos / "new-photo-1.jpg")
    # the changed photo's file gets another photo's bytes
    shutil.copy(photos / f"{donor}.jpg", photos / f"{changed}.jpg")
    _sql(full,
         ("UPDATE products SET product_name = :t, price = :p WHERE id = :id",
          {"t": "Renamed lamp | in Leeds, West Yorkshire | Gumtree", "p": "£12.50",
           "id": multi}),
         ("DELETE FROM images WHERE id = :id", {"id": gone}),
         ("INSERT INTO products (id, product_name, category, product_description, price, "
          "location) VALUES ('new-product-1', 'Brand new chair | in Leeds | Gumtree', "
          "'Home & Garden / Chairs', 'A chair', '£20.00', 'Leeds, West Yorkshire')", {}),
         ("INSERT INTO images (id, product_id) VALUES ('new-photo-1', 'new-product-1')", {}))
    gen = idx.generation
    res = run("index", "sync", url, "--photos", photos, "--index", out, "--bundle", bundle_dir,
              "--json")
    assert res.exit_code == 0, res.output
    (rep,) = jlines(res.stdout)
    assert (rep["added"], rep["removed"], rep["reembedded"]) == (1, 1, 1), rep
    assert rep["updated"] == 2 + 1  # the two photos of the renamed listing + the new file
    assert rep["unchanged"] == n_images - 1 - 2 - 1
    idx = Index.open(out)
    assert idx.count == n_images  # -1 +1
    assert gone not in idx and "new-photo-1" in idx
    assert idx.generation <= gen + 2  # one sync commit (+ the listings' text vectors)
    for pid in by_product[multi]:
        row = idx.get(pid)
        assert row["title"] == "Renamed lamp" and row["price"] == 12.5
    after = _vectors(out)
    for pid in by_product[multi]:  # metadata only: the same vectors, not re-embedded
        assert np.array_equal(before[pid], after[pid])
    assert not np.allclose(before[changed], after[changed])  # the new file was embedded
    assert np.allclose(after[changed], after["new-photo-1"], atol=1e-5)  # same bytes
    lat, lon = idx.places(["new-photo-1"])["new-photo-1"][1:]
    assert abs(lat - 53.8) < 0.1 and abs(lon + 1.55) < 0.1  # Leeds

    res = run("index", "sync", url, "--photos", photos, "--index", out, "--bundle", bundle_dir,
              "--json")
    assert res.exit_code == 0, res.output
    (rep,) = jlines(res.stdout)
    assert rep["unchanged"] == n_images and rep["generation"] == idx.generation
    assert n_products > 0


def test_sqlite_path_column_null_prices_and_missing_file(bundle_dir, dataset_dir, photos,
                                                         tmp_path):
    db = tmp_path / "listings.db"
    url = f"sqlite:///{db}"
    load(dataset_dir, url)
    images = read_csv_rows(dataset_dir / "Images.csv")
    nofile = images[0]["id"]
    pids = list(dict.fromkeys(r["product_id"] for r in images
                              if r["product_id"] != images[0]["product_id"]))
    products = [{"id": p} for p in pids[:3]]  # three listings with photos on file
    (photos / f"{nofile}.jpg").unlink()
    _sql(url,
         ("ALTER TABLE images ADD COLUMN file TEXT", {}),
         ("UPDATE images SET file = id || '.jpg'", {}),
         ("UPDATE products SET price = NULL WHERE id = :id", {"id": products[0]["id"]}),
         ("UPDATE products SET price = 'call me' WHERE id = :id", {"id": products[1]["id"]}))
    out = tmp_path / "idx"
    res = run("index", "build", url, "--photos", photos, "--path-column", "file", "--out", out,
              "--bundle", bundle_dir)
    assert res.exit_code == 1, res.output  # one photo failed, the rest indexed
    err = res.stderr
    assert f"products row id={products[0]['id']}: price NULL" in err
    assert f"products row id={products[1]['id']}: price 'call me'" in err
    assert f"{nofile}.jpg" in err and "Traceback" not in err
    idx = Index.open(out)
    assert idx.count == len(images) - 1
    with_price0 = [i for i in idx.ids() if idx.get(i)["product_id"] == products[0]["id"]]
    assert with_price0 and all(idx.get(i)["price"] is None for i in with_price0)
    # sync after deleting a listing's photo rows: removed, nothing embedded
    gone = [r["id"] for r in images if r["product_id"] == products[2]["id"]]
    _sql(url, ("DELETE FROM images WHERE product_id = :p", {"p": products[2]["id"]}))
    res = run("index", "sync", url, "--photos", photos, "--path-column", "file", "--index", out,
              "--bundle", bundle_dir, "--json")
    assert res.exit_code == 1  # the photo without a file fails again, and only it
    (rep,) = jlines(res.stdout)
    assert (rep["removed"], rep["added"], rep["reembedded"], rep["errors"]) == \
        (len(gone), 0, 0, 1)
    assert all(g not in Index.open(out) for g in gone)


def test_data_clean_from_url(bundle_dir, dataset_dir, photos, tmp_path):
    pytest.importorskip("pandas")
    import pandas as pd

    url = f"sqlite:///{tmp_path / 'l.db'}"
    load(dataset_dir, url)
    res = run("data", "clean", "--src", url, "--photos", photos, "--out", tmp_path / "data",
              "--no-check-photos")
    assert res.exit_code == 0, res.output
    df = pd.read_parquet(tmp_path / "data" / "listings.parquet")
    photos_df = pd.read_parquet(tmp_path / "data" / "photos.parquet")
    products = read_csv_rows(dataset_dir / "Products.csv")
    images = read_csv_rows(dataset_dir / "Images.csv")
    assert sorted(df["product_id"]) == sorted(r["id"] for r in products if r["id"])
    assert sorted(photos_df["photo_id"]) == sorted(r["id"] for r in images)
    assert df["lat"].notna().all() and df["lon"].between(-9, 2).all()  # all placed, in the UK


# -- credentials: never printed, never written --------------------------------------------


def _grep_secret(secret: str, res, *dirs: Path) -> None:
    assert secret not in res.stdout and secret not in res.stderr, res.output
    for d in dirs:
        for f in d.rglob("*") if d.exists() else ():
            if f.is_file():
                assert secret.encode() not in f.read_bytes(), f


def test_password_never_in_output_or_files(postgres, bundle_dir, dataset_dir, photos, tmp_path,
                                           monkeypatch):
    url = postgres.fresh_database("creds_pg")
    pw = postgres.password
    load(dataset_dir, _with_pw(url, pw), limit=4)
    cred = tmp_path / "db.yaml"
    cred.write_text(f"user: mkt\npassword: {pw}\n")
    out = tmp_path / "idx"
    # success with a credentials file, then with MKT_DB_PASSWORD; sync too
    res = run("index", "build", url, "--photos", photos, "--out", out, "--bundle", bundle_dir,
              "--credentials", cred)
    assert res.exit_code == 0, res.output
    _grep_secret(pw, res, out)
    monkeypatch.setenv("MKT_DB_PASSWORD", pw)
    res = run("index", "sync", url, "--photos", photos, "--index", out, "--bundle", bundle_dir)
    assert res.exit_code == 0, res.output
    _grep_secret(pw, res, out)
    # a URL with the password in it (e.g. pasted): still never echoed or recorded
    res = run("index", "build", _with_pw(url, pw), "--photos", photos, "--out", out,
              "--bundle", bundle_dir, "--force")
    assert res.exit_code == 0, res.output
    _grep_secret(pw, res, out)

    wrong = "Wr0ng-pass-Kq93"
    unreachable = ("postgresql+psycopg://mkt@127.0.0.1:9/listings?connect_timeout=3")
    cases = [
        ("wrong password", url, {"MKT_DB_PASSWORD": wrong}, [], "password authentication"),
        ("unreachable", unreachable, {"MKT_DB_PASSWORD": pw}, [], "cannot connect"),
        ("missing table", url, {"MKT_DB_PASSWORD": pw}, ["--products-table", "nope"],
         "no table 'nope'"),
        ("missing column", url, {"MKT_DB_PASSWORD": pw}, ["--path-column", "file"],
         "has no column 'file'"),
    ]
    for what, u, env, extra, expect in cases:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        bad = tmp_path / f"bad-{what.replace(' ', '-')}"
        cmds = [["index", "build", u, "--out", bad]]
        if what in ("wrong password", "missing table"):
            cmds.append(["index", "sync", u, "--index", out])
        for cmd in cmds:
            res = run(*cmd, "--photos", photos, "--bundle", bundle_dir, *extra)
            assert res.exit_code == 2, (what, res.output)
            lines = [ln for ln in res.stderr.splitlines() if ln.startswith("mkt: error:")]
            assert len(lines) == 1 and expect in lines[0], (what, res.stderr)
            _grep_secret(pw, res, bad, out)
            _grep_secret(wrong, res, bad, out)
        assert not (bad / "index.json").exists()  # nothing half-written
    assert Index.open(out).count == len(Index.open(out).ids())


def test_postgres_rows_are_streamed(postgres, dataset_dir, photos, monkeypatch):
    """A server-side cursor: after the first photo, the server has been asked for rows of a
    cursor (FETCH FORWARD n, n <= the chunk), not for the whole result."""
    from mkt.runtime.catalogue import open_source
    from mkt.runtime.sql_source import iter_sql

    url = postgres.fresh_database("stream_pg")
    load(dataset_dir, _with_pw(url, postgres.password))
    monkeypatch.setenv("MKT_DB_PASSWORD", postgres.password)
    rows = iter_sql(url, photos=photos, chunk=5)
    first = next(rows)
    (q,) = eval(postgres.psql(  # noqa: S307 - our own fixture's repr of rows
        "SELECT query FROM pg_stat_activity WHERE usename = 'mkt' AND datname = 'stream_pg'"))
    m = re.match(r"FETCH FORWARD (\d+) FROM", q[0], re.I)
    assert m and int(m.group(1)) <= 5, q
    rest = list(rows)
    assert len(rest) + 1 == len(read_csv_rows(dataset_dir / "Images.csv"))
    items = list(open_source(url, photos=photos))  # the one entry point: same photos, placed
    assert [i.id for i in items] == [first.id] + [r.id for r in rest]
    assert all(i.lat is not None for i in items if i.location)


def test_sync_failing_mid_commit_leaves_the_index_as_it_was(dataset_dir, photos, tmp_path,
                                                             monkeypatch):
    """A sync is one generation: if writing it fails, the index on disk is exactly the old
    one (same generation, files, rows); the next sync then does all of it."""
    from mkt.runtime.catalogue import open_source
    from mkt.runtime.errors import MktIndexError
    from mkt.runtime.sync import sync_index

    class Dims:  # only removals and metadata below: nothing is embedded
        embedding_dim = 8

    url = f"sqlite:///{tmp_path / 'l.db'}"
    load(dataset_dir, url)
    items = list(open_source(url, photos=photos))
    d = tmp_path / "idx"
    rng = np.random.default_rng(0)
    Index.create(d, model_id="m", dim=8, ids=[i.id for i in items],
                 vectors=rng.normal(size=(len(items), 8)).astype(np.float32),
                 meta=[i.meta(photos) for i in items])
    first = items[0]
    _sql(url, ("UPDATE products SET product_name = 'Changed' WHERE id = :p",
               {"p": first.product_id}),
         ("DELETE FROM images WHERE id = :i", {"i": items[-1].id}))
    before = {p.name: p.read_bytes() for p in d.iterdir()}

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Index, "_refresh_listings", staticmethod(disk_full))
    with pytest.raises(MktIndexError, match="No space left"):
        sync_index(Dims(), Index.open(d), url, source_options={"photos": photos})
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    monkeypatch.undo()
    rep = sync_index(Dims(), Index.open(d), url, source_options={"photos": photos})
    assert (rep.removed, rep.updated, rep.added) == (1, sum(
        1 for i in items if i.product_id == first.product_id), 0)
    idx = Index.open(d)
    assert items[-1].id not in idx and idx.get(first.id)["title"] == "Changed"
