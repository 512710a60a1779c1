"""The bad-input corpus (tests/badinputs.py) through the loader and every runtime command.

Each command gets the whole corpus in one batch together with good photos. For every entry it
must give the right answer: a normal result for a valid image, or one error line that names
the file and says why. Anything failing means a non-zero exit, and there is never a
traceback. The good photos in the batch are still processed. Most runs are in-process
(typer's CliRunner, fast); two go through the real entry point (``python -m mkt.cli``) as a
subprocess.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mkt.runtime.errors import BadImageError, ImageTooLargeError
from mkt.runtime.images import load_image, load_letterboxed
from tests.badinputs import CASE_NAMES, Case, make_corpus
from tests.conftest import build_index, jlines, run

N_GOOD = 3


# -- helpers ----------------------------------------------------------------------------------


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("mkt: error:")]


def assert_one_error_line(lines: list[str], case: Case, reason: str | None = None) -> None:
    """Exactly one error line names ``case``'s file, and it says why (``reason`` regex)."""
    mine = [ln for ln in lines if str(case.path) in ln]
    assert len(mine) == 1, (case.name, lines)
    assert re.search(reason or case.reason, mine[0], re.I), (case.name, mine[0])


def assert_json_rows(rows: list[dict], cases: list[Case], ok_key: str,
                     reasons: dict[str, str] | None = None) -> dict[str, dict]:
    """One row a case, keyed by path: a result (``ok_key``) for valid ones, else an error
    that names the file and matches the case's reason."""
    by_path: dict[str, dict] = {}
    for r in rows:
        assert r["path"] not in by_path, f"two rows for {r['path']}"
        by_path[r["path"]] = r
    assert set(by_path) == {str(c.path) for c in cases}
    for c in cases:
        r = by_path[str(c.path)]
        if c.valid:
            assert ok_key in r and "error" not in r, (c.name, r)
        else:
            assert set(r) == {"path", "error"}, (c.name, r)
            assert str(c.path) in r["error"] and "\n" not in r["error"]
            assert re.search((reasons or {}).get(c.name, c.reason), r["error"], re.I), (
                c.name, r["error"])
    return by_path


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, fixture_photos) -> list[Case]:
    return make_corpus(tmp_path_factory.mktemp("bad") / "corpus", fixture_photos[:N_GOOD])


@pytest.fixture(scope="module")
def by_name(corpus) -> dict[str, Case]:
    return {c.name: c for c in corpus}


@pytest.fixture(scope="module")
def built_index(tmp_path_factory, bundle_dir, dataset_dir) -> Path:
    return build_index(tmp_path_factory, bundle_dir, dataset_dir, "--M", "8",
                       "--ef-construction", "40")


def test_corpus_is_generated_complete(corpus):
    names = [c.name for c in corpus]
    assert names[:N_GOOD] == [f"good{i}" for i in range(N_GOOD)]
    assert tuple(names[N_GOOD:]) == CASE_NAMES
    assert sum(c.valid for c in corpus) == N_GOOD + 12
    # the "huge" files are sparse: the corpus costs well under a few MB of disk
    used = sum(c.path.stat().st_blocks * 512 for c in corpus
               if c.path.is_file() and not c.path.is_symlink())
    assert used < 8 * 1024 * 1024, used


# -- the loader -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASE_NAMES)
def test_loader_on_each_case(by_name, name):
    c = by_name[name]
    if c.valid:
        im = load_image(c.path)
        assert im.mode == "RGB"
        assert im.size == c.size if c.size else sorted(im.size) == [48, 64]
        a = load_letterboxed(c.path, 224)
        assert a.shape == (224, 224, 3) and a.dtype == np.uint8
        data = c.path.read_bytes()  # same answer from bytes (the serve path)
        assert np.array_equal(load_letterboxed(data, 224, name=c.path.name), a)
        return
    with pytest.raises(BadImageError) as ei:
        load_letterboxed(c.path, 224)
    msg = str(ei.value)
    assert msg.startswith(f"{c.path}: ") and "\n" not in msg, msg
    assert re.search(c.reason, msg, re.I), msg
    if name in ("bomb_20000px", "oversize_300mb"):
        assert isinstance(ei.value, ImageTooLargeError)


