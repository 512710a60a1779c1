"""mkt.runtime.html and `--html`: self-contained pages with inlined thumbnails, everything
escaped, missing photos marked; a headless-Chromium screenshot when Chromium is installed."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import tempfile

import markupsafe
import pytest
from PIL import Image

from mkt.runtime.html import PhotoResolver, dupes_page, similar_page, thumbnail_data_uri
from mkt.runtime.index import Hit
from tests.conftest import build_index, run

EVIL = '<script>alert("x")</script> & "quotes" <img src=x onerror=alert(1)>'


def _uris(text: str) -> list[str]:
    return re.findall(r'src="(data:image/jpeg;base64,[A-Za-z0-9+/=]+)"', text)


def test_thumbnail_is_a_small_jpeg(fixture_photos, tmp_path):
    uri = thumbnail_data_uri(fixture_photos[0])
    assert uri.startswith("data:image/jpeg;base64,")
    im = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert im.format == "JPEG" and max(im.size) <= 160
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    assert thumbnail_data_uri(tmp_path / "bad.jpg") is None
    assert thumbnail_data_uri(tmp_path / "missing.jpg") is None


def test_resolver_roots(dataset_dir, tmp_path, monkeypatch):
    name = sorted((dataset_dir / "images").glob("*.jpg"))[0].name
    r = PhotoResolver([tmp_path, dataset_dir])
    assert r.resolve(f"images/{name}") == dataset_dir / "images" / name
    assert r.resolve("images/nope.jpg") is None and r.resolve(None) is None
    monkeypatch.setenv("MKT_PHOTOS_ROOT", str(dataset_dir))
    monkeypatch.chdir(tmp_path)
    assert PhotoResolver.default().resolve(f"images/{name}") is not None


def test_resolver_uses_index_provenance(dataset_dir, tmp_path, monkeypatch):
    import json
    import os

    name = sorted((dataset_dir / "images").glob("*.jpg"))[0].name
    idx = tmp_path / "idx"
    idx.mkdir()
    monkeypatch.delenv("MKT_PHOTOS_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    rel = os.path.relpath(dataset_dir, tmp_path)  # relative to where the build ran (cwd)
    (idx / "index.json").write_text(json.dumps({"provenance": {"source": rel}}))
    assert PhotoResolver.default(idx).resolve(f"images/{name}") == \
        tmp_path / rel / "images" / name
    (idx / "index.json").write_text("{broken")
    assert tmp_path / rel not in PhotoResolver.default(idx).roots  # ignored, no error


def test_similar_page_escapes_and_inlines(dataset_dir, fixture_photos):
    imgs = sorted((dataset_dir / "images").glob("*.jpg"))
    hits = [
        Hit(imgs[0].stem, 0.91, 0, {"title": EVIL, "price": 12.5, "category": "Home & Garden",
                                    "path": f"images/{imgs[0].name}"}),
        Hit("gone", 0.5, 1, {"title": "Plain title", "price": None, "path": "images/gone.jpg"}),
    ]
    text = similar_page([(str(fixture_photos[0]), hits)],
                        resolver=PhotoResolver([dataset_dir]),
                        errors=[("x<y>.jpg", "x<y>.jpg: not a recognised image format")])
    assert text.startswith("<!DOCTYPE html>")
    assert len(_uris(text)) == 2  # the query and the one local result
    assert "<script" not in text.lower()
    assert str(markupsafe.escape(EVIL)) in text  # the title, shown as text
    assert "<img src=x" not in text
    assert "Plain title" in text and "£12.50" in text and "0.910" in text
    assert "photo not available locally" in text
    assert "x&lt;y&gt;.jpg" in text
    assert "http://" not in text and "https://" not in text  # nothing fetched from anywhere


def test_dupes_page(fixture_photos):
    groups = [{"photos": [{"id": "a", "path": "a.jpg", "file": fixture_photos[0],
                           "title": EVIL, "price": 3},
                          {"id": "b<", "path": "b.jpg", "file": None, "source": "index"}],
               "pairs": [{"a": "a", "b": "b<", "score": 0.99, "hash_distance": 2}]}]
    text = dupes_page(groups)
    assert len(_uris(text)) == 1 and "photo not available locally" in text
    assert "<script" not in text.lower() and "b&lt;" in text and "0.9900" in text
    assert "no duplicate photos found" in dupes_page([])


@pytest.fixture(scope="module")
def built_index(tmp_path_factory, bundle_dir, dataset_dir):
    return build_index(tmp_path_factory, bundle_dir, dataset_dir)


def test_cli_similar_html(built_index, bundle_dir, dataset_dir, fixture_photos, tmp_path,
                          monkeypatch):
    monkeypatch.setenv("MKT_PHOTOS_ROOT", str(dataset_dir))
    out = tmp_path / "sub" / "similar.html"
    res = run("similar", fixture_photos[0], fixture_photos[1], "-k", "3", "--index", built_index,
              "--bundle", bundle_dir, "--json", "--html", out)
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert len(_uris(text)) == 2 * (1 + 3)
    assert str(fixture_photos[1]) in text and "£" in text


def test_cli_similar_html_without_local_photos(built_index, bundle_dir, fixture_photos,
                                               tmp_path, monkeypatch):
    monkeypatch.delenv("MKT_PHOTOS_ROOT", raising=False)
    monkeypatch.setattr(PhotoResolver, "default",
                        classmethod(lambda cls, *a, **k: cls([tmp_path])))
    out = tmp_path / "similar.html"
    res = run("similar", fixture_photos[0], "-k", "2", "--index", built_index,
              "--bundle", bundle_dir, "--html", out)
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert len(_uris(text)) == 1 and text.count("photo not available locally") == 2
    assert "mkt: warning:" in res.stderr and "2 of 2 result photos not found" in res.stderr
    assert "--photos-root" in res.stderr


def test_cli_similar_html_photos_root(built_index, bundle_dir, dataset_dir, fixture_photos,
                                      tmp_path, monkeypatch):
    """--photos-root finds the photos when the index's recorded source does not."""
    monkeypatch.delenv("MKT_PHOTOS_ROOT", raising=False)
    idx = tmp_path / "moved"
    import json
    import shutil as sh

    sh.copytree(built_index, idx)
    info = json.loads((idx / "index.json").read_text())
    info["provenance"]["source"] = "/nowhere"  # the build folder is gone
    (idx / "index.json").write_text(json.dumps(info))
    from mkt.runtime.html import PhotoResolver

    assert PhotoResolver.default(idx).resolve(f"images/{fixture_photos[0].name}") is None
    assert PhotoResolver.default(idx, [dataset_dir]).resolve(
        f"images/{fixture_photos[0].name}") is not None


