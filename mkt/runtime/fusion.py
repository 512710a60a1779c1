"""Photo + title fusion at run time (numpy only): category and price of a listing.

``fusion.npz`` (written by ``python -m mkt.export.fusion``, shipped in the bundle dir) holds a
multinomial logistic regression over ``[photo log-probs, (mean photo embedding), MiniLM title
embedding]`` (standardised) and the settings of the fused price kNN.

Listing features from its photos: mean of the photo logits then log-softmax (the same pooling
as ``mkt classify --listing``), and the mean photo embedding renormalised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BundleError

FUSION_FILE = "fusion.npz"


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return (x - np.log(np.exp(x).sum(axis=-1, keepdims=True))).astype(np.float32)


def listing_photo_features(logits: np.ndarray, embedding: np.ndarray
                           ) -> tuple[np.ndarray, np.ndarray]:
    """One listing's photos ``logits [P, C]``, ``embedding [P, D]`` -> (log-probs [C] of the
    mean logits, mean embedding renormalised [D])."""
    lg = np.atleast_2d(np.asarray(logits, np.float32))
    em = np.atleast_2d(np.asarray(embedding, np.float32))
    if lg.shape[0] == 0:
        raise ValueError("a listing needs at least one photo")
    e = em.mean(0)
    return _log_softmax(lg.mean(0)), e / max(float(np.linalg.norm(e)), 1e-12)


@dataclass
class Fusion:
    """The fitted fusion of one photo model (``model_id``) with the MiniLM title encoder."""

    labels: tuple[str, ...]
    W: np.ndarray
    b: np.ndarray
    mu: np.ndarray
    sd: np.ndarray
    uses_embedding: bool
    model_id: str
    price_alpha: float
    price_k: int
    price_tau: float

    @classmethod
    def load(cls, path: str | os.PathLike, model_id: str | None = None) -> Fusion:
        """Read ``fusion.npz`` (a file, or a bundle dir holding one); refuse one fitted on
        another photo model than ``model_id``."""
        p = Path(path)
        if p.is_dir():
            p = p / FUSION_FILE
        try:
            z = np.load(p, allow_pickle=False)
            f = cls(
                labels=tuple(str(x) for x in z["labels"]),
                W=z["cat_W"].astype(np.float32), b=z["cat_b"].astype(np.float32),
                mu=z["cat_mu"].astype(np.float32), sd=z["cat_sd"].astype(np.float32),
                uses_embedding=bool(z["cat_uses_emb"]), model_id=str(z["model_id"]),
                price_alpha=float(z["price_alpha"]), price_k=int(z["price_k"]),
                price_tau=float(z["price_tau"]),
            )
        except (OSError, KeyError, ValueError) as e:
            raise BundleError(f"{p}: cannot read fusion model ({e})") from None
        if f.W.shape != (len(f.labels), f.mu.shape[0]) or f.b.shape != (len(f.labels),):
            raise BundleError(f"{p}: fusion model arrays have inconsistent shapes")
        if model_id is not None and str(model_id) != f.model_id:
            raise BundleError(f"{p}: fusion fitted on model {f.model_id}, bundle is {model_id}")
        return f

    def features(self, logp: np.ndarray, emb: np.ndarray, title: np.ndarray) -> np.ndarray:
        parts = [np.atleast_2d(logp)] + ([np.atleast_2d(emb)] if self.uses_embedding else []) \
            + [np.atleast_2d(title)]
        x = np.concatenate(parts, axis=1).astype(np.float32)
        if x.shape[1] != self.mu.shape[0]:
            raise ValueError(f"fusion expects {self.mu.shape[0]} features, got {x.shape[1]}")
        return (x - self.mu) / self.sd

    def predict_proba(self, logp: np.ndarray, emb: np.ndarray, title: np.ndarray) -> np.ndarray:
        """Category probabilities ``[N, C]`` from listing features (see
        :func:`listing_photo_features`) and title embeddings ``[N, 384]``."""
        z = self.features(logp, emb, title) @ self.W.T + self.b
        return np.exp(_log_softmax(z))

    def classify_listing(self, logits: np.ndarray, embedding: np.ndarray,
                         title_embedding: np.ndarray, k: int = 3) -> list[tuple[str, float]]:
        """Top-``k`` ``(category, probability)`` of one listing: its photos' model outputs and
        its title's MiniLM embedding."""
        lp, e = listing_photo_features(logits, embedding)
        pr = self.predict_proba(lp[None], e[None], np.asarray(title_embedding)[None])[0]
        idx = np.argsort(-pr, kind="stable")[: max(1, int(k))]
        return [(self.labels[i], float(pr[i])) for i in idx]