def test_loader_specific_reasons(by_name):
    """The reasons are the precise ones, not a generic 'cannot decode'."""
    def why(name: str) -> str:
        with pytest.raises(BadImageError) as ei:
            load_image(by_name[name].path)
        return str(ei.value).split(": ", 1)[1]

    assert why("empty") == "empty file (0 bytes)"
    assert "HEIC/HEIF" in why("heic") and "not supported" in why("heic")
    assert "HTML" in why("html_as_jpg")
    assert why("text_as_jpg") == "not a recognised image format"
    assert "symbolic link" in why("symlink_loop")
    assert why("missing") == "no such file"
    assert "directory" in why("directory")
    assert "file too large" in why("oversize_300mb")
    assert "image too large" in why("bomb_20000px")


def test_loader_valid_cases_decode_right(by_name):
    # EXIF orientation 6: stored 64x48 is shown 48x64, rotated clockwise: the stored left
    # column becomes the top row.
    stored = np.asarray(Image.open(by_name["exif_rotated"].path).convert("RGB")).astype(int)
    shown = np.asarray(load_image(by_name["exif_rotated"].path)).astype(int)
    assert np.abs(shown[0, :, :] - stored[::-1, 0, :]).mean() < 12
    # animated GIF: the first frame; palette GIF and 16-bit PNG: real colours/levels
    first = np.asarray(Image.open(by_name["animated_gif"].path).convert("RGB"))
    assert np.array_equal(np.asarray(load_image(by_name["animated_gif"].path)), first)
    deep = np.asarray(load_image(by_name["png_16bit"].path))
    assert deep.min() == 0 and deep.max() == 255  # scaled from 16 bit, not clipped
    # alpha: transparent pixels are black (the letterbox pad colour)
    rgba = np.asarray(load_image(by_name["png_alpha"].path)).astype(int)
    assert rgba[:, 0].max() == 0 and rgba[:, -1].min() > 0
    one = load_letterboxed(by_name["one_pixel"].path, 224)
    assert one.reshape(-1, 3).max(axis=0).tolist() == [200, 10, 10]


# -- classify ---------------------------------------------------------------------------------


def test_classify_corpus_json(corpus, bundle_dir):
    res = run("classify", *[c.path for c in corpus], "--json", "--bundle", bundle_dir)
    assert res.exit_code == 1
    labels = json.loads((bundle_dir / "manifest.json").read_text())["labels"]
    rows = assert_json_rows(jlines(res.stdout), corpus, "category")
    for c in corpus:
        if c.valid:
            assert rows[str(c.path)]["category"] in labels
    assert res.stderr == ""  # with --json, errors are JSON rows on stdout


def test_classify_corpus_human(corpus, bundle_dir):
    res = run("classify", *[c.path for c in corpus], "--bundle", bundle_dir)
    assert res.exit_code == 1
    out = res.stdout.splitlines()
    errs = error_lines(res.stderr)
    for c in corpus:
        if c.valid:
            assert sum(ln.startswith(f"{c.path}: ") for ln in out) == 1, c.name
        else:
            assert_one_error_line(errs, c)
    bad = sum(not c.valid for c in corpus)
    assert f"{bad} of {len(corpus)} photos could not be read" in res.stderr
    assert len(errs) == bad + 1  # one line a bad photo, one summary


def test_classify_listing_corpus(corpus, bundle_dir):
    res = run("classify", *[c.path for c in corpus], "--listing", "--json", "--bundle",
              bundle_dir)
    assert res.exit_code == 1
    rows = jlines(res.stdout)
    (listing,) = [r for r in rows if "paths" in r]
    assert listing["paths"] == [str(c.path) for c in corpus if c.valid]
    assert {r["path"] for r in rows if "error" in r} == {str(c.path) for c in corpus
                                                         if not c.valid}


def test_all_bad_batch_exits_1_and_all_good_exits_0(corpus, bundle_dir):
    bad = [c.path for c in corpus if not c.valid]
    res = run("classify", *bad, "--json", "--bundle", bundle_dir)
    assert res.exit_code == 1 and len(jlines(res.stdout)) == len(bad)
    good = [c.path for c in corpus if c.valid]
    res = run("classify", *good, "--json", "--bundle", bundle_dir)
    assert res.exit_code == 0 and len(jlines(res.stdout)) == len(good)


# -- similar / price --------------------------------------------------------------------------


