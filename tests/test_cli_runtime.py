"""The runtime commands of the `mkt` CLI: JSON shapes, partial failures, exit codes, no
tracebacks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mkt.cli import app

runner = CliRunner()


def run(*args: str):
    res = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res


def jlines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def labels_of(bundle: Path) -> list[str]:
    return json.loads((bundle / "manifest.json").read_text())["labels"]


@pytest.fixture(scope="module")
def built_index(tmp_path_factory, bundle_dir, dataset_dir) -> Path:
    out = tmp_path_factory.mktemp("cli") / "index"
    res = run("index", "build", dataset_dir, "--out", out, "--bundle", bundle_dir,
              "--batch", "8", "--M", "8", "--ef-construction", "40", "--ef", "16")
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.parametrize(
    "cmd",
    [[], ["classify"], ["similar"], ["info"], ["index"], ["index", "build"], ["index", "add"],
     ["index", "remove"], ["index", "info"]],
)
def test_help(cmd):
    res = run(*cmd, "--help")
    assert res.exit_code == 0
    assert "Usage" in res.output


def test_classify_json(bundle_dir, fixture_photos):
    photos = fixture_photos[:3]
    res = run("classify", *photos, "-k", "4", "--json", "--bundle", bundle_dir)
    assert res.exit_code == 0, res.output
    rows = jlines(res.stdout)
    labels = labels_of(bundle_dir)
    assert [r["path"] for r in rows] == [str(p) for p in photos]
    for r in rows:
        assert set(r) == {"path", "category", "score", "top"}
        assert len(r["top"]) == 4
        assert all(set(t) == {"category", "score"} for t in r["top"])
        assert r["category"] == r["top"][0]["category"] and r["category"] in labels
        assert r["score"] == r["top"][0]["score"]
        scores = [t["score"] for t in r["top"]]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001


def test_classify_human(bundle_dir, fixture_photos):
    res = run("classify", fixture_photos[0], "--bundle", bundle_dir)
    assert res.exit_code == 0
    line = res.stdout.strip().splitlines()
    assert len(line) == 1 and str(fixture_photos[0]) in line[0] and "%" in line[0]


def test_classify_listing_mean_of_logits(bundle_dir, fixture_photos):
    photos = fixture_photos[:2]
    res = run("classify", *photos, "--listing", "--json", "--bundle", bundle_dir)
    assert res.exit_code == 0
    (row,) = jlines(res.stdout)
    assert row["paths"] == [str(p) for p in photos] and row["category"] in labels_of(bundle_dir)

    import numpy as np

    from mkt.runtime.model import Model, softmax

    m = Model(bundle_dir)
    logits, _ = m.predict(m.load(photos))
    p = softmax(logits.mean(axis=0))
    assert row["category"] == m.labels[int(np.argmax(p))]
    assert row["score"] == pytest.approx(float(p.max()), abs=1e-5)


def test_classify_bad_photo_in_batch(bundle_dir, fixture_photos, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    photos = [fixture_photos[0], bad, tmp_path / "missing.jpg", fixture_photos[1]]
    res = run("classify", *photos, "--json", "--bundle", bundle_dir)
    assert res.exit_code == 1
    rows = jlines(res.stdout)
    errs = [r for r in rows if "error" in r]
    oks = [r for r in rows if "error" not in r]
    assert {r["path"] for r in errs} == {str(bad), str(tmp_path / "missing.jpg")}
    assert all(set(r) == {"path", "error"} for r in errs)
    assert [r["path"] for r in oks] == [str(fixture_photos[0]), str(fixture_photos[1])]

    res = run("classify", *photos, "--bundle", bundle_dir)
    assert res.exit_code == 1
    err_lines = [ln for ln in res.stderr.splitlines() if ln.startswith("mkt: error:")]
    assert sum(str(bad) in ln for ln in err_lines) == 1
    assert len(res.stdout.strip().splitlines()) == 2


def test_missing_and_tampered_bundle(bundle_dir, fixture_photos, tmp_path):
    res = run("classify", fixture_photos[0], "--bundle", tmp_path / "nope")
    assert res.exit_code == 2
    assert res.stderr.startswith("mkt: error:") and len(res.stderr.strip().splitlines()) == 1

    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    onnx_file = next(copy.glob("*.onnx"))
    data = bytearray(onnx_file.read_bytes())
    data[-10] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    res = run("classify", fixture_photos[0], "--bundle", copy)
    assert res.exit_code == 2 and "sha256 mismatch" in res.stderr


def test_index_build_info_similar(built_index, bundle_dir, fixture_photos, dataset_dir):
    res = run("index", "info", built_index, "--json")
    assert res.exit_code == 0
    (info,) = jlines(res.stdout)
    assert info["count"] == 26 and info["M"] == 8 and info["ef"] == 16
    assert info["model_id"] == json.loads((bundle_dir / "manifest.json").read_text())["model_id"]

    q = dataset_dir / "images" / fixture_photos[0].name
    res = run("similar", q, fixture_photos[1], "-k", "3", "--index", built_index,
              "--bundle", bundle_dir, "--json")
    assert res.exit_code == 0, res.output
    rows = jlines(res.stdout)
    assert [r["path"] for r in rows] == [str(q), str(fixture_photos[1])]
    for r in rows:
        assert set(r) == {"path", "results"} and len(r["results"]) == 3
        for h in r["results"]:
            assert set(h) == {"id", "score", "product_id", "title", "price", "category"}
    top = rows[0]["results"][0]
    assert top["score"] == pytest.approx(1.0, abs=1e-4)  # the photo itself is in the index

    res = run("similar", q, "-k", "100", "--index", built_index, "--bundle", bundle_dir, "--json")
    assert len(jlines(res.stdout)[0]["results"]) == 26  # k > count

    res = run("similar", q, "--index", built_index, "--bundle", bundle_dir)
    assert res.exit_code == 0 and "score" in res.stdout


def test_index_add_remove(built_index, bundle_dir, fixture_photos, tmp_path):
    idx = tmp_path / "idx"
    shutil.copytree(built_index, idx)
    extra = tmp_path / "new"
    extra.mkdir()
    shutil.copyfile(fixture_photos[0], extra / "fresh-photo.jpg")
    res = run("index", "add", idx, extra, "--bundle", bundle_dir)
    assert res.exit_code == 0, res.output
    (info,) = jlines(run("index", "info", idx, "--json").stdout)
    assert info["count"] == 27

    res = run("similar", extra / "fresh-photo.jpg", "-k", "2", "--index", idx,
              "--bundle", bundle_dir, "--json")
    ids = [h["id"] for h in jlines(res.stdout)[0]["results"]]
    assert "fresh-photo" in ids and fixture_photos[0].stem in ids  # byte-identical: both back
    res = run("index", "remove", idx, "fresh-photo", "no-such-id")
    assert res.exit_code == 1 and "no-such-id" in res.stderr
    (info,) = jlines(run("index", "info", idx, "--json").stdout)
    assert info["count"] == 26


def test_index_build_reports_bad_photos(bundle_dir, fixture_photos, tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for p in fixture_photos[:4]:
        shutil.copyfile(p, src / p.name)
    (src / "corrupt.jpg").write_bytes(b"garbage")
    out = tmp_path / "idx"
    res = run("index", "build", src, "--out", out, "--bundle", bundle_dir)
    assert res.exit_code == 1
    assert sum("corrupt.jpg" in ln for ln in res.stderr.splitlines()) == 1
    (info,) = jlines(run("index", "info", out, "--json").stdout)
    assert info["count"] == 4
    res = run("index", "build", src, "--out", out, "--bundle", bundle_dir)
    assert res.exit_code == 2 and "already exists" in res.stderr


def test_similar_refuses_other_model(built_index, make_bundle, fixture_photos):
    other = make_bundle(seed=1)
    res = run("similar", fixture_photos[0], "--index", built_index, "--bundle", other)
    assert res.exit_code == 2
    assert "mkt: error:" in res.stderr and "model" in res.stderr


def test_info(bundle_dir, built_index):
    res = run("info", "--bundle", bundle_dir, "--index", built_index, "--json")
    assert res.exit_code == 0
    (d,) = jlines(res.stdout)
    assert d["bundle"]["model_id"] == d["index"]["model_id"] and d["index"]["matches_bundle"]
    assert len(d["bundle"]["labels"]) == 13
    res = run("info", "--bundle", bundle_dir, "--index", built_index)
    assert res.exit_code == 0 and "model_id" in res.stdout
    res = run("info", "--bundle", bundle_dir, "--index", built_index / "nope")
    assert res.exit_code == 2


def test_subprocess_errors_are_one_line(bundle_dir, tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    cmds = [
        (["classify", str(bad), "--bundle", str(bundle_dir)], 1),
        (["classify", str(bad), "--bundle", str(tmp_path / "none")], 2),
        (["similar", str(bad), "--index", str(tmp_path), "--bundle", str(bundle_dir)], 2),
        (["no-such-command"], 2),
    ]
    for args, code in cmds:
        p = subprocess.run([sys.executable, "-m", "mkt.cli", *args], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == code, (args, p.stderr)
        assert "Traceback" not in p.stderr + p.stdout
        if code == 1 or args[0] != "no-such-command":
            assert p.stderr.startswith("mkt: error:"), p.stderr
