"""mkt.runtime.price and `mkt price`: the voting rule (one vote per listing, £0 and absurd prices
ignored, weighted median + range) on a tiny index with known prices, and the JSON shape."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mkt.runtime import price as P
from mkt.runtime.index import Hit, Index
from tests.conftest import build_index, jlines, run

DIM = 8



# -- pure rules -----------------------------------------------------------------------------


def test_valid_price_rule():
    assert P.valid_price(1) and P.valid_price(0.5) and P.valid_price(P.MAX_VALID_PRICE)
    for bad in (0, 0.0, -5, None, float("nan"), float("inf"), "abc", True,
                P.MAX_VALID_PRICE + 1, 10_000_000):
        assert not P.valid_price(bad), bad
    assert P.valid_price("12.5")


def test_weighted_quantile_matches_median_and_weights():
    assert P.weighted_quantile([3, 1, 2], None, 0.5)[0] == 2
    assert P.weighted_quantile([1, 2, 3, 10], None, 0.5)[0] == 2.5
    # a heavy weight pulls the median onto its value
    assert P.weighted_quantile([1, 2, 3], [1, 1, 10], 0.5)[0] == 3
    lo, hi = P.weighted_quantile([1, 2, 3, 4, 5], None, [0.25, 0.75])
    assert 1 <= lo < 3 < hi <= 5
    with pytest.raises(ValueError):
        P.weighted_quantile([], None, 0.5)
    with pytest.raises(ValueError):
        P.weighted_quantile([1, 2], [0, 0], 0.5)


def test_vote_weights():
    w = P.vote_weights([0.9, 0.8, 0.5], tau=0.1)
    assert w[0] == 1 and 1 > w[1] > w[2] > 0
    assert np.all(P.vote_weights([0.9, 0.1], tau=math.inf) == 1)


def _hit(i, pid, price, score):
    return Hit(id=f"ph{i}", score=score, label=i,
               meta={"product_id": pid, "title": f"item {i}", "price": price})


def test_merge_hits_one_vote_per_listing_best_score():
    hits = [_hit(0, "A", 10, 0.9), _hit(1, "A", 10, 0.95), _hit(2, "B", 5, 0.8),
            _hit(3, None, 7, 0.7), _hit(4, None, 7, 0.6)]
    merged = P.merge_hits([hits])
    assert [h.id for h in merged] == ["ph1", "ph2", "ph3", "ph4"]  # no-product photos kept
    merged = P.merge_hits([hits], exclude_products=["A"], exclude_ids=["ph3"])
    assert [h.id for h in merged] == ["ph2", "ph4"]


# -- on a tiny index with known prices ------------------------------------------------------


def _unit(angle: float) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[0], v[1] = math.cos(angle), math.sin(angle)
    return v


# (photo id, listing, price, angle from the query): smaller angle = more similar.
ITEMS = [
    ("free", "L_free", 0.0, 0.01),       # nearest, but £0: must not vote
    ("absurd", "L_abs", 1e7, 0.02),      # £10,000,000: must not vote
    ("a1", "L_A", 1000.0, 0.03),         # listing A has two photos: must vote once
    ("a2", "L_A", 1000.0, 0.04),
    ("b", "L_B", 10.0, 0.05),
    ("c", "L_C", 20.0, 0.06),
    ("d", "L_D", 40.0, 0.07),
    ("far", "L_far", 5.0, 1.2),
]


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory) -> Index:
    d = tmp_path_factory.mktemp("price") / "idx"
    ids = [x[0] for x in ITEMS]
    vecs = np.stack([_unit(x[3]) for x in ITEMS])
    meta = [{"product_id": x[1], "title": f"title {x[0]}", "price": x[2],
             "category": "Home & Garden", "path": f"images/{x[0]}.jpg"} for x in ITEMS]
    return Index.create(d, model_id="m", dim=DIM, ids=ids, vectors=vecs, meta=meta)


def test_median_excludes_free_and_absurd_and_dedupes_listings(tiny_index):
    hits = tiny_index.search(_unit(0.0), P.query_size(3, tiny_index.count))[0]
    s = P.suggest_from_hits([hits], k=3, tau=math.inf, statistic="median", path="q.jpg")
    # voters: A (once), B, C -> median 20. Counting A twice gives 1000; letting £0 or the
    # absurd ask vote shifts it too.
    assert [n.id for n in s.neighbours] == ["a1", "b", "c"]
    assert s.price == 20.0
    assert s.low < s.price < s.high
    assert 10.0 <= s.low and s.high <= 1000.0
    # k=4 adds D (40): even count -> geometric mean of the middle two, 20 and 40
    s4 = P.suggest_from_hits([hits], k=4, tau=math.inf, statistic="median")
    assert s4.price == pytest.approx(math.sqrt(20 * 40), abs=0.01)


def test_similarity_weighting_favours_the_nearest(tiny_index):
    hits = tiny_index.search(_unit(0.0), tiny_index.count)[0]
    flat = P.suggest_from_hits([hits], k=5, tau=math.inf, statistic="median")
    sharp = P.suggest_from_hits([hits], k=5, tau=1e-4, statistic="median")  # nearest counts
    assert P.suggest_from_hits([hits], k=3, tau=math.inf, statistic="mean").price == \
        pytest.approx(math.exp(np.log([1000, 10, 20]).mean()), abs=0.01)
    assert flat.price == 20.0
    assert sharp.price == 1000.0


def test_listing_mode_merges_photos(tiny_index):
    h1 = tiny_index.search(_unit(0.0), 8)[0]
    h2 = tiny_index.search(_unit(1.2), 8)[0]
    s = P.suggest_from_hits([h1, h2], k=8, tau=math.inf, path="p1", paths=["p1", "p2"])
    ids = [n.id for n in s.neighbours]
    assert len(ids) == len(set(ids)) and "far" in ids and ids.count("a1") + ids.count("a2") == 1
    assert s.to_dict()["paths"] == ["p1", "p2"]


def test_no_priced_neighbours_gives_null(tmp_path):
    idx = Index.create(tmp_path / "i", model_id="m", dim=DIM, ids=["x", "y"],
                       vectors=np.stack([_unit(0.1), _unit(0.2)]),
                       meta=[{"path": "x.jpg"}, {"path": "y.jpg"}])
    s = P.suggest_from_hits(idx.search(_unit(0.0), 2), k=3)
    assert (s.price, s.low, s.high, s.neighbours) == (None, None, None, [])
    assert set(s.to_dict()) == {"path", "price", "low", "high", "uncertain", "neighbours"}


def test_predict_log_price_agrees_with_suggest(tiny_index):
    hits = P.merge_hits([tiny_index.search(_unit(0.0), 8)[0]])
    hits = [h for h in hits if P.valid_price(h.meta["price"])]
    lp = np.log([h.meta["price"] for h in hits])
    sc = [h.score for h in hits]
    for tau in (math.inf, 0.05):
        for stat in ("median", "mean"):
            want = P.suggest_from_hits([hits], k=3, tau=tau, statistic=stat).price
            got = math.exp(P.predict_log_price(sc, lp, k=3, tau=tau, statistic=stat))
            assert got == pytest.approx(want, abs=0.01)
    assert P.predict_log_price(sc, lp, k=3, tau=math.inf, statistic="mean") == pytest.approx(
        np.log([1000, 10, 20]).mean())


# -- CLI --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_index(tmp_path_factory, bundle_dir, dataset_dir):
    return build_index(tmp_path_factory, bundle_dir, dataset_dir, "--batch", "8")


def test_cli_price_json_shape(built_index, bundle_dir, fixture_photos, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a photo")
    photos = [fixture_photos[0], bad, fixture_photos[1]]
    res = run("price", *photos, "-k", "5", "--json", "--index", built_index,
              "--bundle", bundle_dir)
    assert res.exit_code == 1, res.output
    rows = {r["path"]: r for r in jlines(res.stdout)}  # errors come first within a batch
    assert sorted(rows) == sorted(str(p) for p in photos)
    assert set(rows[str(bad)]) == {"path", "error"}
    for r in (rows[str(photos[0])], rows[str(photos[2])]):
        assert set(r) == {"path", "price", "low", "high", "uncertain", "neighbours"}
        assert 1 <= len(r["neighbours"]) <= 5
        assert r["low"] <= r["price"] <= r["high"]
        for n in r["neighbours"]:
            assert {"id", "price", "score"} <= set(n) <= {"id", "product_id", "title", "price",
                                                          "score"}
            assert P.valid_price(n["price"])
        pids = [n["product_id"] for n in r["neighbours"]]
        assert len(pids) == len(set(pids))
        scores = [n["score"] for n in r["neighbours"]]
        assert scores == sorted(scores, reverse=True)


def test_cli_price_listing_and_exclude_self(built_index, bundle_dir, dataset_dir, tmp_path):
    photo = sorted((dataset_dir / "images").glob("*.jpg"))[0]
    res = run("price", photo, "--json", "--index", built_index, "--bundle", bundle_dir)
    own = jlines(res.stdout)[0]
    assert own["neighbours"][0]["id"] == photo.stem  # it is in the index
    res = run("price", photo, "--json", "--exclude-self", "--index", built_index,
              "--bundle", bundle_dir)
    other = jlines(res.stdout)[0]
    assert photo.stem not in {n["id"] for n in other["neighbours"]}
    assert own["neighbours"][0]["product_id"] not in {
        n.get("product_id") for n in other["neighbours"]}
    renamed = tmp_path / "renamed.jpg"  # the same picture under another name
    renamed.write_bytes(photo.read_bytes())
    res = run("price", renamed, "--json", "--exclude-self", "--index", built_index,
              "--bundle", bundle_dir)
    assert photo.stem not in {n["id"] for n in jlines(res.stdout)[0]["neighbours"]}
    photos = sorted((dataset_dir / "images").glob("*.jpg"))[:3]
    res = run("price", *photos, "--listing", "--json", "--index", built_index,
              "--bundle", bundle_dir)
    assert res.exit_code == 0
    (row,) = jlines(res.stdout)
    assert row["paths"] == [str(p) for p in photos] and row["path"] == str(photos[0])


def test_cli_price_human_and_help(built_index, bundle_dir, fixture_photos):
    res = run("price", fixture_photos[0], "--index", built_index, "--bundle", bundle_dir)
    assert res.exit_code == 0 and "£" in res.stdout and "range" in res.stdout
    from mkt.cli import market

    assert run("price", "--help").exit_code == 0
    assert f"default {P.DEFAULT_K}," in market.K_HELP


def test_cli_price_missing_index_is_fatal(bundle_dir, fixture_photos, tmp_path):
    res = run("price", fixture_photos[0], "--index", tmp_path / "nope", "--bundle", bundle_dir)
    assert res.exit_code == 2 and "mkt: error:" in res.output


def test_suggest_price_runtime_flow(built_index, bundle_dir, dataset_dir, tmp_path):
    """The whole flow as a library call: what `mkt price` prints, in input order."""
    from mkt.runtime.batch import PhotoError
    from mkt.runtime.model import Model

    m = Model(bundle_dir, threads=1)
    idx = Index.open(built_index, model_id=m.model_id)
    photo = sorted((dataset_dir / "images").glob("*.jpg"))[0]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    own, err, again = P.suggest_price(m, idx, [photo, bad, photo], k=5)
    assert isinstance(err, PhotoError) and err.path == str(bad)
    assert own.neighbours[0].id == photo.stem and own.to_dict() == again.to_dict()
    (other,) = P.suggest_price(m, idx, [photo], k=5, exclude_self=True)
    assert photo.stem not in {n.id for n in other.neighbours}
    assert own.neighbours[0].product_id not in {n.product_id for n in other.neighbours}
    err, one = P.suggest_price(m, idx, [photo, bad, photo], k=5, listing=True)
    assert isinstance(err, PhotoError) and one.paths == [str(photo)] * 2
