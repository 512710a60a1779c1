"""mkt: classify second-hand marketplace photos into 13 categories and find similar listings.

Small public API, in the spirit of sentence-transformers::

    import mkt

    mkt.classify(["sofa.jpg"])[0].category        # 'Home & Garden'
    vecs = mkt.embed(["sofa.jpg", "chair.jpg"])    # float32 [2, 256], L2-normalised
    hits = mkt.search(["sofa.jpg"], k=5)           # [[Hit(id, score, meta), ...]]

    mkt.search_text("pram")[0].to_dict()           # {"query", "results": [...]}
    mkt.price(["ps4.jpg"], title="PS4 slim")[0].price

    model = mkt.load_model(precision="fp32")       # a bundle dir too; threads=...
    index = mkt.load_index(model_id=model.model_id)

Everything here runs on the torch-free runtime (onnxruntime + hnswlib). Heavy modules
(numpy, onnxruntime, hnswlib) load on first use, not on ``import mkt``, so the CLI starts
fast. The default model and index are the ones shipped in ``mkt/assets``; they are loaded
once per process and cached.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from .runtime.bundle import Bundle
    from .runtime.images import ImageSource
    from .runtime.index import Hit, Index
    from .runtime.model import Model, Prediction
    from .runtime.price import PriceSuggestion
    from .runtime.search import TextSearchResult

_lock = threading.Lock()
_models: dict[Any, Model] = {}
_indexes: dict[Any, Index] = {}


def load_model(
    bundle: str | os.PathLike | Bundle | None = None,
    *,
    precision: str | None = None,
    threads: int | None = None,
    variant: str | None = None,
) -> Model:
    """Load a model bundle (default: the packaged one) into an onnxruntime CPU session.

    The bundle's file hashes are verified first, so a corrupt model is refused rather than
    giving wrong answers. ``precision``: ``"auto"`` (default: the faster of the bundle's int8
    and fp32 models on this CPU, measured once and cached), ``"int8"`` or ``"fp32"``
    (``variant`` is its old name). ``threads``: onnxruntime intra-op threads (default: up to
    4 cores).
    """
    from .runtime.model import Model

    return Model(bundle, variant=precision or variant, threads=threads)


def load_index(
    path: str | os.PathLike | None = None, *, model_id: str | None = None
) -> Index:
    """Open a similarity index (default: the packaged catalogue index).

    Pass ``model_id=model.model_id`` to refuse an index built by another model: embeddings
    from different models are not comparable.
    """
    from .runtime.index import Index

    return Index.open(path, model_id=model_id)


def _default_model(bundle: Any) -> Model:
    key = str(bundle) if bundle is not None else None
    with _lock:
        if key not in _models:
            _models[key] = load_model(bundle)
        return _models[key]


def _default_index(path: Any, model_id: str) -> Index:
    key = (str(path) if path is not None else None, model_id)
    with _lock:
        if key not in _indexes:
            _indexes[key] = load_index(path, model_id=model_id)
        return _indexes[key]


def classify(
    photos: Iterable[ImageSource],
    k: int = 3,
    *,
    listing: bool = False,
    title: str | None = None,
    bundle: str | os.PathLike | None = None,
) -> list[Prediction]:
    """Top-``k`` categories of each photo (paths or bytes) with calibrated probabilities and
    an ``uncertain`` flag.

    ``listing=True``: the photos are one listing; return a single prediction from the mean
    of their logits (several views are more reliable than one). ``title``: the seller's
    title too (the bundle's learned photo + title fusion).
    """
    return _default_model(bundle).classify(photos, k, listing=listing, title=title)


def embed(
    photos: Iterable[ImageSource], *, bundle: str | os.PathLike | None = None
) -> np.ndarray:
    """L2-normalised embeddings ``float32 [N, D]`` (cosine similarity = dot product)."""
    return _default_model(bundle).embed(photos)


def search(
    photos: Sequence[ImageSource],
    k: int = 10,
    *,
    index: str | os.PathLike | None = None,
    bundle: str | os.PathLike | None = None,
) -> list[list[Hit]]:
    """The ``k`` most similar indexed photos for each query photo, best first."""
    model = _default_model(bundle)
    idx = _default_index(index, model.model_id)
    return idx.search(model.embed(photos), k)


def search_text(
    queries: str | Sequence[str],
    k: int = 10,
    *,
    index: str | os.PathLike | None = None,
    bundle: str | os.PathLike | None = None,
) -> list[TextSearchResult]:
    """Listings for each text query, best first: words (FTS5 BM25), meaning (the text
    encoder) and photos (the image model's text head) fused by reciprocal rank. One
    :class:`~mkt.runtime.search.TextSearchResult` (``.to_dict()`` -> ``{"query",
    "results"}``) per query; an empty query raises ``MktError``."""
    from .runtime.search import search_text as _search_text

    model = _default_model(bundle)
    idx = _default_index(index, model.model_id)
    return _search_text(idx, model.text_encoder(), queries, k)


def price(
    photos: Sequence[ImageSource],
    *,
    title: str | None = None,
    listing: bool = True,
    k: int | None = None,
    index: str | os.PathLike | None = None,
    bundle: str | os.PathLike | None = None,
) -> list[PriceSuggestion]:
    """Suggested price (with a low-high range and the listings that voted) for the photos of
    one listing (``listing=True``) or each photo; ``title``: the seller's words too."""
    from .runtime.batch import PhotoError
    from .runtime.errors import BadImageError
    from .runtime.price import suggest_price

    model = _default_model(bundle)
    idx = _default_index(index, model.model_id)
    out = []
    for r in suggest_price(model, idx, list(photos), k=k, listing=listing, title=title):
        if isinstance(r, PhotoError):
            raise r.exc if r.exc is not None else BadImageError(r.error)
        out.append(r)
    return out


_LAZY = {
    "Model": "mkt.runtime.model",
    "Prediction": "mkt.runtime.model",
    "Index": "mkt.runtime.index",
    "Hit": "mkt.runtime.index",
    "Bundle": "mkt.runtime.bundle",
    "load_bundle": "mkt.runtime.bundle",
    "MktError": "mkt.runtime.errors",
    "BadImageError": "mkt.runtime.errors",
    "BundleError": "mkt.runtime.errors",
    "MktIndexError": "mkt.runtime.errors",
    "TextSearchResult": "mkt.runtime.search",
    "PriceSuggestion": "mkt.runtime.price",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'mkt' has no attribute {name!r}")
    return getattr(importlib.import_module(mod), name)


__all__ = [
    "BadImageError",
    "Bundle",
    "BundleError",
    "Hit",
    "Index",
    "MktError",
    "MktIndexError",
    "Model",
    "Prediction",
    "PriceSuggestion",
    "TextSearchResult",
    "__version__",
    "classify",
    "embed",
    "load_bundle",
    "load_index",
    "load_model",
    "price",
    "search_text",
    "search",
]
