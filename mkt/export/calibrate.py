"""Honest scores: temperature scaling and the "uncertain" thresholds, fitted on val.

A classifier trained with cross-entropy is over-confident, and it answers even for a photo
of nothing (noise, a blank frame, a screenshot of text). So the exporter fits, on the
validation split and on the exported model's own outputs:

- a **temperature** T minimising the negative log-likelihood of ``softmax(logits / T)``;
  expected calibration error (15 equal-width bins) is reported before and after;
- a **confidence floor**: a calibrated top score below it marks the answer ``uncertain``.
  Chosen as the largest floor whose flagged val photos are still mostly wrong (accuracy
  <= ``max_flagged_acc``), capped so at most ``max_flag_share`` of val is flagged;
- a **reference set**: ``n_ref`` k-means centroids of the training photos' embeddings, shipped
  in the bundle (``reference.npy``), and a **similarity floor**: a photo whose embedding is
  farther from every centroid than all but ``ref_quantile`` of val photos is ``uncertain``
  (out of distribution), whatever the classifier says;
- a **neighbour floor** for ``similar``/``price``: the same quantile of val photos' best
  cosine similarity to a training photo;
- **photo-ness bounds** on two pixel statistics of the letterboxed input
  (:func:`mkt.runtime.calibration.pixel_stats`): half the 0.1% quantile of val photos' content
  standard deviation (a flat frame is below it) and 1.1x the 99.9% quantile of their mean
  horizontal gradient (noise and dense text are above it). Measured on the shipped model, its
  logits and embedding are as confident on noise as on real photos, so this is the signal
  that catches them.

Numpy + scipy + scikit-learn only; everything is a plain function of arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mkt.training.metrics import expected_calibration_error, fit_temperature, softmax_t


def confidence_floor(conf: np.ndarray, correct: np.ndarray, max_flagged_acc: float = 0.4,
                     max_flag_share: float = 0.2) -> float:
    """Largest floor t whose flagged photos (conf < t) are at most ``max_flagged_acc`` right
    and at most ``max_flag_share`` of all photos; 0 when no floor qualifies."""
    best = 0.0
    for t in np.round(np.arange(0.05, 0.951, 0.01), 2):
        m = conf < t
        if not m.any():
            continue
        if m.mean() > max_flag_share:
            break
        if correct[m].mean() <= max_flagged_acc:
            best = float(t)
    return best


def reference_set(train_emb: np.ndarray, n_ref: int = 512, seed: int = 0) -> np.ndarray:
    """``n_ref`` L2-normalised k-means centroids of the (L2-normalised) training embeddings."""
    from sklearn.cluster import MiniBatchKMeans

    n_ref = int(min(n_ref, len(train_emb)))
    km = MiniBatchKMeans(n_clusters=n_ref, random_state=seed, n_init=3, batch_size=2048)
    km.fit(np.asarray(train_emb, np.float32))
    c = km.cluster_centers_.astype(np.float32)
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)


def best_similarity(q: np.ndarray, db: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """For each query row, its highest cosine similarity to a database row."""
    out = np.empty(len(q), np.float32)
    for i in range(0, len(q), chunk):
        out[i:i + chunk] = (q[i:i + chunk] @ db.T).max(1)
    return out


def fit_calibration(val_logits: np.ndarray, val_y: np.ndarray, val_emb: np.ndarray,
                    train_emb: np.ndarray, val_pixels: np.ndarray, *, n_ref: int = 512,
                    ref_quantile: float = 0.01, seed: int = 0
                    ) -> tuple[dict[str, Any], np.ndarray]:
    """Fit everything above on val; returns ``(manifest "calibration" section, reference)``.

    ``val_pixels``: the val photos' letterboxed ``uint8 [N, S, S, 3]`` (or a sample of them).
    """
    from mkt.runtime.calibration import pixel_stats

    val_y = np.asarray(val_y)
    t = fit_temperature(val_logits, val_y)
    p0, p1 = softmax_t(val_logits), softmax_t(val_logits, t)
    conf = p1.max(1)
    correct = p1.argmax(1) == val_y
    floor = confidence_floor(conf, correct)
    ref = reference_set(train_emb, n_ref, seed)
    ref_sim = best_similarity(val_emb, ref)
    nn_sim = best_similarity(val_emb, train_emb)
    ref_floor = float(np.quantile(ref_sim, ref_quantile))
    nn_floor = float(np.quantile(nn_sim, ref_quantile))
    st = pixel_stats(val_pixels)
    min_std = 0.5 * float(np.quantile(st[:, 0], 0.001))
    max_grad = 1.1 * float(np.quantile(st[:, 1], 0.999))
    flagged = (conf < floor) | (ref_sim < ref_floor)
    section = {
        "fitted_on": "val",
        "n": int(len(val_y)),
        "temperature": t,
        "ece_before": expected_calibration_error(p0, val_y),
        "ece_after": expected_calibration_error(p1, val_y),
        "min_confidence": floor,
        "min_reference_similarity": ref_floor,
        "min_neighbour_score": nn_floor,
        "min_pixel_std": min_std,
        "max_pixel_gradient": max_grad,
        "reference": "reference.npy",
        "reference_size": int(len(ref)),
        "rule": (f"uncertain when the calibrated top score < min_confidence (flagged val "
                 f"photos at most 40% right, at most 20% flagged) or the embedding's best "
                 f"cosine to the {len(ref)} reference centroids < the {ref_quantile:.0%} "
                 f"quantile of val photos; similar/price: best neighbour score < the same "
                 f"quantile of val photos' best training-photo score; not a photo when the "
                 f"content pixel std < min_pixel_std or the mean horizontal gradient > "
                 f"max_pixel_gradient (0.5x the 0.1% / 1.1x the 99.9% val quantiles)"),
        "val_flagged_share": float(flagged.mean()),
        "val_flagged_accuracy": float(correct[flagged].mean()) if flagged.any() else None,
        "val_unflagged_accuracy": float(correct[~flagged].mean()) if (~flagged).any() else None,
    }
    return section, ref


__all__ = ["best_similarity", "confidence_floor", "expected_calibration_error",
           "fit_calibration", "fit_temperature", "reference_set", "softmax_t"]