def test_runtime_pages_need_no_checkout():
    """No thumbnails from a hard-coded data folder; templates ship as package data."""
    from pathlib import Path

    import mkt.runtime.html as H

    src = Path(H.__file__).read_text()
    assert "shared" not in src and "parent.parent.parent" not in src
    tpl = Path(H.__file__).parent / "templates"
    assert {"base.html.j2", "similar.html.j2", "dupes.html.j2"} <= {p.name for p in
                                                                      tpl.iterdir()}


def test_cli_html_unwritable_is_one_error_line(built_index, bundle_dir, fixture_photos,
                                               tmp_path):
    (tmp_path / "file").write_text("x")
    res = run("similar", fixture_photos[0], "--index", built_index, "--bundle", bundle_dir,
              "--html", tmp_path / "file" / "page.html")
    assert res.exit_code == 2 and "mkt: error:" in res.output


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_page_renders_in_headless_chromium(fixture_photos, tmp_path):
    hits = [Hit("r1", 0.9, 0, {"title": EVIL, "price": 5.0, "path": str(fixture_photos[1])})]
    page = tmp_path / "p.html"
    page.write_text(similar_page([(str(fixture_photos[0]), hits)], resolver=PhotoResolver()))
    png = tmp_path / "p.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={tempfile.mkdtemp()}", f"--screenshot={png}",
           "--window-size=800,600", page.as_uri()]
    try:
        subprocess.run(cmd, capture_output=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.skip("chromium timed out")
    if not png.exists():
        pytest.skip("chromium wrote no screenshot")
    im = Image.open(png).convert("RGB")
    assert im.size == (800, 600)
    # the two thumbnails are drawn: plenty of distinct colours, not a blank page
    assert len(im.getcolors(maxcolors=1 << 20) or []) > 500
