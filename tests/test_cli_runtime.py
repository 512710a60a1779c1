"""The runtime commands of the `mkt` CLI: JSON shapes, partial failures, exit codes, no
tracebacks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import build_index, jlines, run


def labels_of(bundle: Path) -> list[str]:
    return json.loads((bundle / "manifest.json").read_text())["labels"]


@pytest.fixture(scope="module")
def built_index(tmp_path_factory, bundle_dir, dataset_dir) -> Path:
    return build_index(tmp_path_factory, bundle_dir, dataset_dir, "--batch", "8", "--M", "8",
                       "--ef-construction", "40", "--ef", "16")


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
        assert set(r) - {"uncertain"} == {"path", "category", "score", "top"}  # + calibration
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

    from mkt.runtime.model import Model

    m = Model(bundle_dir)  # the same precision choice as the command (cached per CPU)
    logits, _ = m.predict(m.load(photos))
    p = m.probabilities(logits.mean(axis=0, keepdims=True))[0]  # calibrated, as classify
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
        assert set(r) == {"path", "uncertain", "results"} and len(r["results"]) == 3
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
    assert res.exit_code == 0 and d["bundle"]["model_id"] in res.stdout
    assert "matches the model" in res.stdout and "train_loss" not in res.stdout
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


# -- the command line itself: usage errors, help, missing extras ------------------------------

def _all_command_paths() -> list[list[str]]:
    import typer

    from mkt.cli import app

    def walk(cmd, path):
        out = [path]
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            out += walk(sub, [*path, name])
        return out

    return walk(typer.main.get_command(app), [])


def test_every_command_is_listed():
    names = {p[0] for p in _all_command_paths() if p}
    assert {"classify", "similar", "price", "dupes", "index", "info", "bench", "serve", "data",
            "train", "evaluate", "export"} <= names


@pytest.mark.parametrize("path", _all_command_paths(), ids=lambda p: " ".join(p) or "mkt")
def test_help_has_no_type_labels(path):
    import re

    res = run(*path, "--help")
    assert res.exit_code == 0 and "Usage: mkt" in res.output
    assert not re.search(r"<[a-zA-Z][^<>\n]*>", res.output), res.output  # <bool>, <list[Path]>
    assert "╭" not in res.output and "{" not in res.output.splitlines()[0]


@pytest.mark.parametrize("args", [
    ["classify", "-k", "0", "x.jpg"], ["classify"], ["no-such-command"],
    ["index", "build", "somewhere"], ["similar", "x.jpg", "--nope"], ["price", "-k", "abc"],
])
def test_usage_error_is_one_line_exit_2(args):
    res = run(*args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mkt: error:"), res.stderr
    assert res.stdout == "" and "╭" not in res.stderr and "Usage:" not in res.stderr


def test_usage_error_one_line_from_the_entry_point():
    p = subprocess.run([sys.executable, "-m", "mkt.cli", "classify", "-k", "0", "x.jpg"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("mkt: error:") and "-k" in p.stderr


@pytest.fixture()
def no_extras(tmp_path):
    """A PYTHONPATH shim on which fastapi, uvicorn and torch cannot be imported."""
    shim = tmp_path / "shim"
    for name in ("fastapi", "uvicorn", "torch"):
        (shim / name).mkdir(parents=True)
        (shim / name / "__init__.py").write_text(
            f"raise ImportError(\"No module named '{name}'\", name={name!r})\n")
    import os

    env = dict(os.environ, PYTHONPATH=str(shim))
    env.pop("MKT_DEBUG", None)
    return env


@pytest.mark.parametrize("args,extra", [
    (["serve", "--port", "0"], "serve"),
    (["train", "--data", "d", "--out", "o"], "train"),
    (["train", "baselines", "--data", "d"], "train"),
    (["data", "clean", "--src", "s", "--out", "o"], "train"),
    (["evaluate", "ckpt.pt"], "train"),
    (["export", "CKPT", "--out", "o"], "train"),
])
def test_missing_extra_says_which(no_extras, tmp_path, args, extra):
    args = [str(tmp_path / "x.pt") if a == "CKPT" else a for a in args]
    (tmp_path / "x.pt").write_bytes(b"")
    p = subprocess.run([sys.executable, "-m", "mkt.cli", *args], capture_output=True,
                       text=True, timeout=120, env=no_extras, cwd=tmp_path)
    assert p.returncode == 2, (args, p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("mkt: error:"), p.stderr
    assert f"pip install 'mkt[{extra}]'" in p.stderr and "Traceback" not in p.stderr
    # and the command is still listed
    p = subprocess.run([sys.executable, "-m", "mkt.cli", "--help"], capture_output=True,
                       text=True, timeout=120, env=no_extras, cwd=tmp_path)
    assert p.returncode == 0 and f"\n  {args[0]} " in p.stdout


# -- the runtime library behind the commands --------------------------------------------------

def test_iter_batches_keeps_order_and_errors(bundle_dir, fixture_photos, tmp_path):
    from mkt.runtime.batch import PhotoError, classify_photos, iter_batches
    from mkt.runtime.errors import BadImageError
    from mkt.runtime.model import Model

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    srcs = [fixture_photos[0], bad, fixture_photos[1].read_bytes(), tmp_path / "missing.jpg",
            fixture_photos[2]]
    m = Model(bundle_dir, threads=1)
    batches = list(iter_batches(srcs, m, 2))
    assert [len(b.items) for b in batches] == [2, 2, 1]
    items = [it for b in batches for it in b.items]
    assert [it.index for it in items] == list(range(5))
    assert [it.ok for it in items] == [True, False, True, False, True]
    assert isinstance(items[1].error, BadImageError) and str(bad) in str(items[1].error)
    assert items[2].name == "<bytes:2>" and items[0].array.shape == (m.input_size,) * 2 + (3,)
    out = list(classify_photos(m, srcs, k=2, batch_size=2))
    assert [isinstance(r, PhotoError) for r in out] == [False, True, False, True, False]
    assert [r.path for r in out] == [str(srcs[0]), str(bad), "<bytes:2>",
                                     str(tmp_path / "missing.jpg"), str(srcs[4])]
    assert out[1].to_dict() == {"path": str(bad), "error": str(items[1].error)}


def test_indexing_functions(bundle_dir, fixture_photos, tmp_path):
    from mkt.runtime.indexing import add_to_index, build_index
    from mkt.runtime.model import Model

    src = tmp_path / "src"
    src.mkdir()
    for p in fixture_photos[:3]:
        shutil.copyfile(p, src / p.name)
    (src / "broken.jpg").write_bytes(b"x")
    m = Model(bundle_dir, threads=1)
    seen, steps = [], []
    rep = build_index(m, src, tmp_path / "idx", M=8, ef_construction=40, on_error=seen.append,
                      progress=lambda d, t: steps.append((d, t)))
    assert rep.index.count == rep.added == 3 and [e.path for e in rep.errors] == \
        [str(src / "broken.jpg")] and seen == rep.errors
    assert steps[-1] == (4, 4)
    assert rep.index.info()["provenance"]["source"] == str(src)
    rep2 = add_to_index(m, rep.index, [tmp_path / "nope", fixture_photos[3]])
    assert rep2.added == 1 and rep2.index.count == 4 and len(rep2.errors) == 1
    assert "nope" in rep2.errors[0].error
