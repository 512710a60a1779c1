"""mkt.runtime.dupes and `mkt dupes`: exact and re-encoded copies are grouped, different photos
(including other photos of the same listing) are not; JSON shape; the hash check matters."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from mkt.runtime import dupes as D
from tests.conftest import jlines, run

# -- pure pieces ------------------------------------------------------------------------------


def test_dhash_hamming_basics(fixture_photos):
    a = np.asarray(Image.open(fixture_photos[0]).convert("RGB"))
    b = np.asarray(Image.open(fixture_photos[1]).convert("RGB"))
    ha, hb = D.dhash(a), D.dhash(b)
    assert ha.dtype == np.uint8 and ha.shape == (8,)
    assert D.hamming(ha, ha) == 0
    assert D.hamming(ha, hb) > 12  # two different photos
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=60)
    again = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert D.hamming(ha, D.dhash(again)) <= 6  # a re-encoded copy
    assert D.hamming(np.array([0b1011], np.uint8), np.array([0b0001], np.uint8)) == 2


def test_union_find_and_grouping():
    uf = D.UnionFind(5)
    uf.union(0, 1)
    uf.union(3, 4)
    uf.union(1, 4)
    assert len({uf.find(i) for i in range(5)}) == 2
    groups = D.group_pairs(6, [D.DupePair(4, 5, 0.99), D.DupePair(0, 1, 0.97),
                               D.DupePair(1, 2, 0.98)])
    assert [g.members for g in groups] == [[0, 1, 2], [4, 5]]
    assert [p.score for p in groups[0].pairs] == [0.98, 0.97]


def _vec(*xs):
    v = np.array(xs, np.float32)
    return v / np.linalg.norm(v)


def test_find_duplicates_threshold_and_hash():
    vecs = np.stack([_vec(1, 0, 0), _vec(1, 0.01, 0), _vec(1, 0.05, 0), _vec(0, 1, 0)])
    # cosine(0,1)=0.99995, cosine(0,2)=0.9988, cosine(*,3) ~0
    groups = D.find_duplicates(vecs, rule=D.DupeRule(0.9999, None))
    assert [g.members for g in groups] == [[0, 1]]
    groups = D.find_duplicates(vecs, rule=D.DupeRule(0.99, None))
    assert [g.members for g in groups] == [[0, 1, 2]]
    h0 = np.zeros(8, np.uint8)
    far = np.full(8, 255, np.uint8)
    hashes = [h0, h0, far, h0]
    groups = D.find_duplicates(vecs, hashes=hashes, rule=D.DupeRule(0.99, 10))
    assert [g.members for g in groups] == [[0, 1]]  # 2 is near in embedding, not in layout
    groups = D.find_duplicates(vecs, hashes=hashes, rule=D.DupeRule(0.99, 10, 0.998))
    assert [g.members for g in groups] == [[0, 1, 2]]  # sure threshold overrides the hash
    groups = D.find_duplicates(vecs, hashes=[h0, None, far, h0], rule=D.DupeRule(0.99, 10))
    # unknown hash: the embedding decides (0-1, 1-2 accepted; 0-2 refused by the hash)
    assert [g.members for g in groups] == [[0, 1, 2]]
    assert {(p.a, p.b) for p in groups[0].pairs} == {(0, 1), (1, 2)}


def test_candidate_pairs_hnsw_path_matches_exact():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((60, 16)).astype(np.float32)
    vecs = np.concatenate([base, base[:10] + 0.01 * rng.standard_normal((10, 16))])
    exact, s1 = D.candidate_pairs(vecs, 0.99)
    approx, s2 = D.candidate_pairs(vecs, 0.99, brute_force_limit=10, neighbours=8)
    assert exact.tolist() == approx.tolist() and len(exact) == 10
    assert np.allclose(s1, s2, atol=1e-5)


def _lookalikes(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    """``n`` near-copies of one vector (cosine > 0.99 to each other): the worst case."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(dim).astype(np.float32)
    return base + 0.01 * rng.standard_normal((n, dim)).astype(np.float32)


