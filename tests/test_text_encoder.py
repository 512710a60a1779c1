"""mkt.runtime.text: the shipped MiniLM ONNX encoder against sentence-transformers, empty and
Unicode text, truncation, batching, loading from a bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mkt.runtime.errors import MktError
from mkt.runtime.text import EmptyTextError, TextEncoder, TextModelError
from tests.test_text_support import bundle_with_text, text_model_dir, text_section

SENTENCES = [
    "Oak dining table with four chairs",
    "Mountain bike, 26 inch wheels",
    "Küchentisch aus Eiche, naïve café crème brûlée",
    "二手自行车 很好",
    "Sony PlayStation 4 with two controllers and FIFA 21. Collection from Leeds only please.",
    "🪑 chair",
]


@pytest.fixture(scope="session")
def tdir():
    return text_model_dir()


@pytest.fixture(scope="session")
def enc(tdir):
    sec = text_section(tdir)
    return TextEncoder(tdir / sec["model"], tdir / sec["tokenizer"], max_tokens=sec["max_tokens"])


def test_matches_sentence_transformers(enc):
    from mkt.export.text_export import reference_embeddings

    ref = reference_embeddings(SENTENCES)
    got = enc.encode(SENTENCES)
    cos = np.sum(ref * got, axis=1)
    assert got.shape == (len(SENTENCES), 384) and got.dtype == np.float32
    assert cos.min() >= 0.98, cos  # int8: >= 0.99 on average, see the export's parity report
    assert cos.mean() >= 0.99, cos
    # and it is not trivially similar to everything: different sentences differ
    assert float(got[0] @ got[3]) < 0.9


def test_normalised_and_batch_invariant(enc):
    both = enc.encode(SENTENCES, batch_size=4)
    assert np.allclose(np.linalg.norm(both, axis=1), 1.0, atol=1e-5)
    one_by_one = np.stack([enc.encode([s])[0] for s in SENTENCES])
    # padding to the longest text in a batch must not change an embedding
    assert np.abs(both - one_by_one).max() < 2e-3


@pytest.mark.parametrize("bad", ["", "   ", "\n\t \r"])
def test_empty_text_is_an_error(enc, bad):
    with pytest.raises(EmptyTextError, match="empty") as ei:
        enc.encode([bad])
    assert isinstance(ei.value, MktError)
    with pytest.raises(EmptyTextError):
        enc.encode(["fine", bad])


def test_any_unicode(enc):
    texts = ["🪑🪑🪑", "\u200b zero width", "مقعد خشب", "\x00control\x07chars", "a" * 5000]
    v = enc.encode(texts)
    assert np.all(np.isfinite(v)) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_truncation_is_reported(enc):
    long = " ".join(["sofa"] * 400)
    v = enc.encode(["sofa", long])
    assert enc.last_truncated == [False, True]
    # what is embedded is the first max_tokens tokens: more text after that changes nothing
    w = enc.encode([long + " completely different words about bicycles"])
    assert float(v[1] @ w[0]) > 0.999


def test_from_bundle(tdir, bundle_dir, make_bundle, tmp_path):
    from mkt.runtime.bundle import load_bundle

    b = load_bundle(bundle_with_text(bundle_dir, tdir, tmp_path / "b"))
    enc = TextEncoder.from_bundle(b)
    assert enc.dim == 384 and enc.max_tokens == 128
    assert enc.encode(["oak table"]).shape == (1, 384)
    # a bundle without a text section says so
    with pytest.raises(TextModelError, match="no text model"):
        TextEncoder.from_bundle(load_bundle(make_bundle(0)))
    # tampered text model: the bundle refuses to load (sha256 in manifest files)
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    p = tmp_path / "b" / m["text"]["model"]
    p.write_bytes(p.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(MktError, match="sha256"):
        load_bundle(tmp_path / "b")


def test_missing_files(tmp_path):
    with pytest.raises(TextModelError, match="missing"):
        TextEncoder(tmp_path / "nope.onnx", tmp_path / "tok.json")
