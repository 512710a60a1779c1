"""The start-up caches (mkt.runtime.session, mkt.runtime.hashcache) change nothing but speed:
a session of the cached optimised graph gives the same outputs as one optimised in memory, a
damaged cache file is not used, and a changed byte in a bundle file is still refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mkt.runtime import hashcache
from mkt.runtime.bundle import load_bundle
from mkt.runtime.errors import BundleError
from mkt.runtime.images import load_letterboxed
from mkt.runtime.session import cpu_session


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("MKT_CACHE_DIR", str(d))
    monkeypatch.setenv("MKT_ORT_CACHE", "1")
    monkeypatch.setenv("MKT_HASH_CACHE", "1")
    return d


def _outputs(sess, x):
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: x})


def test_cached_optimised_graph_gives_identical_outputs(bundle_dir, fixture_photos, cache_dir):
    b = load_bundle(bundle_dir)
    x = np.stack([load_letterboxed(p, b.input_size) for p in fixture_photos[:4]])
    for variant in b.models:
        src = b.model_path(variant)
        ref = _outputs(cpu_session(src, 1, cache=False), x)
        first = cpu_session(src, 1)  # optimises and writes the cache
        saved = sorted((cache_dir / "ort").glob(f"{src.stem}-*.onnx"))
        assert len(saved) == 1, saved
        second = cpu_session(src, 1)  # loads the cached graph
        assert Path(second._model_path) == saved[0]
        for sess in (first, second):
            for a, r in zip(_outputs(sess, x), ref, strict=True):
                np.testing.assert_array_equal(a, r)


def test_damaged_cache_is_not_used(bundle_dir, fixture_photos, cache_dir):
    b = load_bundle(bundle_dir)
    src = b.model_path(b.default_variant)
    x = np.stack([load_letterboxed(p, b.input_size) for p in fixture_photos[:2]])
    ref = _outputs(cpu_session(src, 1, cache=False), x)
    cpu_session(src, 1)
    (opt,) = (cache_dir / "ort").glob(f"{src.stem}-*.onnx")
    data = bytearray(opt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    opt.write_bytes(bytes(data))
    sess = cpu_session(src, 1)
    assert Path(sess._model_path) == src  # optimised again from the source, cache rewritten
    for a, r in zip(_outputs(sess, x), ref, strict=True):
        np.testing.assert_array_equal(a, r)
    rec = json.loads(opt.with_suffix(".json").read_text())
    assert rec["sha256"] == hashcache.sha256_file(opt)


def test_hash_memo_sees_a_changed_byte(tmp_path, cache_dir):
    f = tmp_path / "f.bin"
    f.write_bytes(b"a" * 1000)
    h1 = hashcache.sha256_cached(f)
    assert hashcache.sha256_cached(f) == h1
    st = f.stat()
    f.write_bytes(b"b" + b"a" * 999)  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old mtime put back
    assert hashcache.sha256_cached(f) == hashcache.sha256_file(f) != h1


def test_bundle_byte_flip_refused_after_a_cached_verify(bundle_dir, tmp_path, cache_dir):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(bundle_dir, b)
    load_bundle(b)  # hashes remembered
    load_bundle(b)
    name = json.loads((b / "manifest.json").read_text())["files"]
    target = b / next(iter(name))
    data = bytearray(target.read_bytes())
    data[0] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        load_bundle(b)
