"""The torch-free runtime: decode photos, run the ONNX bundle, search the hnswlib index.

Depends only on onnxruntime, numpy, Pillow, hnswlib and the standard library. Never imports
torch, pandas, ``mkt.training`` or ``mkt.export`` (a test checks). Submodules are imported
lazily so that ``import mkt.runtime`` is cheap (the CLI's cold start matters).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    BadImageError,
    BundleError,
    CatalogueError,
    ImageTooLargeError,
    MktError,
    MktIndexError,
)

if TYPE_CHECKING:  # pragma: no cover
    from .bundle import Bundle, load_bundle
    from .images import letterbox, load_image, load_letterboxed
    from .index import Hit, Index
    from .model import Model, Prediction

_LAZY = {
    "Bundle": "bundle",
    "load_bundle": "bundle",
    "Model": "model",
    "Prediction": "model",
    "Index": "index",
    "Hit": "index",
    "load_image": "images",
    "letterbox": "images",
    "load_letterboxed": "images",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'mkt.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{mod}", __name__), name)


__all__ = [
    "BadImageError",
    "Bundle",
    "BundleError",
    "CatalogueError",
    "Hit",
    "ImageTooLargeError",
    "Index",
    "MktError",
    "MktIndexError",
    "Model",
    "Prediction",
    "letterbox",
    "load_bundle",
    "load_image",
    "load_letterboxed",
]