def test_knn_pairs_exact_and_hnsw_agree_and_match_all_pairs():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((200, 32)).astype(np.float32)
    vecs = np.concatenate([base, base[:50] + 0.01 * rng.standard_normal((50, 32)),
                           base[:5] + 0.02 * rng.standard_normal((5, 32))])
    every, s0 = D.candidate_pairs(vecs, 0.95)  # groups smaller than k: the same pairs
    exact, s1 = D.knn_pairs(vecs, 0.95, neighbours=8)
    approx, s2 = D.knn_pairs(vecs, 0.95, neighbours=8, exact_limit=10)
    assert exact.tolist() == approx.tolist() == every.tolist() and len(exact) == 60
    assert np.allclose(s0, s1, atol=1e-5) and np.allclose(s1, s2, atol=1e-5)
    assert D.knn_pairs(vecs[:1], 0.5)[0].shape == (0, 2)


@pytest.mark.parametrize("exact_limit", [D.EXACT_KNN_LIMIT, 0])
def test_knn_pairs_bounded_on_lookalikes(exact_limit):
    """1,500 near-copies: at most k pairs a photo (not n^2/2 = 1.1 M), all one group."""
    n, k = 1500, 16
    pairs, scores = D.knn_pairs(_lookalikes(n), 0.9, neighbours=k, exact_limit=exact_limit)
    assert len(pairs) <= k * n and (scores >= 0.9).all()
    groups = D.group_pairs(n, [D.DupePair(a, b, s) for (a, b), s in
                               zip(pairs.tolist(), scores.tolist(), strict=True)])
    assert [len(g.members) for g in groups] == [n]


def test_find_duplicates_memory_not_quadratic():
    """tracemalloc peak of find_duplicates on n vs 2n look-alike photos (with hashes): the
    all-pairs version grew ~4x (n^2 pairs); k nearest neighbours grow ~2x."""
    import tracemalloc

    def peak(n: int) -> int:
        vecs = _lookalikes(n)
        hashes = [np.zeros(8, np.uint8)] * n
        tracemalloc.start()
        try:
            groups = D.find_duplicates(vecs, hashes=hashes)
            _, top = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert [len(g.members) for g in groups] == [n]
        assert len(groups[0].pairs) <= D.HNSW_NEIGHBOURS * n
        return top

    small, large = peak(600), peak(1200)
    assert large / small < 2.8, (small, large)


def test_rule_accept_array_matches_accept():
    rule = D.DupeRule(0.9, 10, 0.99)
    s = np.array([0.8, 0.92, 0.92, 0.995, 0.95])
    h = np.array([0, 5, 20, 40, -1])
    assert rule.accept_array(s, h).tolist() == [
        rule.accept(float(a), None if b < 0 else int(b)) for a, b in zip(s, h, strict=True)]


# -- CLI on real photos -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dupes_folder(tmp_path_factory, dataset_dir):
    """4 different photos + an exact copy of one + a JPEG q60 re-encode of another."""
    d = tmp_path_factory.mktemp("dupes") / "photos"
    d.mkdir()
    photos = sorted((dataset_dir / "images").glob("*.jpg"))[:4]
    for p in photos:
        shutil.copy(p, d / p.name)
    shutil.copy(photos[0], d / "exact_copy.jpg")
    Image.open(photos[1]).convert("RGB").save(d / "reencoded.jpg", "JPEG", quality=60)
    return d, photos


def test_cli_dupes_groups_copies_not_others(dupes_folder, bundle_dir, tmp_path):
    d, photos = dupes_folder
    html = tmp_path / "dupes.html"
    res = run("dupes", d, "--json", "--bundle", bundle_dir, "--html", html)
    assert res.exit_code == 0, res.output
    groups = jlines(res.stdout)
    got = sorted(sorted(p["id"] for p in g["photos"]) for g in groups)
    assert got == sorted([sorted([photos[0].stem, "exact_copy"]),
                          sorted([photos[1].stem, "reencoded"])])
    for g in groups:
        assert set(g) == {"group", "size", "photos", "pairs"}
        assert g["size"] == len(g["photos"]) == 2
        for ph in g["photos"]:
            assert {"id", "path", "source"} <= set(ph)
        (pair,) = g["pairs"]
        assert set(pair) == {"a", "b", "score", "hash_distance"}
        assert pair["score"] >= D.DEFAULT_THRESHOLD and 0 <= pair["hash_distance"]
    text = html.read_text()
    assert text.count("data:image/jpeg;base64,") == 4 and "exact_copy" in text


