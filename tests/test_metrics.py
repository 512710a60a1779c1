"""The evaluation metrics on tiny hand-made arrays whose answers are known exactly."""

import math

import numpy as np
import pytest

from mkt.training import metrics as M


def test_topk_accuracy():
    logits = np.array([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    y = np.array([0, 2, 0, 1])
    assert M.topk_accuracy(logits, y, 1) == 0.25  # only row 0
    assert M.topk_accuracy(logits, y, 2) == 0.5  # + row 1 (2 is second)
    assert M.topk_accuracy(logits, y, 3) == 1.0
    assert math.isnan(M.topk_accuracy(np.zeros((0, 3)), np.zeros(0, int), 1))


def test_listing_accuracy_averages_photo_logits():
    # listing 7: photo A weakly class 1, photo B strongly class 0 -> mean says 0 (correct)
    # listing 9: one photo saying class 1, truth 0 -> wrong
    logits = np.array([[0.0, 1.0], [5.0, 0.0], [0.0, 1.0]])
    y = np.array([0, 0, 0])
    listing = np.array([7, 7, 9])
    assert M.topk_accuracy(logits, y, 1) == pytest.approx(1 / 3)
    assert M.listing_accuracy(logits, y, listing) == 0.5


def test_confusion_and_per_class():
    y = np.array([0, 0, 1, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0, 2])
    cm = M.confusion(y, pred, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    acc = M.per_class_accuracy(y, pred, 4)
    assert acc[:3].tolist() == [0.5, pytest.approx(2 / 3), 1.0]
    assert math.isnan(acc[3])
    norm = M.normalise_rows(cm)
    assert norm[1].tolist() == pytest.approx([1 / 3, 2 / 3, 0, 0])
    assert norm[3].tolist() == [0, 0, 0, 0]


def test_topk_indices_excludes_self_and_orders():
    emb = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.5, 0.5]])
    idx = M.topk_indices(emb, emb, 2, exclude_self=True, chunk=3)
    assert idx[0].tolist() == [1, 3]
    assert idx[2].tolist() == [3, 1]
    assert all(i not in row for i, row in enumerate(idx))
    assert M.topk_indices(emb, emb, 10, exclude_self=True).shape == (4, 3)


def test_same_listing_recall_exactly_half():
    # listings a=(0,1), b=(2,3); photo 4 is alone (not a query).
    # 0 and 1 are each other's nearest; 2's nearest is 4, 3's nearest is 0.
    emb = M.l2_normalise(np.array([
        [1.0, 0.0, 0.0],
        [0.95, 0.05, 0.0],
        [0.0, 0.3, 1.0],
        [0.7, 0.0, 0.3],
        [0.0, 0.25, 1.0],
    ]))
    listing = np.array([0, 0, 1, 1, 2])
    rec = M.same_listing_recall(emb, listing, ks=(1, 4), chunk=2)
    assert rec[1] == 0.5
    assert rec[4] == 1.0  # 4 candidates = all others
    assert M.same_listing_queries(listing) == 4


def test_same_listing_recall_perfect_and_random():
    rng = np.random.default_rng(0)
    centres = M.l2_normalise(rng.normal(size=(50, 32)))
    listing = np.repeat(np.arange(50), 2)
    tight = M.l2_normalise(centres[listing] + 0.01 * rng.normal(size=(100, 32)))
    assert M.same_listing_recall(tight, listing, ks=(1,))[1] == 1.0
    noise = M.l2_normalise(rng.normal(size=(100, 32)))
    assert M.same_listing_recall(noise, listing, ks=(1,))[1] < 0.2  # chance is 1/99
    assert math.isnan(M.same_listing_recall(noise[:3], np.array([0, 1, 2]))[1])


def test_category_precision_at_k():
    db = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.0, 1.0]])
    db_cat = np.array([0, 0, 1, 1])
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    # query 0 (cat 0): nearest 2 are db 0, 1 -> 2/2; query 1 (cat 1): db 3, 2 -> 2/2
    assert M.category_precision_at_k(q, np.array([0, 1]), db, db_cat, 2) == 1.0
    # query 0 with k=3 gets db 0,1,2 -> 2/3; query 1 gets 3,2,1 -> 2/3
    assert M.category_precision_at_k(q, np.array([0, 1]), db, db_cat, 3) == pytest.approx(2 / 3)
    # wrong categories: query 0 labelled 1 -> 0/2, query 1 labelled 0 -> 0/2
    assert M.category_precision_at_k(q, np.array([1, 0]), db, db_cat, 2) == 0.0


def test_valid_price_rule():
    p = np.array([0.0, -1, 5, 100_000, 100_001, np.nan])
    assert M.valid_price(p).tolist() == [False, False, True, True, False, False]


def test_knn_price_r2_perfect_and_uninformative():
    # catalogue: two clusters, cheap (log 1) and dear (log 5)
    db = M.l2_normalise(np.array([[1, 0.01 * i] for i in range(5)]
                                 + [[0.01 * i, 1] for i in range(5)], dtype=float))
    db_lp = np.array([1.0] * 5 + [5.0] * 5)
    q = M.l2_normalise(np.array([[1, 0.02], [1, 0.03], [0.02, 1], [0.03, 1]], dtype=float))
    q_listing = np.array([10, 10, 11, 11])
    q_lp = np.array([1.0, 1.0, 5.0, 5.0])
    assert M.knn_price_r2(q, q_listing, q_lp, db, db_lp, k=3) == pytest.approx(1.0)
    ids, pred = M.knn_price_predict(q, q_listing, db, db_lp, k=3)
    assert ids.tolist() == [10, 11] and pred.tolist() == [1.0, 5.0]
    # k = whole catalogue: every prediction is the global median -> R² <= 0
    assert M.knn_price_r2(q, q_listing, q_lp, db, db_lp, k=10) <= 0.0
    # invalid (NaN) query prices are dropped; the catalogue's NaN rows too
    q_lp_nan = np.array([1.0, 1.0, np.nan, np.nan])
    q3 = np.vstack([q, q[:1]])
    r2 = M.knn_price_r2(q3, np.array([10, 10, 11, 11, 12]), np.r_[q_lp_nan, 5.0],
                        np.vstack([db, [[1, 0]]]), np.r_[db_lp, np.nan], k=3)
    assert np.isfinite(r2)


def test_precision_agreement_counts_flips_and_angles():
    import numpy as np

    from mkt.training.evaluate_bundle import precision_agreement

    e = np.eye(4, dtype=np.float32)
    a = {"_pred": np.array([0, 1, 2, 3]), "_embedding": e}
    b = {"_pred": np.array([0, 1, 2, 0]), "_embedding": np.r_[e[:3], e[2:3]]}
    r = precision_agreement(a, b)
    assert r["top1_agreement"] == 0.75
    assert r["cosine_min"] == 0.0 and abs(r["cosine_mean"] - 0.75) < 1e-6
    assert precision_agreement(a, a)["cosine_min"] > 0.999
