"""The text side through the front ends, on the shipped bundle (which ships the text encoder
and the photo + title fusion): ``mkt search``, ``classify --title``, ``similar --text``,
``price --title``, and the README's promise that ``mkt search "pram"`` finds baby listings.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mkt.runtime.bundle import default_bundle_dir, load_bundle
from tests.conftest import build_index, jlines, run

EXAMPLES = Path(__file__).resolve().parent.parent / "mkt" / "assets" / "examples"
BABY = "Baby & Kids Stuff"


@pytest.fixture(scope="module")
def text_index(tmp_path_factory, dataset_dir):
    assert load_bundle().manifest.get("text"), "the shipped bundle must ship the text encoder"
    return build_index(tmp_path_factory, default_bundle_dir(), dataset_dir)


@pytest.fixture(scope="module")
def photos_only_index(tmp_path_factory, fixture_photos):
    """An index of a plain photo folder: no titles, no descriptions: only the photos'
    cross-modal vectors can answer a text query."""
    d = tmp_path_factory.mktemp("plain")
    for p in fixture_photos:
        shutil.copyfile(p, d / p.name)
    return build_index(tmp_path_factory, default_bundle_dir(), d)


def test_search_json_shape_and_per_query_errors(text_index):
    res = run("search", "ps4 console", "   ", "wall frame", "--index", text_index, "--json",
              "-k", "3")
    assert res.exit_code == 1  # the empty query failed, the others were answered
    out = jlines(res.stdout)
    assert [o.get("query") for o in out] == ["ps4 console", "   ", "wall frame"]
    assert "error" in out[1] and "results" not in out[1]
    for o in (out[0], out[2]):
        assert set(o) == {"query", "results"} and 1 <= len(o["results"]) <= 3
        for h in o["results"]:
            assert {"id", "score", "product_id", "title", "category"} <= set(h)
    assert "Video Games" in out[0]["results"][0]["category"]


@pytest.mark.parametrize("q", ['"', "*", "NEAR(", "AND", "-", 'oak" OR "', "^x", "title:ps4",
                               "😀 диван 椅子"])
def test_hostile_and_unicode_queries_are_words(text_index, q):
    res = run("search", q, "--index", text_index, "--json")
    assert res.exit_code == 0, res.output
    assert jlines(res.stdout)[0]["query"] == q


def test_long_query_cut_and_said_once(text_index):
    long = "vintage oak sideboard " * 200
    res = run("search", long, long, "--index", text_index)
    assert res.exit_code == 0
    assert res.stderr.count("cut to fit") == 1


def test_photos_only_index_answers_through_photos(photos_only_index):
    res = run("search", "playstation console", "--index", photos_only_index, "--json", "-k",
              "5")
    assert res.exit_code == 0, res.output
    hits = jlines(res.stdout)[0]["results"]
    assert len(hits) == 5 and all("title" not in h for h in hits)  # found by photo alone


def test_old_index_refused_for_text_but_fine_for_photos(tmp_path, text_index):
    from tests.test_search_text import _make_v1_index

    d = tmp_path / "old"
    _make_v1_index(d)
    info = json.loads((d / "index.json").read_text())
    info["model_id"] = load_bundle().model_id  # as if this bundle had built it
    (d / "index.json").write_text(json.dumps(info))
    res = run("search", "oak", "--index", d)
    assert res.exit_code == 2 and "rebuild" in res.stderr and "Traceback" not in res.stderr


def test_classify_with_title(text_index):
    photo = EXAMPLES / "video_games.jpg"
    res = run("classify", photo, "--title", "PS4 slim 500gb with two controllers", "--json")
    assert res.exit_code == 0, res.output
    (p,) = jlines(res.stdout)
    assert p["category"] == "Video Games & Consoles" and p["score"] > 0.5
    res = run("classify", photo, "--title", "  ", "--json")
    assert res.exit_code == 2 and "title" in res.stderr


def test_similar_with_text_and_price_with_title(text_index):
    photo = EXAMPLES / "video_games.jpg"
    res = run("similar", photo, "--text", "playstation", "--index", text_index, "--json",
              "-k", "3")
    assert res.exit_code == 0, res.output
    (r,) = jlines(res.stdout)
    assert 1 <= len(r["results"]) <= 3
    res = run("price", photo, "--title", "PS4 slim console", "--index", text_index, "--json")
    assert res.exit_code == 0, res.output
    (s,) = jlines(res.stdout)
    assert s["price"] is not None and s["low"] <= s["price"] <= s["high"] and s["neighbours"]


def test_pram_finds_baby_listings_in_the_shipped_catalogue():
    res = run("search", "pram", "--json", "-k", "10")
    assert res.exit_code == 0, res.output
    cats = [h.get("category") for h in jlines(res.stdout)[0]["results"]]
    assert cats.count(BABY) >= 7, cats


def test_server_search_and_title(text_index):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mkt.serve import create_app

    with TestClient(create_app(index=text_index, eager=True)) as c:
        r = c.post("/search", json={"query": "ps4 console", "k": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["query"] == "ps4 console" and 1 <= len(body["results"]) <= 3
        assert c.post("/search", json={"query": "   "}).status_code == 400
        assert c.post("/search", json={"query": ""}).status_code == 422
        photo = (EXAMPLES / "video_games.jpg").read_bytes()
        r = c.post("/classify", files={"file": ("v.jpg", photo, "image/jpeg")},
                   data={"title": "PS4 slim with two controllers"})
        assert r.status_code == 200 and r.json()["category"] == "Video Games & Consoles"
        r = c.post("/price", files={"file": ("v.jpg", photo, "image/jpeg")},
                   data={"title": "PS4 slim"})
        assert r.status_code == 200 and r.json()["price"] is not None
        assert "/search" in c.get("/openapi.json").json()["paths"]
