"""Evaluation metrics as plain numpy / scikit-learn functions (no torch, no files).

Everything takes arrays and returns numbers, so the training loop, ``mkt evaluate`` and the
baselines report the same quantities computed the same way. Nearest-neighbour searches use
matrix products in row chunks, so memory stays at ``chunk x database`` floats.

Conventions: ``logits`` are ``[N, C]`` scores (any monotone score works), ``y`` are int class
indices, ``listing`` are per-row listing ids (any hashable ints), embeddings are ``[N, D]`` and
are compared by dot product (pass L2-normalised rows for cosine similarity).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm

from mkt.runtime.catalogue import MAX_VALID_PRICE

CHUNK = 1024


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def topk_indices(q: np.ndarray, db: np.ndarray, k: int, exclude_self: bool = False,
                 chunk: int = CHUNK) -> np.ndarray:
    """Indices ``[Nq, k]`` of the ``k`` most similar ``db`` rows (dot product), best first.

    ``exclude_self``: ``q`` and ``db`` are the same set; row i never returns i.
    ``k`` is clipped to the number of candidates.
    """
    q = np.asarray(q, np.float32)
    db = np.asarray(db, np.float32)
    n_cand = len(db) - (1 if exclude_self else 0)
    k = max(0, min(k, n_cand))
    out = np.zeros((len(q), k), np.int64)
    if k == 0 or len(q) == 0:
        return out
    for s in range(0, len(q), chunk):
        sim = q[s:s + chunk] @ db.T
        if exclude_self:
            rows = np.arange(sim.shape[0])
            sim[rows, s + rows] = -np.inf
        if k < sim.shape[1]:
            part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        else:
            part = np.tile(np.arange(sim.shape[1]), (sim.shape[0], 1))
        order = np.argsort(-np.take_along_axis(sim, part, 1), axis=1, kind="stable")
        out[s:s + chunk] = np.take_along_axis(part, order, 1)
    return out


# --------------------------------------------------------------------------- classification


def topk_accuracy(logits: np.ndarray, y: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose true class is among the ``k`` highest scores (scikit-learn)."""
    logits, y = np.asarray(logits), np.asarray(y)
    if len(y) == 0:
        return float("nan")
    n = logits.shape[1]
    if k >= n:
        return 1.0
    if k == 1 or n <= 2:  # sklearn's top-k scorer reads a 2-column score as binary
        return float(skm.accuracy_score(y, logits.argmax(1)))
    return float(skm.top_k_accuracy_score(y, logits, k=k, labels=np.arange(n)))


