"""Frozen all-MiniLM-L6-v2 title embeddings: the targets of the photo model's text head.

Each listing's title is embedded once (``normalize_embeddings=True``) and cached to an .npy
beside a JSON key, so training and evaluation reuse it. The photo model's ``text_embedding``
head lives in this 384-d space, so a MiniLM query embedding can search photos directly.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

TEXT_MODEL = "all-MiniLM-L6-v2"
TEXT_DIM = 384


def load_minilm():
    from all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


def embed_texts(texts: Sequence[str], batch: int = 128) -> np.ndarray:
    model = load_minilm()
    emb = model.encode(list(texts), batch_size=batch, normalize_embeddings=True,
                       convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(emb, np.float32)


def listing_titles(data: Path | str, product_ids: Sequence[str]) -> list[str]:
    listings = pd.read_parquet(Path(data) / "listings.parquet", columns=["product_id", "title"])
    t = listings.drop_duplicates("product_id").set_index("product_id")["title"]
    return [str(x) if isinstance(x, str) else "" for x in t.reindex(list(product_ids))]


def title_embeddings(data: Path | str, product_ids: Sequence[str],
                     cache_file: Path | str | None = None) -> np.ndarray:
    """MiniLM embedding of each listing's title, in ``product_ids`` order, cached to .npy."""
    titles = listing_titles(data, product_ids)
    h = hashlib.sha256(TEXT_MODEL.encode())
    for pid, t in zip(product_ids, titles, strict=True):
        h.update(f"{pid}\t{t}\n".encode())
    key = h.hexdigest()
    if cache_file is not None:
        cache_file = Path(cache_file)
        meta = cache_file.with_suffix(".json")
        if cache_file.exists() and meta.exists() and json.loads(meta.read_text()).get("key") == key:
            return np.load(cache_file)
    emb = embed_texts(titles)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(cache_file) + ".tmp.npy")
        np.save(tmp, emb)
        os.replace(tmp, cache_file)
        cache_file.with_suffix(".json").write_text(json.dumps({"key": key, "model": TEXT_MODEL,
                                                               "n": len(titles)}))
    return emb
