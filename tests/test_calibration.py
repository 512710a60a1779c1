"""Honest scores: temperature scaling lowers ECE; junk input is flagged ``uncertain``."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mkt.runtime.calibration import Calibration, pixel_stats
from mkt.runtime.preprocess import Preprocess

pytest.importorskip("scipy")
pytest.importorskip("sklearn")

from mkt.export.calibrate import (  # noqa: E402
    confidence_floor,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    softmax_t,
)


def _overconfident(n: int = 4000, c: int = 5, seed: int = 0):
    """Logits of a classifier right ~60% of the time but scaled 3x: over-confident."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(0, 1, (n, c))
    logits[np.arange(n), y] += 1.2
    return logits * 3.0, y


def test_temperature_fixes_overconfidence():
    logits, y = _overconfident()
    t = fit_temperature(logits, y)
    assert 2.0 < t < 4.5  # the 3x scaling is found again
    before = expected_calibration_error(softmax_t(logits), y)
    after = expected_calibration_error(softmax_t(logits, t), y)
    assert before > 0.1 and after < 0.03


def test_confidence_floor_flags_mostly_wrong_answers():
    logits, y = _overconfident()
    p = softmax_t(logits, fit_temperature(logits, y))
    conf, correct = p.max(1), p.argmax(1) == y
    t = confidence_floor(conf, correct)
    flagged = conf < t
    assert 0 < flagged.mean() <= 0.2
    assert correct[flagged].mean() <= 0.4 < correct[~flagged].mean()


def _junk() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    im = Image.new("RGB", (224, 224), "white")
    d = ImageDraw.Draw(im)
    for k in range(12):
        d.text((5, 5 + 17 * k), "Lorem ipsum dolor sit amet, consectetur", fill="black")
    return {"noise": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            "blank": np.full((224, 224, 3), 255, np.uint8),
            "screenshot": np.asarray(im)}


def test_junk_flagged_real_photos_not(fixture_photos, tmp_path):
    """Thresholds fitted on real photos (the committed fixtures stand in for val) flag noise,
    a blank frame and a screenshot of text, and none of the real photos."""
    pre = Preprocess()
    real = np.stack([pre.load(p) for p in fixture_photos])
    rng = np.random.default_rng(1)
    n = len(real)
    emb = rng.normal(size=(n, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    logits = rng.normal(size=(n, 4)) * 4
    y = logits.argmax(1)  # a confident, right model: the confidence floor stays out of the way
    section, ref = fit_calibration(logits, y, emb, emb, real, n_ref=8, ref_quantile=0.0)
    np.save(tmp_path / "reference.npy", ref)
    cal = Calibration.from_manifest(section, tmp_path)
    assert not cal.flags(softmax_t(logits, section["temperature"]), emb, real).any()
    junk = _junk()
    x = np.stack(list(junk.values()))
    probs = np.tile(np.eye(4)[:1], (len(x), 1))  # the model is sure: only pixels can tell
    flags = cal.flags(probs, emb[: len(x)], x)
    assert flags.tolist() == [True] * len(x), dict(zip(junk, flags, strict=True))
    st = pixel_stats(x)
    assert st[1, 0] == 0.0  # blank: no variation at all


def test_hostile_calibration_numbers_are_ignored(tmp_path):
    (tmp_path / "reference.npy").write_bytes(b"not numpy")
    cal = Calibration.from_manifest({"temperature": 0, "min_confidence": 7, "reference":
                                     "reference.npy", "min_reference_similarity": 0.5,
                                     "max_pixel_gradient": float("nan")}, tmp_path)
    assert cal.temperature == 1.0 and cal.min_confidence is None and cal.reference is None
    assert cal.max_pixel_gradient is None
    assert Calibration.from_manifest("junk").temperature == 1.0


def test_shipped_bundle_flags_junk_in_classify_similar_and_price(tmp_path, fixture_photos):
    """Through the commands, on the shipped bundle and catalogue: noise, a blank frame and a
    screenshot of text are ``uncertain``; the committed example photos are not."""
    from pathlib import Path

    from PIL import Image

    from tests.conftest import jlines, run

    junk = []
    for name, arr in _junk().items():
        p = tmp_path / f"{name}.png"
        Image.fromarray(arr).save(p)
        junk.append(p)
    examples = sorted((Path(__file__).resolve().parent.parent / "mkt" / "assets" /
                       "examples").glob("*.jpg"))
    for cmd in ("classify", "similar", "price"):
        res = run(cmd, *junk, *examples, "--json")
        assert res.exit_code == 0, res.output
        flags = [r["uncertain"] for r in jlines(res.stdout)]
        if cmd == "classify":
            assert flags == [True] * len(junk) + [False] * len(examples), flags
        else:  # far from the catalogue: noise at least; the examples never
            assert flags[0] and flags[len(junk):] == [False] * len(examples), (cmd, flags)


def test_pixel_stats_match_the_plain_formula():
    """The channel-by-channel pixel_stats gives the numbers the thresholds were fitted with:
    grey = mean over channels, content = any channel above the pad level, on photos, noise,
    flat frames and a letterboxed strip."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (6, 48, 48, 3), dtype=np.uint8)
    x[1] = 0
    x[2] = 9
    x[3, :20] = 0
    x[4] = rng.integers(0, 12, (48, 48, 3), dtype=np.uint8)
    for i, a in enumerate(x):
        g = a.astype(np.float32).mean(2)
        content = a.max(2) > 8
        std = float(g[content].std()) if content.sum() > 16 else 0.0
        grad = float(np.abs(np.diff(g, axis=1)).mean())
        assert pixel_stats(a).tolist() == [[std, grad, float(np.float32(content.mean()))]], i