def listing_scores(logits: np.ndarray, listing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of each listing's photo scores: ``(listing ids [L], scores [L, C])``."""
    ids, inv = np.unique(np.asarray(listing), return_inverse=True)
    sums = np.zeros((len(ids), logits.shape[1]), np.float64)
    np.add.at(sums, inv, np.asarray(logits, np.float64))
    return ids, sums / np.bincount(inv, minlength=len(ids))[:, None]


def listing_accuracy(logits: np.ndarray, y: np.ndarray, listing: np.ndarray) -> float:
    """Top-1 accuracy per listing, predicting from the mean of its photos' logits.

    A listing's label is its photos' label (all photos of a listing share one category).
    """
    y, listing = np.asarray(y), np.asarray(listing)
    if len(y) == 0:
        return float("nan")
    ids, scores = listing_scores(logits, listing)
    first = {}
    for lid, lab in zip(listing.tolist(), y.tolist(), strict=True):
        first.setdefault(lid, lab)
    truth = np.array([first[i] for i in ids.tolist()])
    return float((scores.argmax(1) == truth).mean())


def confusion(y: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """Counts ``[n, n]``: row = true class, column = predicted class (scikit-learn)."""
    return skm.confusion_matrix(np.asarray(y, np.int64), np.asarray(pred, np.int64),
                                labels=np.arange(n)).astype(np.int64)


def per_class_accuracy(y: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """Recall of each class (NaN for a class with no rows; scikit-learn's recall)."""
    y = np.asarray(y, np.int64)
    rec = skm.recall_score(y, np.asarray(pred, np.int64), labels=np.arange(n), average=None,
                           zero_division=np.nan)
    support = np.bincount(y, minlength=n)
    return np.where(support > 0, rec, np.nan)


def normalise_rows(cm: np.ndarray) -> np.ndarray:
    s = cm.sum(1, keepdims=True)
    return np.divide(cm, s, out=np.zeros(cm.shape, np.float64), where=s > 0)


# --------------------------------------------------------------------------- retrieval


def same_listing_recall(emb: np.ndarray, listing: np.ndarray, ks: Sequence[int] = (1, 10),
                        chunk: int = CHUNK) -> dict[int, float]:
    """Recall@k of finding another photo of the same listing among all other photos.

    Queries: every photo whose listing has at least one other photo in the set; the query
    itself is excluded from the candidates. Hit@k: a photo of the same listing is in the top k.
    Returns ``{k: recall}`` (NaN when there is no query) .
    """
    listing = np.asarray(listing)
    _, inv, counts = np.unique(listing, return_inverse=True, return_counts=True)
    queries = np.flatnonzero(counts[inv] > 1)
    if len(queries) == 0:
        return {int(k): float("nan") for k in ks}
    kmax = max(ks)
    emb = np.asarray(emb, np.float32)
    hits = {int(k): 0 for k in ks}
    for s in range(0, len(queries), chunk):
        qi = queries[s:s + chunk]
        sim = emb[qi] @ emb.T
        sim[np.arange(len(qi)), qi] = -np.inf
        kk = min(kmax, len(emb) - 1)
        part = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
        order = np.argsort(-np.take_along_axis(sim, part, 1), axis=1, kind="stable")
        nn_idx = np.take_along_axis(part, order, 1)
        same = inv[nn_idx] == inv[qi][:, None]
        for k in ks:
            hits[int(k)] += int(same[:, :k].any(1).sum())
    return {k: h / len(queries) for k, h in hits.items()}


def same_listing_queries(listing: np.ndarray) -> int:
    """How many photos can query in :func:`same_listing_recall`."""
    _, inv, counts = np.unique(np.asarray(listing), return_inverse=True, return_counts=True)
    return int((counts[inv] > 1).sum())


def category_precision_at_k(q_emb: np.ndarray, q_cat: np.ndarray, db_emb: np.ndarray,
                            db_cat: np.ndarray, k: int = 10, chunk: int = CHUNK) -> float:
    """Mean fraction of each query's ``k`` nearest database rows that share its category."""
    q_cat, db_cat = np.asarray(q_cat), np.asarray(db_cat)
    if len(q_cat) == 0 or len(db_cat) == 0:
        return float("nan")
    nn_idx = topk_indices(q_emb, db_emb, k, chunk=chunk)
    return float((db_cat[nn_idx] == q_cat[:, None]).mean())


# --------------------------------------------------------------------------- price


def valid_price(price: np.ndarray, max_price: float = MAX_VALID_PRICE) -> np.ndarray:
    """The price rule used everywhere: known, above £0 and at most ``max_price``."""
    p = np.asarray(price, np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(p) & (p > 0) & (p <= max_price)


def knn_price_predict(q_emb: np.ndarray, q_listing: np.ndarray, db_emb: np.ndarray,
                      db_logprice: np.ndarray, k: int = 25, chunk: int = CHUNK
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per listing: mean over its photos of the median log price of each photo's k neighbours.

    Returns ``(listing ids [L], predicted log price [L])``. ``db_*`` must hold only rows with
    a valid price.
    """
    db_logprice = np.asarray(db_logprice, np.float64)
    nn_idx = topk_indices(q_emb, db_emb, k, chunk=chunk)
    per_photo = np.median(db_logprice[nn_idx], axis=1)
    ids, inv = np.unique(np.asarray(q_listing), return_inverse=True)
    pred = np.bincount(inv, weights=per_photo, minlength=len(ids)) / np.bincount(inv)
    return ids, pred


def knn_price_r2(q_emb: np.ndarray, q_listing: np.ndarray, q_logprice: np.ndarray,
                 db_emb: np.ndarray, db_logprice: np.ndarray, k: int = 25,
                 chunk: int = CHUNK) -> float:
    """R² (sklearn ``r2_score``) of the kNN log-price suggestion against the true log price.

    Queries are photos (``q_logprice`` per photo, the listing's log price; NaN rows are
    dropped); scored per listing. ``db_logprice`` NaN rows are dropped from the catalogue.
    """
    from sklearn.metrics import r2_score

    q_logprice = np.asarray(q_logprice, np.float64)
    db_logprice = np.asarray(db_logprice, np.float64)
    qm, dm = np.isfinite(q_logprice), np.isfinite(db_logprice)
    if qm.sum() == 0 or dm.sum() == 0:
        return float("nan")
    q_listing = np.asarray(q_listing)[qm]
    ids, pred = knn_price_predict(np.asarray(q_emb)[qm], q_listing, np.asarray(db_emb)[dm],
                                  db_logprice[dm], k, chunk)
    truth_of = dict(zip(q_listing.tolist(), q_logprice[qm].tolist(), strict=True))
    truth = np.array([truth_of[i] for i in ids.tolist()])
    if len(truth) < 2:
        return float("nan")
    return float(r2_score(truth, pred))


# --------------------------------------------------------------------------- calibration


def softmax_t(logits: np.ndarray, t: float = 1.0) -> np.ndarray:
    x = np.asarray(logits, np.float64) / float(t)
    x = x - x.max(1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE: |accuracy - confidence| of the top class, averaged over equal-width bins by count."""
    conf = probs.max(1)
    correct = probs.argmax(1) == np.asarray(y)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T > 0 minimising NLL of ``softmax(logits / T)`` on (val) labels."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(y)

    def nll(log_t: float) -> float:
        p = softmax_t(logits, float(np.exp(log_t)))
        return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def ece_of_logits(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0,
                  bins: int = 15) -> float:
    """ECE of ``softmax(logits / temperature)``."""
    return expected_calibration_error(softmax_t(logits, temperature), y, bins)
