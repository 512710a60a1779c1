"""mkt.export.fusion (fit) + mkt.runtime.fusion (apply): the photo + title category fusion and
the fused price kNN, on synthetic listings where the answer is known."""

from __future__ import annotations

import io

import numpy as np
import pytest

from mkt.runtime.errors import BundleError
from mkt.runtime.fusion import Fusion, knn_log_price, listing_photo_features

LABELS = ["A", "B", "C"]


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _synthetic(n=600, seed=0):
    """Listings whose category is readable from the title for half of them (the photos are
    uninformative: flat logits) and from the photos for the other half (the title is noise):
    only a fusion of both gets (nearly) all right."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    title_dir = _unit(rng.standard_normal((3, 384)))
    photo_dir = rng.standard_normal((3, 3)) * 3
    title_ok = rng.random(n) < 0.5
    title = np.where(title_ok[:, None], title_dir[y], 0.0)
    title = _unit(title + 0.03 * rng.standard_normal((n, 384))).astype(np.float32)
    logits = np.where(title_ok[:, None], 0.0, photo_dir[y])
    photo_ids, photo_pids, plog, pemb = [], [], [], []
    for i in range(n):
        for j in range(2):
            photo_ids.append(f"p{i}_{j}")
            photo_pids.append(f"L{i}")
            plog.append(logits[i] + 0.1 * rng.standard_normal(3))
            pemb.append(_unit(rng.standard_normal(8)))
    split = np.array(["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4))
    price = np.exp(2 + y + 0.1 * rng.standard_normal(n))
    return {
        "photo_ids": np.array(photo_ids), "photo_product_ids": np.array(photo_pids),
        "product_ids": np.array([f"L{i}" for i in range(n)]), "split": split,
        "category": np.array([LABELS[c] for c in y]), "price": price, "title_emb": title,
        "listing_emb": title,
        "labels": np.array(LABELS), "photo_logits": np.array(plog, np.float32),
        "photo_embedding": np.array(pemb, np.float32),
    }


def test_fit_then_apply_category(tmp_path):
    pytest.importorskip("sklearn")
    from mkt.export.fusion import fit_category, listing_features

    f = _synthetic()
    L = listing_features(f)
    arrays, rep = fit_category(f, L, log=lambda m: None)
    assert rep["photo_only"]["test"] < 0.85 and rep["title_only_C1"]["test"] < 0.85
    # fusion beats both by far
    assert rep["test_top1"] >= 0.9
    assert rep["test_top1"] > max(rep["photo_only"]["test"], rep["title_only_C1"]["test"]) + 0.1
    buf = io.BytesIO()
    np.savez(buf, **arrays, price_alpha=np.float32(0.5), price_k=np.int32(5),
             price_tau=np.float32(0.1), model_id=np.array("m1"))
    (tmp_path / "fusion.npz").write_bytes(buf.getvalue())
    fu = Fusion.load(tmp_path, model_id="m1")
    # the runtime reproduces sklearn's predictions from the raw model outputs
    te = np.flatnonzero(f["split"] == "test")
    ok = 0
    for i in te:
        rows = np.flatnonzero(f["photo_product_ids"] == f["product_ids"][i])
        top = fu.classify_listing(f["photo_logits"][rows], f["photo_embedding"][rows],
                                  f["title_emb"][i], k=3)
        assert len(top) == 3 and abs(sum(p for _, p in top) - 1) < 1e-4
        ok += top[0][0] == f["category"][i]
    assert ok / len(te) == pytest.approx(rep["test_top1"], abs=1e-9)
    with pytest.raises(BundleError, match="fitted on model m1"):
        Fusion.load(tmp_path, model_id="other")


def test_listing_photo_features():
    lp, e = listing_photo_features(np.array([[2.0, 0.0], [0.0, 0.0]]),
                                   np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert np.allclose(np.exp(lp).sum(), 1) and lp[0] > lp[1]
    assert np.allclose(e, [2 ** -0.5, 2 ** -0.5], atol=1e-6)
    with pytest.raises(ValueError):
        listing_photo_features(np.zeros((0, 2)), np.zeros((0, 2)))


def test_knn_log_price_fuses_photo_and_title():
    rng = np.random.default_rng(1)
    ce, ct = _unit(rng.standard_normal((50, 256))), _unit(rng.standard_normal((50, 384)))
    y = rng.normal(4, 1, 50)
    # query: photo identical to listing 3, title identical to listing 7
    qe, qt = ce[3:4], ct[7:8]
    assert knn_log_price(qe, qt, ce, ct, y, alpha=1.0, k=1, tau=0.1)[0] == pytest.approx(y[3])
    assert knn_log_price(qe, qt, ce, ct, y, alpha=0.0, k=1, tau=0.1)[0] == pytest.approx(y[7])
    mid = knn_log_price(qe, qt, ce, ct, y, alpha=0.5, k=2, tau=1e3)[0]
    assert mid == pytest.approx((y[3] + y[7]) / 2, abs=0.05)


def test_fit_price_on_synthetic():
    pytest.importorskip("sklearn")
    from mkt.export.fusion import fit_price, listing_features

    f = _synthetic()
    arrays, rep = fit_price(f, listing_features(f), log=lambda m: None)
    # price follows the category, readable from title or photo: the fused kNN wins
    assert rep["test_r2_log"] > max(rep["photo_only"]["test_r2_log"],
                                    rep["title_only"]["test_r2_log"])
    assert 0.0 < float(arrays["price_alpha"]) < 1.0
