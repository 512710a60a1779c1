"""mkt: classify second-hand marketplace photos into 13 categories and find similar listings.

Small public API, in the spirit of sentence-transformers::

    import mkt

    mkt.classify(["sofa.jpg"])[0].category        # 'Home & Garden'
    vecs = mkt.embed(["sofa.jpg", "chair.jpg"])    # float32 [2, 256], L2-normalised
    hits = mkt.search(["sofa.jpg"], k=5)           # [[Hit(id, score, meta), ...]]

    model = mkt.load_model("path/to/bundle")       # explicit bundle, threads=...
    index = mkt.load_index("path/to/index", model_id=model.model_id)

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

_lock = threading.Lock()
_models: dict[Any, Model] = {}
_indexes: dict[Any, Index] = {}


def load_model(
    bundle: str | os.PathLike | Bundle | None = None,
    *,
    variant: str | None = None,
    threads: int | None = None,
) -> Model:
    """Load a model bundle (default: the packaged one) into an onnxruntime CPU session.

    The bundle's file hashes are verified first, so a corrupt model is refused rather than
    giving wrong answers. ``variant``: ``"int8"`` (default, fast) or ``"fp32"`` when the
    bundle has it. ``threads``: onnxruntime intra-op threads (default: up to 4 cores).
    """
    from .runtime.model import Model

    return Model(bundle, variant=variant, threads=threads)


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
    bundle: str | os.PathLike | None = None,
) -> list[Prediction]:
    """Top-``k`` categories of each photo (paths or bytes) with probabilities.

    ``listing=True``: the photos are one listing; return a single prediction from the mean
    of their logits (several views are more reliable than one).
    """
    return _default_model(bundle).classify(photos, k, listing=listing)


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
    "__version__",
    "classify",
    "embed",
    "load_bundle",
    "load_index",
    "load_model",
    "search",
]