def knn_log_price(q_emb: np.ndarray, q_title: np.ndarray, c_emb: np.ndarray,
                  c_title: np.ndarray, c_logprice: np.ndarray, *, alpha: float, k: int,
                  tau: float, chunk: int = 512) -> np.ndarray:
    """Fused kNN log price: similarity ``alpha * cos(photo) + (1 - alpha) * cos(title)`` to
    the catalogue listings, the ``k`` best vote with ``exp((s - s_best) / tau)``; returns the
    weighted mean of their log prices, one per query row. Inputs are L2-normalised."""
    qe, qt = np.atleast_2d(q_emb).astype(np.float32), np.atleast_2d(q_title).astype(np.float32)
    ce, ct = np.asarray(c_emb, np.float32), np.asarray(c_title, np.float32)
    y = np.asarray(c_logprice, np.float64)
    k = max(1, min(int(k), len(y)))
    out = np.zeros(len(qe), np.float64)
    for s in range(0, len(qe), chunk):
        sim = alpha * (qe[s: s + chunk] @ ce.T) + (1.0 - alpha) * (qt[s: s + chunk] @ ct.T)
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        st = np.take_along_axis(sim, top, axis=1).astype(np.float64)
        w = np.exp((st - st.max(1, keepdims=True)) / max(float(tau), 1e-6))
        out[s: s + chunk] = (w * y[top]).sum(1) / w.sum(1)
    return out


@dataclass
class PriceCatalogue:
    """Listings that vote on a price: photo + title embeddings and log prices."""

    emb: np.ndarray
    title: np.ndarray
    log_price: np.ndarray

    def estimate(self, fusion: Fusion, emb: np.ndarray, title: np.ndarray) -> float:
        """Suggested price (pounds) of one listing from its mean photo embedding and title
        embedding."""
        lp = knn_log_price(emb, title, self.emb, self.title, self.log_price,
                           alpha=fusion.price_alpha, k=fusion.price_k, tau=fusion.price_tau)
        return float(np.exp(lp[0]))


@dataclass
class ListingCatalogue:
    """The index's priced listings for the fused price kNN: each listing's mean photo
    embedding, its listing-text vector, price and display metadata. Built once per index
    generation (:func:`listing_catalogue`)."""

    product_ids: list[str]
    emb: np.ndarray
    text: np.ndarray
    price: np.ndarray
    meta: list[dict[str, Any]]

    def hits(self, fusion: Fusion, emb: np.ndarray, title: np.ndarray, n: int,
             exclude_products: set[str] | frozenset[str] = frozenset()) -> list[Any]:
        """The ``n`` listings nearest to (photo ``emb``, ``title`` vector) by the fused
        similarity ``alpha * cos(photo) + (1 - alpha) * cos(text)``, best first, as index
        :class:`~mkt.runtime.index.Hit` objects (``id`` = the listing's first photo)."""
        from .index import Hit

        a = fusion.price_alpha
        sim = a * (self.emb @ np.asarray(emb, np.float32)) + \
            (1.0 - a) * (self.text @ np.asarray(title, np.float32))
        out = []
        for i in np.argsort(-sim, kind="stable"):
            if self.product_ids[i] in exclude_products:
                continue
            m = self.meta[i]
            out.append(Hit(str(m.get("photo") or self.product_ids[i]), float(sim[i]), -1,
                           {"product_id": self.product_ids[i], "title": m.get("title"),
                            "price": float(self.price[i]), "category": m.get("category")}))
            if len(out) >= n:
                break
        return out


_CATALOGUES: dict[tuple[str, int], ListingCatalogue] = {}


def listing_catalogue(index: Any) -> ListingCatalogue:
    """:class:`ListingCatalogue` of an open index (cached per index folder and generation)."""
    from .catalogue import valid_price

    key = (str(index.path), int(index.info().get("generation", -1)))
    if key in _CATALOGUES:
        return _CATALOGUES[key]
    index.require_text()
    _, pids, vecs = index.photo_vectors()
    lp, lv = index.listing_vectors()
    meta = index.listings_meta(lp)
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pids):
        if p is not None:
            groups.setdefault(p, []).append(i)
    keep = [j for j, p in enumerate(lp)
            if p in groups and valid_price(meta.get(p, {}).get("price"))]
    emb = np.zeros((len(keep), vecs.shape[1]), np.float32)
    for r, j in enumerate(keep):
        e = vecs[groups[lp[j]]].mean(0)
        emb[r] = e / max(float(np.linalg.norm(e)), 1e-12)
    cat = ListingCatalogue([lp[j] for j in keep], emb, np.asarray(lv, np.float32)[keep],
                           np.array([float(meta[lp[j]]["price"]) for j in keep]),
                           [meta[lp[j]] for j in keep])
    _CATALOGUES.clear()  # one index generation at a time is enough for a CLI or a server
    _CATALOGUES[key] = cat
    return cat


def load_fusion(bundle: Any) -> Fusion:
    """The fusion model of a :class:`~mkt.runtime.bundle.Bundle` (``fusion.npz`` in its dir)."""
    return Fusion.load(Path(bundle.path) / FUSION_FILE, model_id=bundle.model_id)


__all__ = ["FUSION_FILE", "Fusion", "ListingCatalogue", "PriceCatalogue", "knn_log_price",
           "listing_catalogue", "listing_photo_features", "load_fusion"]
