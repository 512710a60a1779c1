"""mkt.runtime.search + the text side of mkt.runtime.index: lexical/semantic/cross-modal text
search fused by RRF, hostile FTS5 input, empty queries, Unicode, cross-modal-only listings,
old (schema 1) indexes, JSON shape, photo + text fusion, and the index's text guarantees
(stale vectors, tampering, crash rollback)."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from mkt.runtime import index as mi
from mkt.runtime.errors import MktError, MktIndexError
from mkt.runtime.index import NO_TEXT_MSG, Index
from mkt.runtime.search import (
    embed_listings,
    fts_query,
    search_text,
    similar_with_text,
)
from mkt.runtime.text import EmptyTextError, TextEncoder
from tests.test_text_support import text_model_dir, text_section

DIM = 16

LISTINGS = [
    ("L0", "Oak dining table", "Solid oak table, seats six. Some scratches on top.", 120.0,
     "Home & Garden"),
    ("L1", "Mountain bike", "Carrera hardtail, 26 inch wheels, disc brakes, serviced.", 150.0,
     "Sports, Leisure & Travel"),
    ("L2", "iPhone 12 64GB", "Unlocked, black, screen protector fitted, boxed.", 300.0,
     "Phones, Mobile Phones & Telecoms"),
    ("L3", "Baby pram", "Grey pushchair with rain cover, folds flat.", 60.0,
     "Baby & Kids Stuff"),
    ("L4", "Cordless drill", "Makita 18V drill with two batteries and charger.", 70.0,
     "DIY Tools & Materials"),
    ("L5", "Pine wardrobe", "Double wardrobe in pine, buyer collects.", 40.0, "Home & Garden"),
    ("L6", "PS4 console", "PlayStation 4 slim 500GB with two controllers.", 140.0,
     "Video Games & Consoles"),
    ("L7", "Kinderwagen für Zwillinge", "Zwillingskinderwagen, grün, sehr guter Zustand.", 90.0,
     "Baby & Kids Stuff"),
    ("L8", "Oak bookcase", "Tall bookcase in solid oak, five shelves.", 80.0, "Home & Garden"),
    ("L9", "Road bicycle", "Aluminium frame racer, 21 gears.", 200.0,
     "Sports, Leisure & Travel"),
]
HOSTILE = ['"', '""', "*", "NEAR(", "NEAR(oak table", "AND", "OR", "NOT", "-", "- oak",
           "oak AND", "title:oak", "(((", ")", "^oak", "oak*", "{title description}: oak",
           "'; DROP TABLE items; --", "oak\x00table", "\\", "NEAR(a b, 2)", ":", "+", "a-b",
           '"oak table', "🪑", "___", "_"]


def _vecs(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="session")
def enc():
    d = text_model_dir()
    sec = text_section(d)
    return TextEncoder(d / sec["model"], d / sec["tokenizer"], max_tokens=sec["max_tokens"])


def _photos():
    """Two photos a listing, plus X0: a photo with no listing and no text at all."""
    ids, meta = [], []
    for pid, t, d, p, c in LISTINGS:
        for j in range(2):
            ids.append(f"{pid}_p{j}")
            meta.append({"product_id": pid, "title": t, "description": d, "price": p,
                         "category": c, "path": f"images/{pid}_p{j}.jpg"})
    return ids, meta


@pytest.fixture()
def text_index(tmp_path, enc):
    ids, meta = _photos()
    idx = Index.create(tmp_path / "idx", model_id="m1", dim=DIM, ids=ids,
                       vectors=_vecs(len(ids)), meta=meta)
    assert embed_listings(idx, enc) == len(LISTINGS)
    return idx


def _top_pids(res, n=3):
    return [r.product_id for r in res.results[:n]]


def test_lexical_semantic_and_json_shape(text_index, enc):
    (r,) = search_text(text_index, enc, ["oak table"], k=5)
    assert r.results[0].product_id == "L0"
    assert set(_top_pids(r, 3)) >= {"L0", "L8"}
    d = r.to_dict()
    assert set(d) == {"query", "results"} and d["query"] == "oak table"
    assert set(d["results"][0]) == {"id", "score", "product_id", "title", "price", "category"}
    assert d["results"][0]["id"] in ("L0_p0", "L0_p1")
    assert d["results"][0]["title"] == "Oak dining table" and d["results"][0]["price"] == 120.0
    scores = [x["score"] for x in d["results"]]
    assert scores == sorted(scores, reverse=True)
    json.dumps(d)  # serialisable
    # one result per listing, never two photos of one listing
    assert len({x["product_id"] for x in d["results"]}) == len(d["results"])
    # semantic only: no shared word with the listing ("bicycle" vs "Mountain bike")
    (r2,) = search_text(text_index, enc, ["a bicycle for off-road trails"], k=3,
                        weights={"lexical": 0.0})
    assert {"L1", "L9"} & set(_top_pids(r2, 2))
    (r3,) = search_text(text_index, enc, ["games console"], k=2, weights={"lexical": 0.0})
    assert r3.results[0].product_id == "L6"


def test_lexical_path_alone(text_index, enc):
    (r,) = search_text(text_index, enc, ["makita"], k=3,
                       weights={"semantic": 0.0, "crossmodal": 0.0})
    assert [x.product_id for x in r.results] == ["L4"]  # only the listing with the word
    assert r.results[0].ranks == {"lexical": 1}


@pytest.mark.parametrize("q", HOSTILE)
def test_hostile_fts_queries_never_raise(text_index, enc, q):
    (r,) = search_text(text_index, enc, [q], k=3)
    assert isinstance(r.results, list)
    m = fts_query(q)
    if m is not None:
        text_index.fts(m, 5)  # the MATCH expression itself is valid FTS5


def test_hostile_words_are_words(text_index, enc):
    # "NEAR(oak" must look for the words near and oak, not be FTS syntax
    assert fts_query('NEAR(oak "table" AND -x*') == '"NEAR" OR "oak" OR "table" OR "AND" OR "x"'
    (r,) = search_text(text_index, enc, ['NEAR(oak*'], k=3,
                       weights={"semantic": 0.0, "crossmodal": 0.0})
    assert {"L0", "L8"} <= {x.product_id for x in r.results}


@pytest.mark.parametrize("q", ["", "   ", "\t\n"])
def test_empty_query_is_a_clear_error(text_index, enc, q):
    with pytest.raises(EmptyTextError, match="empty") as ei:
        search_text(text_index, enc, [q])
    assert isinstance(ei.value, MktError)


def test_unicode_queries(text_index, enc):
    (r,) = search_text(text_index, enc, ["kinderwagen für zwillinge"], k=3)
    assert r.results[0].product_id == "L7"
    (r,) = search_text(text_index, enc, ["KÍNDERWAGEN"], k=3,  # diacritics/case folded
                       weights={"semantic": 0.0, "crossmodal": 0.0})
    assert [x.product_id for x in r.results] == ["L7"]
    for q in ["🪑", "中文 桌子", "مقعد"]:
        (r,) = search_text(text_index, enc, [q], k=3)
        assert len(r.results) == 3  # semantic path still answers


def test_truncated_query_flag(text_index, enc):
    (short, long) = search_text(text_index, enc, ["oak", " ".join(["oak table"] * 200)], k=1)
    assert (short.truncated, long.truncated) == (False, True)


def test_crossmodal_only_listing(tmp_path, enc):
    """A photo with no text at all is found only through its cross-modal vector."""
    ids, meta = _photos()
    # the photo model's text_embedding of X0 (here: where a LiT-trained model would put a
    # photo of a red leather sofa in MiniLM's space)
    xv = enc.encode(["red leather sofa"])
    idx = Index.create(tmp_path / "idx", model_id="m1", dim=DIM, ids=ids + ["X0"],
                       vectors=_vecs(len(ids) + 1), meta=meta + [{"path": "x0.jpg"}],
                       text_vectors=np.concatenate(
                           [np.full((len(ids), 384), np.nan, np.float32), xv]))
    embed_listings(idx, enc)
    assert idx.text_counts()["photo_text_vectors"] == 1
    (r,) = search_text(idx, enc, ["leather couch"], k=len(LISTINGS) + 1,
                       weights={"crossmodal": 0.5})
    x0 = [x for x in r.results if x.id == "X0"]
    assert len(x0) == 1 and x0[0].product_id is None and x0[0].ranks == {"crossmodal": 1}
    only_x = {"lexical": 0.0, "semantic": 0.0, "crossmodal": 1.0}
    (r,) = search_text(idx, enc, ["leather couch"], k=3, weights=only_x)
    assert [x.id for x in r.results] == ["X0"]
    # survives reopening (stored per generation, hashed)
    again = Index.open(tmp_path / "idx")
    (r,) = search_text(again, enc, ["leather couch"], k=1, weights=only_x)
    assert r.results[0].id == "X0"
    # without the vector the photo is unreachable by text
    again.remove(["X0"])
    (r,) = search_text(again, enc, ["leather couch"], k=30)
    assert "X0" not in {x.id for x in r.results}


def test_photos_only_index_answers_by_crossmodal(tmp_path, enc):
    """An index without listing text (plain photo folder): only the cross-modal path."""
    texts = ["oak dining table", "mountain bike", "baby pram", "cordless drill"]
    xv = enc.encode(texts)
    ids = [f"ph{i}" for i in range(4)]
    idx = Index.create(tmp_path / "idx", model_id="m1", dim=DIM, ids=ids, vectors=_vecs(4),
                       meta=[{"path": f"{i}.jpg"} for i in ids], text_vectors=xv)
    assert embed_listings(idx, enc) == 0
    (r,) = search_text(idx, enc, ["a bicycle"], k=4)
    assert r.paths == ("crossmodal",)
    assert r.results[0].id == "ph1" and len(r.results) == 4


def test_index_with_no_text_at_all(tmp_path, enc):
    idx = Index.create(tmp_path / "idx", model_id="m1", dim=DIM, ids=["a", "b"],
                       vectors=_vecs(2))
    with pytest.raises(MktIndexError, match="no text to search"):
        search_text(idx, enc, ["oak"])


def _make_v1_index(d, n=6):
    """An index exactly as written before text search (schema 1: two generation files)."""
    import hnswlib

    d.mkdir()
    v = _vecs(n)
    h = hnswlib.Index(space="cosine", dim=DIM)
    h.init_index(max_elements=16, ef_construction=200, M=16)
    h.add_items(v, np.arange(n))
    h.save_index(str(d / "vectors-0.hnsw"))
    con = sqlite3.connect(d / "meta-0.sqlite")
    con.execute("CREATE TABLE items (label INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, "
                "product_id TEXT, title TEXT, price REAL, category TEXT, location TEXT, "
                "path TEXT)")
    con.executemany("INSERT INTO items VALUES (?,?,?,?,?,?,?,?)",
                    [(i, f"p{i}", f"L{i}", f"oak thing {i}", 1.0 * i, "Home & Garden", None,
                      f"images/p{i}.jpg") for i in range(n)])
    con.commit()
    con.close()
    info = {"schema_version": 1, "model_id": "m1", "dim": DIM, "space": "cosine", "M": 16,
            "ef_construction": 200, "ef": 64, "count": n, "generation": 0,
            "files": {f: mi.sha256_file(d / f) for f in ("vectors-0.hnsw", "meta-0.sqlite")}}
    (d / "index.json").write_text(json.dumps(info))
    return v


def test_old_schema_index_photos_yes_text_no(tmp_path, enc):
    d = tmp_path / "old"
    v = _make_v1_index(d)
    idx = Index.open(d, model_id="m1")
    assert not idx.has_text
    hits = idx.search(v[2], k=2)[0]
    assert hits[0].id == "p2" and hits[0].meta["title"] == "oak thing 2"
    with pytest.raises(MktIndexError, match="index built before text search; rebuild with mkt "
                                            "index build"):
        search_text(idx, enc, ["oak"])
    with pytest.raises(MktIndexError, match=NO_TEXT_MSG):
        similar_with_text(idx, enc, hits, "oak")
    # the next write upgrades it: schema 2, titles searchable
    idx.add(["p9"], _vecs(1, seed=3), [{"product_id": "L9", "title": "walnut desk"}])
    again = Index.open(d)
    assert again.has_text and json.loads((d / "index.json").read_text())["schema_version"] == 2
    assert again.get("p1")["title"] == "oak thing 1"
    (r,) = search_text(again, enc, ["walnut"], k=1)
    assert r.results[0].product_id == "L9"


def test_similar_with_text(text_index, enc):
    # a photo that looks like both L5 (pine wardrobe) and L8 (oak bookcase), a bit more like
    # L5: the photo alone ranks L5 first; "in oak" makes L8 the best match
    ids, _ = _photos()
    v = _vecs(len(ids))
    q = 0.55 * v[ids.index("L5_p0")] + 0.45 * v[ids.index("L8_p0")]
    hits = text_index.search(q / np.linalg.norm(q), k=20)[0]
    assert [h.meta["product_id"] for h in hits[:2]] == ["L5", "L8"]
    r = similar_with_text(text_index, enc, hits, "in oak", k=5)
    pids = [x.product_id for x in r.results]
    assert pids[0] == "L8" and "L5" in pids
    assert r.results[0].id == "L8_p0"  # the neighbour photo that matched
    assert set(r.to_dict()) == {"query", "results"} and r.to_dict()["query"] == "in oak"
    with pytest.raises(EmptyTextError):
        similar_with_text(text_index, enc, hits, " ")


def test_listing_vector_goes_stale_when_text_changes(text_index, enc):
    assert text_index.text_counts()["listing_vectors"] == len(LISTINGS)
    # replace both photos of L2 with new text: its vector no longer matches and is dropped
    text_index.add(["L2_p0", "L2_p1"], _vecs(2, seed=9),
                   [{"product_id": "L2", "title": "Samsung TV", "description": "55 inch"}] * 2)
    assert text_index.text_counts()["listing_vectors"] == len(LISTINGS) - 1
    assert list(text_index.listing_texts()) == ["L2"]
    assert embed_listings(text_index, enc) == 1
    (r,) = search_text(text_index, enc, ["television"], k=1, weights={"lexical": 0.0})
    assert r.results[0].product_id == "L2"
    # removing every photo of a listing removes the listing
    text_index.remove(["L3_p0", "L3_p1"])
    assert "L3" not in text_index.listings_meta(["L3"])
    assert text_index.text_counts()["listings"] == len(LISTINGS) - 1


def test_text_files_are_hashed_and_checked(text_index):
    d = text_index.path
    info = json.loads((d / "index.json").read_text())
    g = info["generation"]
    assert {f"ltext-{g}.npy", f"xmodal-{g}.npy"} <= set(info["files"])
    arr = np.load(d / f"ltext-{g}.npy")
    assert arr.dtype == np.float16 and arr.shape == (len(LISTINGS), 384)
    arr[0, 0] += 1
    np.save(d / f"ltext-{g}.npy", arr)
    with pytest.raises(MktIndexError, match="sha256 mismatch"):
        Index.open(d)


def test_failed_write_rolls_back_text(text_index, enc, monkeypatch):
    before = text_index.text_counts()

    def boom(path, obj):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(mi, "_write_json_atomic", boom)
    ids = ["N0"]
    with pytest.raises(MktIndexError, match="disk full"):
        text_index.add(ids, _vecs(1, seed=5), [{"product_id": "N", "title": "new"}],
                       text_vectors=enc.encode(["new"]))
    assert text_index.text_counts() == before
    monkeypatch.undo()
    (r,) = search_text(text_index, enc, ["oak table"], k=1)
    assert r.results[0].product_id == "L0"
    assert Index.open(text_index.path).text_counts() == before


def test_bad_text_vectors_refused(tmp_path):
    with pytest.raises(MktIndexError, match="text vectors"):
        Index.create(tmp_path / "i", model_id="m", dim=DIM, ids=["a"], vectors=_vecs(1),
                     text_vectors=np.zeros((1, 100), np.float32))
    idx = Index.create(tmp_path / "j", model_id="m", dim=DIM, ids=["a"], vectors=_vecs(1),
                       meta=[{"product_id": "A", "title": "x"}])
    with pytest.raises(MktIndexError, match="no listing"):
        idx.set_listing_vectors(["nope"], np.ones((1, 384), np.float32))
