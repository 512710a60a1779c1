"""int8 vs fp32 parity of a bundle's models on given photos (torch-free, CLI-independent).

    from mkt.runtime.parity import bundle_parity
    from mkt.runtime.images import load_letterboxed
    r = bundle_parity({"int8": b / "model.int8.onnx", "fp32": b / "model.fp32.onnx"},
                      photos, lambda p: load_letterboxed(p, 224))

Numbers: top-1 agreement of the logits, cosine of the embeddings (mean, 1st percentile, min),
max |logit difference|, plus ms/photo of each model. ``reference`` (default fp32) is the
model the other one is judged against.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: what "the int8 model gives the same answers" means (the int8 issue's targets)
TARGETS = {"top1_agreement_min": 0.98, "cosine_mean_min": 0.99, "cosine_p1_min": 0.95}


def _session(path: Path, threads: int | None):
    from .session import cpu_session

    return cpu_session(path, threads)


def run_model(path: str | os.PathLike, images: np.ndarray, *, outputs: Sequence[str] = (
        "logits", "embedding"), batch: int = 16, threads: int | None = None,
        ) -> tuple[list[np.ndarray], float]:
    """Run one ONNX model on uint8 NHWC ``images``: (one array per output, ms per photo)."""
    sess = _session(Path(path), threads)
    name = sess.get_inputs()[0].name
    parts: list[list[np.ndarray]] = [[] for _ in outputs]
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        res = sess.run(list(outputs), {name: np.ascontiguousarray(images[i:i + batch])})
        for acc, r in zip(parts, res, strict=True):
            acc.append(np.asarray(r, dtype=np.float32))
    ms = 1000 * (time.perf_counter() - t0) / max(1, len(images))
    return [np.concatenate(p) for p in parts], ms


def parity_metrics(ref_logits: np.ndarray, ref_emb: np.ndarray, logits: np.ndarray,
                   emb: np.ndarray) -> dict[str, float]:
    """Agreement / cosine / logit-diff numbers of one model's outputs against a reference's."""
    a = ref_emb.astype(np.float64)
    b = emb.astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {
        "top1_agreement": float((ref_logits.argmax(1) == logits.argmax(1)).mean()),
        "cosine_mean": float(cos.mean()),
        "cosine_p1": float(np.percentile(cos, 1)),
        "cosine_min": float(cos.min()),
        "logits_max_abs_diff": float(np.abs(ref_logits.astype(np.float64) - logits).max()),
    }


def meets_targets(m: dict[str, Any], targets: dict[str, float] = TARGETS) -> bool:
    return (m["top1_agreement"] >= targets["top1_agreement_min"]
            and m["cosine_mean"] >= targets["cosine_mean_min"]
            and m["cosine_p1"] >= targets["cosine_p1_min"])


def bundle_parity(models: dict[str, Any], photos: Sequence[str | os.PathLike],
                  load: Callable[[Path], np.ndarray], *, reference: str = "fp32",
                  candidate: str = "int8", outputs: Sequence[str] = ("logits", "embedding"),
                  batch: int = 16, threads: int | None = None) -> dict[str, Any]:
    """Compare ``models[candidate]`` (int8) against ``models[reference]`` (fp32) on ``photos``.

    ``load(path) -> uint8 [H, W, 3]`` decodes one photo the way the runtime does (e.g.
    ``lambda p: load_letterboxed(p, size)``); photos it raises on are listed in ``failed`` and
    skipped. ``outputs``: the (logits, embedding) output names. Returns ``{"n", "failed",
    "top1_agreement", "cosine_mean", "cosine_p1", "cosine_min", "logits_max_abs_diff",
    "ms_per_photo": {precision: ms}, "meets_targets", "targets"}``. ValueError when a model is
    missing or no photo loads.
    """
    for k in (reference, candidate):
        if k not in models:
            raise ValueError(f"parity needs a {k!r} model; the bundle has "
                             f"{', '.join(sorted(models)) or 'none'}")
    if len(outputs) != 2:
        raise ValueError("outputs must name (logits, embedding)")
    arrays, failed = [], []
    for p in photos:
        try:
            arrays.append(np.asarray(load(Path(p)), dtype=np.uint8))
        except Exception as e:  # noqa: BLE001 - a bad photo is reported, not fatal
            failed.append({"path": str(p), "error": f"{type(e).__name__}: {e}"[:200]})
    if not arrays:
        raise ValueError(f"no photo could be loaded ({len(failed)} failed)")
    images = np.stack(arrays)
    (rl, re_), ms_ref = run_model(models[reference], images, outputs=outputs, batch=batch,
                                  threads=threads)
    (cl, ce), ms_c = run_model(models[candidate], images, outputs=outputs, batch=batch,
                               threads=threads)
    m: dict[str, Any] = {"n": int(len(images)), "failed": failed, "reference": reference,
                         "candidate": candidate}
    m.update(parity_metrics(rl, re_, cl, ce))
    m["ms_per_photo"] = {reference: ms_ref, candidate: ms_c}
    m["meets_targets"] = meets_targets(m)
    m["targets"] = dict(TARGETS)
    return m


__all__ = ["TARGETS", "bundle_parity", "meets_targets", "parity_metrics", "run_model"]