def test_cli_dupes_bad_photo_and_human(dupes_folder, bundle_dir, tmp_path):
    d, _ = dupes_folder
    d2 = tmp_path / "withbad"
    shutil.copytree(d, d2)
    (d2 / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    res = run("dupes", d2, "--json", "--bundle", bundle_dir)
    assert res.exit_code == 1
    rows = jlines(res.stdout)
    assert rows[0]["path"].endswith("broken.jpg") and set(rows[0]) == {"path", "error"}
    assert len(rows) == 3
    res = run("dupes", d2, "--bundle", bundle_dir)
    assert res.exit_code == 1 and "group 1" in res.stdout and "mkt: error:" in res.output


def test_cli_dupes_against_index(dupes_folder, bundle_dir, dataset_dir, tmp_path):
    """A re-encoded catalogue photo in a new folder is found in the catalogue index."""
    idx = tmp_path / "idx"
    assert run("index", "build", dataset_dir, "--out", idx, "--bundle", bundle_dir).exit_code == 0
    _, photos = dupes_folder
    new = tmp_path / "new"
    new.mkdir()
    Image.open(photos[2]).convert("RGB").save(new / "upload.jpg", "JPEG", quality=60)
    res = run("dupes", new, "--index", idx, "--json", "--bundle", bundle_dir)
    assert res.exit_code == 0, res.output
    (g,) = jlines(res.stdout)
    by_src = {p["source"]: p for p in g["photos"]}
    assert by_src["source"]["id"] == "upload" and by_src["index"]["id"] == photos[2].stem
    assert "product_id" in by_src["index"] and "title" in by_src["index"]


def test_cli_dupes_help_and_empty(bundle_dir, tmp_path):
    from mkt.cli import market

    assert run("dupes", "--help").exit_code == 0
    assert f"default {D.DEFAULT_THRESHOLD:g}," in market.T_HELP
    (tmp_path / "empty").mkdir()
    res = run("dupes", tmp_path / "empty", "--bundle", bundle_dir)
    assert res.exit_code == 2 and "no photos" in res.output


def test_find_dupes_runtime_flow(dupes_folder, bundle_dir, tmp_path):
    """`mkt dupes` as a library call: result objects with the JSON shape the CLI prints."""
    from mkt.runtime.model import Model

    d, photos = dupes_folder
    rep = D.find_dupes(Model(bundle_dir, threads=1), [d, tmp_path / "missing"])
    assert [e.path for e in rep.errors] == [str(tmp_path / "missing")]
    assert rep.checked == rep.total == 6 and len(rep.groups) == 2
    got = sorted(sorted(p.id for p in g.photos) for g in rep.groups)
    assert got == sorted([sorted([photos[0].stem, "exact_copy"]),
                          sorted([photos[1].stem, "reencoded"])])
    g = rep.groups[0].to_dict()
    assert set(g) == {"group", "size", "photos", "pairs"} and g["group"] == 1
    assert all(p.file is not None for g in rep.groups for p in g.photos)
    assert "cosine >= 0.8" in rep.summary()


def test_rule_from_options():
    r = D.DupeRule.from_options()
    assert r == D.DupeRule() and r.describe() == "cosine >= 0.8 and dHash <= 8, or cosine >= 0.97"
    assert D.DupeRule.from_options(0.99).sure_threshold is None  # override only above it
    assert D.DupeRule.from_options(use_hash=False).describe() == "cosine >= 0.8"
    assert not hasattr(D, "ahash")