def test_similar_corpus(corpus, bundle_dir, built_index):
    res = run("similar", *[c.path for c in corpus], "-k", "3", "--json", "--index",
              built_index, "--bundle", bundle_dir)
    assert res.exit_code == 1
    rows = assert_json_rows(jlines(res.stdout), corpus, "results")
    for c in corpus:
        if c.valid:
            assert len(rows[str(c.path)]["results"]) == 3
    # a good photo that is in the index finds itself first, bad photos around it or not
    assert rows[str(corpus[0].path)]["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)

    res = run("similar", *[c.path for c in corpus], "-k", "2", "--index", built_index,
              "--bundle", bundle_dir)
    assert res.exit_code == 1
    errs = error_lines(res.stderr)
    for c in corpus:
        if not c.valid:
            assert_one_error_line(errs, c)


def test_price_corpus(corpus, bundle_dir, built_index):
    res = run("price", *[c.path for c in corpus], "-k", "5", "--json", "--index", built_index,
              "--bundle", bundle_dir)
    assert res.exit_code == 1
    rows = assert_json_rows(jlines(res.stdout), corpus, "price")
    for c in corpus:
        if c.valid:
            r = rows[str(c.path)]
            assert r["price"] > 0 and 0 < r["low"] <= r["high"]
    res = run("price", *[c.path for c in corpus], "--index", built_index, "--bundle",
              bundle_dir)
    assert res.exit_code == 1
    errs = error_lines(res.stderr)
    for c in corpus:
        if not c.valid:
            assert_one_error_line(errs, c)
        else:
            assert sum(ln.startswith(f"{c.path}: £") for ln in res.stdout.splitlines()) == 1


# -- dupes ------------------------------------------------------------------------------------

# A directory given as a source is a folder of photos (this one is empty), not a bad photo.
FOLDER_SOURCE_REASONS = {"directory": r"no photos found"}


def test_dupes_corpus(corpus, bundle_dir, tmp_path):
    copy = tmp_path / "copy-of-good-0.jpg"  # a byte-identical copy must be grouped
    shutil.copyfile(corpus[0].path, copy)
    paths = [c.path for c in corpus if c.name != "directory"] + [copy]
    res = run("dupes", *paths, "--json", "--bundle", bundle_dir)
    assert res.exit_code == 1
    rows = jlines(res.stdout)
    errors = {r["path"]: r["error"] for r in rows if "error" in r}
    groups = [r for r in rows if "group" in r]
    for c in corpus:
        if c.valid or c.name == "directory":
            assert str(c.path) not in errors, (c.name, errors.get(str(c.path)))
        else:
            assert str(c.path) in errors[str(c.path)] and re.search(c.reason, errors[str(
                c.path)], re.I), (c.name, errors[str(c.path)])
    assert len(errors) == sum(not c.valid for c in corpus) - 1
    assert any({p["path"] for p in g["photos"]} >= {str(corpus[0].path), str(copy)}
               for g in groups), groups
    n_valid = sum(c.valid for c in corpus) + 1
    assert f"mkt: {n_valid} photos checked" in res.stderr

    res = run("dupes", *paths, "--bundle", bundle_dir)
    assert res.exit_code == 1
    errs = error_lines(res.stderr)
    for c in corpus:
        if not c.valid and c.name != "directory":
            assert_one_error_line(errs, c)


# -- index build / add ------------------------------------------------------------------------


def test_index_build_corpus_folder(corpus, bundle_dir, tmp_path):
    folder = corpus[0].path.parent
    out = tmp_path / "idx"
    res = run("index", "build", folder, "--out", out, "--bundle", bundle_dir)
    assert res.exit_code == 1
    errs = error_lines(res.stderr)
    for c in corpus:
        if not c.valid and c.in_folder:
            assert_one_error_line(errs, c)
    assert len(errs) == sum(not c.valid and c.in_folder for c in corpus)
    (info,) = jlines(run("index", "info", out, "--json").stdout)
    from mkt.runtime.index import Index

    idx = Index.open(out)
    assert sorted(idx.ids()) == sorted(c.stem for c in corpus if c.valid)
    assert info["count"] == sum(c.valid for c in corpus)
    assert idx.get("фото 写真 😀")["path"] == "фото 写真 😀.jpg"


@pytest.mark.parametrize("name", ["missing", "symlink_loop", "directory", "text_as_jpg"])
def test_index_build_bad_source(by_name, bundle_dir, tmp_path, name):
    c = by_name[name]
    res = run("index", "build", c.path, "--out", tmp_path / "idx", "--bundle", bundle_dir)
    assert res.exit_code in (1, 2)
    errs = error_lines(res.stderr)
    assert errs and all(str(c.path) in ln for ln in errs), errs
    if name == "text_as_jpg":  # one photo, unreadable: reported, an empty index is written
        assert res.exit_code == 1 and "not a recognised image format" in errs[0]


def test_index_add_corpus(corpus, bundle_dir, built_index, tmp_path):
    idx_dir = tmp_path / "idx"
    shutil.copytree(built_index, idx_dir)
    from mkt.runtime.index import Index

    before = set(Index.open(idx_dir).ids())
    res = run("index", "add", idx_dir, *[c.path for c in corpus], "--bundle", bundle_dir)
    assert res.exit_code == 1
    errs = error_lines(res.stderr)
    for c in corpus:
        if not c.valid:
            assert_one_error_line(errs, c, FOLDER_SOURCE_REASONS.get(c.name))
    assert len(errs) == sum(not c.valid for c in corpus)
    after = Index.open(idx_dir)
    assert set(after.ids()) == before | {c.stem for c in corpus if c.valid}
    assert after.get("good-0")["path"] == "good-0.jpg"


# -- serve uploads ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(bundle_dir, built_index):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    pytest.importorskip("multipart")
    serve = pytest.importorskip("mkt.serve")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    with TestClient(serve.create_app(bundle_dir, built_index), raise_server_exceptions=False) \
            as c:
        yield c


# Only file contents can be uploaded; the 300 MB one is left out (the 60 MB one already
# exercises the upload limit without building a 300 MB request in memory).
NOT_UPLOADABLE = {"directory", "missing", "symlink_loop", "oversize_300mb"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("endpoint", ["/classify", "/similar", "/price"])
def test_serve_uploads_corpus(corpus, client, endpoint):
    key = {"/classify": "category", "/similar": "results", "/price": "price"}[endpoint]
    for c in corpus:
        if c.name in NOT_UPLOADABLE:
            continue
        r = client.post(endpoint, files={"file": (c.path.name, c.path.read_bytes(),
                                                  "application/octet-stream")})
        body = r.json()
        assert "Traceback" not in r.text
        if c.valid:
            assert r.status_code == 200, (c.name, r.text)
            assert key in body and body["path"] == c.path.name
        else:
            assert r.status_code in (400, 413), (c.name, r.status_code, r.text)
            detail = body["detail"]
            assert isinstance(detail, str) and "\n" not in detail
            if c.name == "huge_60mb":  # refused by the upload limit before it is read
                assert r.status_code == 413 and "too large" in detail
            elif c.name == "empty":
                assert "empty" in detail
            else:
                assert c.path.name in detail and re.search(c.reason, detail, re.I), detail
    # the good photos still work after all that
    for c in corpus[:N_GOOD]:
        r = client.post(endpoint, files={"file": (c.path.name, c.path.read_bytes(),
                                                  "image/jpeg")})
        assert r.status_code == 200 and key in r.json()


# -- the real entry point ---------------------------------------------------------------------


def _cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkt.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_subprocess_classify_corpus(corpus, bundle_dir):
    p = _cli("classify", *[c.path for c in corpus], "--json", "--bundle", bundle_dir,
             "--threads", "4")
    assert "Traceback" not in p.stdout + p.stderr
    assert p.returncode == 1, p.stderr
    assert_json_rows(jlines(p.stdout), corpus, "category")
    # nothing else on stderr: no Pillow "Corrupt EXIF data" warnings (in-process runs can't
    # see them: pytest captures warnings), even with photos decoded in 4 threads
    assert p.stderr == "", p.stderr

    p = _cli("classify", *[c.path for c in corpus], "--bundle", bundle_dir, "--threads", "4")
    assert p.returncode == 1
    lines = p.stderr.splitlines()
    assert all(ln.startswith("mkt: error: ") for ln in lines), p.stderr
    assert len(lines) == sum(not c.valid for c in corpus) + 1


def test_subprocess_index_add_corpus(corpus, bundle_dir, built_index, tmp_path):
    idx_dir = tmp_path / "idx"
    shutil.copytree(built_index, idx_dir)
    p = _cli("index", "add", idx_dir, *[c.path for c in corpus], "--bundle", bundle_dir)
    assert "Traceback" not in p.stdout + p.stderr
    assert p.returncode == 1
    errs = error_lines(p.stderr)
    for c in corpus:
        if not c.valid:
            assert_one_error_line(errs, c, FOLDER_SOURCE_REASONS.get(c.name))
    assert f"mkt: added {sum(c.valid for c in corpus)} photos" in p.stderr
