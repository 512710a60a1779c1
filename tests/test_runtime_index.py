"""mkt.runtime.index: on-disk layout, add/remove/search, crash safety, tamper and model checks."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import struct
from pathlib import Path

import numpy as np
import pytest

from mkt.runtime import index as mi
from mkt.runtime.catalogue import iter_source, read_csv_rows, read_products
from mkt.runtime.errors import MktIndexError
from mkt.runtime.index import Index

DIM = 16


def _vecs(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _make(path, n=20, **kw) -> Index:
    ids = [f"p{i}" for i in range(n)]
    meta = [{"product_id": f"L{i // 2}", "title": f"thing {i}", "price": i * 1.5,
             "category": "Home & Garden", "location": "Leeds", "path": f"images/p{i}.jpg"}
            for i in range(n)]
    return Index.create(path, model_id="m1", dim=DIM, ids=ids, vectors=_vecs(n), meta=meta, **kw)


def allowed_names(d) -> set[str]:
    """What may lie in an index folder after a write: index.json, the writer lock, the current
    generation's files and the previous generation's (kept for readers that have just read the
    old index.json)."""
    info = json.loads((d / "index.json").read_text())
    g = info["generation"]
    prev = {f"{k}-{g - 1}.{e}" for k, e in (("vectors", "hnsw"), ("meta", "sqlite"),
                                             ("ltext", "npy"), ("xmodal", "npy"))}
    return {"index.json", mi.LOCK_NAME, *info["files"], *prev}


def test_layout_and_roundtrip(tmp_path):
    d = tmp_path / "idx"
    _make(d, M=8, ef_construction=50, ef=20)
    info = json.loads((d / "index.json").read_text())
    assert info["schema_version"] == 2 and info["space"] == "cosine"
    assert (info["model_id"], info["dim"], info["count"]) == ("m1", DIM, 20)
    assert (info["M"], info["ef_construction"], info["ef"]) == (8, 50, 20)
    g = info["generation"]
    assert set(info["files"]) == {f"vectors-{g}.hnsw", f"meta-{g}.sqlite", f"ltext-{g}.npy",
                                  f"xmodal-{g}.npy"}
    assert sorted(p.name for p in d.iterdir()) == sorted(["index.json", "index.lock",
                                                          *info["files"]])
    con = sqlite3.connect(d / f"meta-{g}.sqlite")
    cols = [r[1] for r in con.execute("PRAGMA table_info(items)")]
    assert cols == ["label", "id", "product_id", "title", "price", "category", "location", "path",
                    "description", "xrow", "lat", "lon", "fsig"]
    con.close()

    again = Index.open(d, model_id="m1")
    assert again.count == 20 and again.get("p3")["title"] == "thing 3"
    hits = again.search(_vecs(20)[3], k=5)[0]
    assert hits[0].id == "p3" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].to_dict() == {"id": "p3", "score": pytest.approx(1.0, abs=1e-5),
                                 "product_id": "L1", "title": "thing 3", "price": 4.5,
                                 "category": "Home & Garden"}


def test_add_remove_search(tmp_path):
    d = tmp_path / "idx"
    idx = _make(d, n=10)
    g0 = idx.generation
    extra = _vecs(3, seed=5)
    assert idx.add(["n0", "n1", "n2"], extra) == 3
    assert idx.count == 13 and idx.generation == g0 + 1
    assert idx.search(extra[1], k=1)[0][0].id == "n1"
    assert idx.search(extra[1], k=1)[0][0].to_dict().keys() == {"id", "score"}  # no metadata

    missing = idx.remove(["n1", "p0", "nope"])
    assert missing == ["nope"]
    assert idx.count == 11 and "n1" not in idx and "p0" not in idx
    hits = Index.open(d).search(extra[1], k=11)[0]
    assert len(hits) == 11 and "n1" not in {h.id for h in hits}
    # only the current and the previous generation's files remain
    names = {p.name for p in d.iterdir()}
    assert names <= allowed_names(d)
    assert not any(n.startswith(f"vectors-{g0}.") for n in names)


def test_add_existing_id_replaces(tmp_path):
    idx = _make(tmp_path / "idx", n=5)
    v = _vecs(1, seed=9)
    idx.add(["p2"], v, [{"title": "new"}])
    assert idx.count == 5 and idx.get("p2")["title"] == "new"
    assert idx.search(v, k=1)[0][0].id == "p2"


def test_k_larger_than_count_and_empty(tmp_path):
    idx = _make(tmp_path / "a", n=4)
    assert [len(h) for h in idx.search(_vecs(2, seed=3), k=50)] == [4, 4]
    empty = Index.create(tmp_path / "b", model_id="m1", dim=DIM)
    assert empty.count == 0 and empty.search(_vecs(2), k=3) == [[], []]
    idx.remove(["p0", "p1", "p2"])
    assert len(idx.search(_vecs(1), k=10)[0]) == 1


def test_search_after_many_deletions_returns_all_live(tmp_path):
    idx = _make(tmp_path / "idx", n=200, M=4, ef=4)
    idx.remove([f"p{i}" for i in range(0, 200, 3)] + [f"p{i}" for i in range(1, 200, 3)])
    live = idx.count
    hits = idx.search(_vecs(1, seed=11), k=live)[0]
    assert sorted(h.id for h in hits) == sorted(idx.ids())


def test_identical_vector_is_returned_not_filtered(tmp_path):
    v = _vecs(3)
    idx = Index.create(tmp_path / "i", model_id="m1", dim=DIM, ids=["a", "b", "c"], vectors=v)
    idx.add(["a_copy"], v[:1])  # byte-identical photo -> identical embedding
    top = idx.search(v[0], k=2)[0]
    assert {h.id for h in top} == {"a", "a_copy"}


def test_crash_mid_write_keeps_old_index(tmp_path, monkeypatch):
    d = tmp_path / "idx"
    idx = _make(d, n=6)
    before = (d / "index.json").read_bytes()

    def boom(path, obj):
        # the new generation's files are written; die before index.json is swapped
        (path.with_name(path.name + ".tmp")).write_text('{"half": ')
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(mi, "_write_json_atomic", boom)
    with pytest.raises(MktIndexError, match="disk full"):
        idx.add(["x"], _vecs(1, seed=4))
    # in-memory object rolled back to what is on disk
    assert idx.count == 6 and "x" not in idx
    assert (d / "index.json").read_bytes() == before
    again = Index.open(d)
    assert again.count == 6 and "x" not in again

    monkeypatch.undo()
    idx.add(["y"], _vecs(1, seed=6))  # recovers; stale files from the failed write cleaned
    assert Index.open(d).count == 7
    names = {p.name for p in d.iterdir()}
    assert names <= allowed_names(d) and not any(n.endswith(".tmp") for n in names)


def test_crash_in_os_replace_keeps_old_index(tmp_path, monkeypatch):
    d = tmp_path / "idx"
    _make(d, n=6)
    idx = Index.open(d)

    def bad_replace(src, dst):
        raise OSError("power cut (simulated)")

    monkeypatch.setattr(mi.os, "replace", bad_replace)
    with pytest.raises(MktIndexError):
        idx.remove(["p1"])
    monkeypatch.undo()
    assert Index.open(d).count == 6 and "p1" in Index.open(d)


def test_tampered_byte_refused(tmp_path):
    d = tmp_path / "idx"
    _make(d)
    info = json.loads((d / "index.json").read_text())
    vec = d / next(n for n in info["files"] if n.endswith(".hnsw"))
    data = bytearray(vec.read_bytes())
    data[len(data) // 2] ^= 0x01
    vec.write_bytes(bytes(data))
    with pytest.raises(MktIndexError, match="sha256 mismatch"):
        Index.open(d)


def test_tampered_meta_and_missing_files_refused(tmp_path):
    d = tmp_path / "idx"
    _make(d)
    info = json.loads((d / "index.json").read_text())
    meta = d / next(n for n in info["files"] if n.endswith(".sqlite"))
    meta.unlink()
    with pytest.raises(MktIndexError, match="missing"):
        Index.open(d)
    with pytest.raises(MktIndexError, match="no index.json"):
        Index.open(tmp_path)
    with pytest.raises(MktIndexError, match="not found"):
        Index.open(tmp_path / "nowhere")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "index.json").write_text("{not json")
    with pytest.raises(MktIndexError, match="malformed"):
        Index.open(tmp_path / "junk")


def test_model_id_mismatch_refused(tmp_path):
    d = tmp_path / "idx"
    _make(d)
    with pytest.raises(MktIndexError, match="model"):
        Index.open(d, model_id="other")


def test_create_refuses_existing_unless_overwrite(tmp_path):
    d = tmp_path / "idx"
    _make(d, n=3)
    with pytest.raises(MktIndexError, match="already exists"):
        _make(d, n=3)
    idx = _make(d, n=5, overwrite=True)
    assert Index.open(d).count == 5 and idx.generation >= 1


def test_wrong_dim_refused(tmp_path):
    idx = _make(tmp_path / "i", n=3)
    with pytest.raises(MktIndexError):
        idx.add(["z"], np.ones((1, DIM + 1), np.float32))
    with pytest.raises(MktIndexError):
        idx.search(np.ones((1, DIM + 1), np.float32))


# -- hostile index folders ----------------------------------------------------------------------


def _rehash(d, info) -> None:
    """Recompute the sha256 of every listed file and rewrite index.json (an attacker's edit)."""
    import hashlib

    info["files"] = {n: hashlib.sha256((d / n).read_bytes()).hexdigest() for n in info["files"]}
    (d / "index.json").write_text(json.dumps(info))


def _refused(d, *needles) -> str:
    with pytest.raises(MktIndexError) as e:
        Index.open(d)
    msg = str(e.value)
    assert "\n" not in msg and str(d) in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


@pytest.fixture
def hostile(tmp_path):
    """(index folder, pristine copy of its index.json as a dict, restore())."""
    import shutil

    src = tmp_path / "src"
    _make(src, n=12)
    d = tmp_path / "idx"

    def restore():
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(src, d)
        return json.loads((d / "index.json").read_text())

    return d, restore


def test_hostile_file_names_refused(hostile, tmp_path):
    d, restore = hostile
    info = restore()
    g = info["generation"]
    meta = f"meta-{g}.sqlite"
    outside = tmp_path / "outside.sqlite"
    for bad in ("../outside.sqlite", str(outside), f"sub/{meta}", f"./{meta}", "..", ""):
        info = restore()
        (d / "sub").mkdir()
        (d / "sub" / meta).write_bytes((d / meta).read_bytes())
        outside.write_bytes((d / meta).read_bytes())
        info["files"][bad] = info["files"].pop(meta)
        (d / "index.json").write_text(json.dumps(info))
        _refused(d, "index.json")
    # a listed name that is a symlink to a byte-identical file outside: refused, not followed
    info = restore()
    outside.write_bytes((d / meta).read_bytes())
    (d / meta).unlink()
    (d / meta).symlink_to(outside)
    _refused(d, "symlink")
    # a FIFO in place of a listed file: refused at once (reading it would block forever)
    restore()
    (d / meta).unlink()
    os.mkfifo(d / meta)
    _refused(d, "not a regular file")


@pytest.mark.parametrize("key, value", [
    ("ef", -1), ("ef", 0), ("ef", 10**9), ("ef", "64"), ("ef", 1.5), ("ef", True), ("ef", None),
    ("M", 1), ("M", 10**6), ("ef_construction", 0), ("dim", 0), ("dim", -16), ("dim", 10**7),
    ("count", -1), ("count", 10**12), ("count", 13), ("generation", -1),
    ("generation", "0"), ("schema_version", True), ("model_id", ""), ("model_id", 7),
    ("files", []), ("provenance", "x"), ("text", None),
    ("text.dim", 0), ("text.dim", 5000), ("text.dim", 383), ("text.listings", -1),
    ("text.listings", "6"), ("text.listings", 7), ("text.listing_vectors", 1),
    ("text.photo_text_vectors", 2**40), ("text.photo_text_vectors", None),
])
def test_hostile_numbers_refused(hostile, key, value):
    d, restore = hostile
    info = restore()
    obj, k = (info["text"], key[5:]) if key.startswith("text.") else (info, key)
    if value is None:
        del obj[k]
    else:
        obj[k] = value
    (d / "index.json").write_text(json.dumps(info))
    _refused(d)


def test_hostile_index_json_shape_refused(hostile):
    d, restore = hostile
    info = restore()
    ij = d / "index.json"
    # deeply nested: one line, no RecursionError
    ij.write_text('{"provenance": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}")
    _refused(d, "nested")
    ij.write_text(json.dumps({**info, "provenance": {"x": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}}))
    _refused(d, "nested")
    # huge: refused without reading it all
    ij.write_text(json.dumps({**info, "provenance": {"note": "x" * (3 << 20)}}))
    _refused(d, "bytes")
    ij.write_bytes(b"\xff\xfe{}")
    _refused(d, "malformed")
    for body in ("[]", "null", "1e999", '"x"'):
        ij.write_text(body)
        _refused(d, "malformed")
    # an extra listed file, a bad hash string
    info = restore()
    ij.write_text(json.dumps({**info, "files": {**info["files"], "extra.bin": "0" * 64}}))
    _refused(d, "extra.bin")
    info = restore()
    name = next(iter(info["files"]))
    ij.write_text(json.dumps({**info, "files": {**info["files"], name: "zz"}}))
    _refused(d, "sha256")


@pytest.mark.parametrize("sql", [
    "DROP TABLE listings",
    "ALTER TABLE items RENAME COLUMN title TO name",
    "DROP TABLE listing_fts",
    "CREATE TRIGGER t AFTER DELETE ON items BEGIN DELETE FROM listings; END",
    "CREATE VIEW v AS SELECT 1",
    "UPDATE items SET label = label + 1000",
    "UPDATE items SET xrow = 99 WHERE label = 0",
    "UPDATE listings SET vrow = -1",
    "garbage",
    "DELETE FROM listing_fts_data",
    "UPDATE listing_fts_data SET block = x'00'",  # (sqlite's check passes this one)
])
def test_altered_and_rehashed_sqlite_refused(hostile, sql):
    """The metadata file edited (or replaced by garbage) and its sha256 recomputed: one
    MktIndexError line at open, never sqlite3.OperationalError later."""
    d, restore = hostile
    info = restore()
    meta = d / next(n for n in info["files"] if n.endswith(".sqlite"))
    if sql == "garbage":
        meta.write_bytes(b"SQLite format 3\0" + os.urandom(4096))
    else:
        con = sqlite3.connect(meta)
        if "vrow" in sql:  # give the listings a vector row to corrupt
            con.execute("UPDATE listings SET vrow = 0, vkey = 'x' WHERE lid = 1")
        con.execute(sql)
        con.commit()
        con.close()
    _rehash(d, info)
    if "block" not in sql:
        _refused(d, "cannot load index files")
        return
    idx = Index.open(d)  # every query works or fails with one MktIndexError line
    for call in (idx.ids, lambda: idx.search(_vecs(1), 5), idx.text_counts,
                 lambda: idx.fts("thing"), idx.listing_vectors, idx.photo_text_vectors):
        with contextlib.suppress(MktIndexError):
            call()


def test_altered_and_rehashed_vectors_header_refused(hostile):
    d, restore = hostile
    for field, value in ((1, 2**60), (2, 10**6), (3, 7)):  # max_elements, count, per-element
        info = restore()
        vec = d / next(n for n in info["files"] if n.endswith(".hnsw"))
        data = bytearray(vec.read_bytes())
        data[8 * field: 8 * field + 8] = struct.pack("<Q", value)
        vec.write_bytes(bytes(data))
        _rehash(d, info)
        _refused(d, "vectors")


def test_create_on_unwritable_path_fails_first_and_leaves_nothing(tmp_path, monkeypatch):
    """check_index_writable refuses a path that cannot be written before any work; a create
    that fails part-way leaves no files and no folder it made."""
    f = tmp_path / "a-file"
    f.write_text("x")
    for bad in (f / "idx", f, Path("/proc/mkt-no-such/idx")):
        with pytest.raises(MktIndexError, match="cannot write"):
            mi.check_index_writable(bad)
        with pytest.raises(MktIndexError):
            _make(bad)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            with pytest.raises(MktIndexError, match="cannot write"):
                mi.check_index_writable(ro / "new" / "idx")
        finally:
            ro.chmod(0o755)
    mi.check_index_writable(tmp_path / "new" / "deeper")  # fine, and leaves nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]

    bad_vecs = _vecs(3)
    bad_vecs[1, 0] = np.nan
    with pytest.raises(MktIndexError, match="NaN"):
        Index.create(tmp_path / "n" / "idx", model_id="m1", dim=DIM, ids=["a", "b", "c"],
                     vectors=bad_vecs)
    assert not (tmp_path / "n" / "idx").exists()

    def boom(path, obj):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(mi, "_write_json_atomic", boom)
    with pytest.raises(MktIndexError, match="disk full"):
        _make(tmp_path / "x")
    assert not (tmp_path / "x").exists()
    (tmp_path / "y").mkdir()  # a folder that was there before: kept, but emptied of our files
    with pytest.raises(MktIndexError, match="disk full"):
        _make(tmp_path / "y")
    assert [p.name for p in (tmp_path / "y").iterdir()] in ([], ["index.lock"])


def test_reader_starts_again_when_generations_swap_under_it(tmp_path, monkeypatch):
    """A reader has read index.json (generation g) when two writes commit g+1 and g+2 (g's
    files deleted): it opens g+2 instead of failing. A file missing while index.json stays the
    same is still refused."""
    d = tmp_path / "idx"
    _make(d, n=6)
    writer = Index.open(d)
    real = mi._open_member
    calls = []

    def racing(dd, name, ij):
        calls.append(name)
        if len(calls) == 1:  # between reading index.json and opening the first file
            writer.add(["a"], _vecs(1, seed=21))
            writer.add(["b"], _vecs(1, seed=22))
            assert not (d / name).exists()
        return real(dd, name, ij)

    monkeypatch.setattr(mi, "_open_member", racing)
    idx = Index.open(d)
    assert idx.count == 8 and "b" in idx and idx.generation == writer.generation
    monkeypatch.undo()
    info = json.loads((d / "index.json").read_text())
    (d / next(n for n in info["files"] if n.endswith(".npy"))).unlink()
    _refused(d, "missing")


def test_stale_writer_builds_on_the_latest_generation(tmp_path):
    """Two Index objects opened at the same generation both write: the second catches up
    under the lock instead of overwriting the first's change."""
    d = tmp_path / "idx"
    _make(d, n=6)
    one, two = Index.open(d), Index.open(d)
    one.add(["x"], _vecs(1, seed=31))
    assert two.remove(["p0", "x", "nope"]) == ["nope"]  # sees "x", added by the other
    two.add(["y"], _vecs(1, seed=32))
    again = Index.open(d)
    assert sorted(again.ids()) == sorted([f"p{i}" for i in range(1, 6)] + ["y"])
    assert again.search(_vecs(1, seed=32), 1)[0][0].id == "y"
    assert one.remove(["zz"]) == ["zz"] and Index.open(d).generation == again.generation


def test_session_ef_is_not_saved(tmp_path):
    idx = _make(tmp_path / "i", n=5, ef=20)
    idx.set_ef(200)
    idx.add(["z"], _vecs(1, seed=3))
    assert idx.ef == 200
    assert json.loads((tmp_path / "i" / "index.json").read_text())["ef"] == 20


# -- catalogue (dataset folders) --------------------------------------------------------------


def test_dataset_fixture_catalogue(dataset_dir):
    items = iter_source(dataset_dir)
    assert len(items) == len(read_csv_rows(dataset_dir / "Images.csv")) == 26
    assert all(it.path.is_file() for it in items)
    cats = {it.category for it in items}
    assert len(cats) == 13
    for it in items:
        assert it.title and "Gumtree" not in it.title
        assert isinstance(it.price, float)
    assert items[0].meta(dataset_dir)["path"].startswith("images/")


def test_real_products_csv_row_count():
    from pathlib import Path

    src = Path("/work/shared/data/marketplace")
    if not (src / "Products.csv").is_file():
        pytest.skip("shared data not available")
    products = read_products(src)
    assert len(products) == 6437
    assert len({p["category"] for p in products.values()}) == 13


def test_plain_folder_catalogue(fixture_photos):
    items = iter_source(fixture_photos[0].parent)
    assert [it.id for it in items] == [p.stem for p in fixture_photos]
    assert items[0].product_id is None and items[0].title is None


def test_catalogue_field_parsing():
    from mkt.runtime.catalogue import clean_title, parse_price, root_category

    assert clean_title("Sofa bed | in Leeds, West Yorkshire | Gumtree") == "Sofa bed"
    assert clean_title("A | B | in Town | Gumtree") == "A | B"
    assert parse_price("£1,250.00") == 1250.0 and parse_price("£0.00") == 0.0
    assert parse_price("") is None and parse_price("free") is None
    assert root_category("Music, Films, Books & Games / Books / Fiction") == (
        "Music, Films, Books & Games"
    )


def test_products_csv_bare_cr_in_unquoted_field(tmp_path):
    d = tmp_path / "ds"
    (d / "images").mkdir(parents=True)
    (d / "Products.csv").write_bytes(
        b",id,product_name,category,product_description,price,location\n"
        b"0,p1,\"Lamp | in Bath, Somerset | Gumtree\",Home & Garden / Lighting,"
        b"bright\rlamp\rno box,\"\xc2\xa31,250.00\",\"Bath, Somerset\"\n"
    )
    (d / "Images.csv").write_text(",id,product_id\n0,ph1,p1\n")
    (item,) = iter_source(d)
    assert (item.id, item.product_id, item.title, item.price, item.category, item.location) == (
        "ph1", "p1", "Lamp", 1250.0, "Home & Garden", "Bath, Somerset"
    )
