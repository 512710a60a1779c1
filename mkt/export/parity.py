"""Photos for calibration and parity, running the ONNX models, and the parity numbers.

Calibration uses training-split photos (a fixed-seed sample); parity uses test-split photos,
so neither the quantiser's ranges nor the parity numbers have seen the photos they are judged
on twice. Without a cleaned data dir (``--photos DIR``), one folder serves both and there are
no labels, hence no accuracy, only int8-vs-fp32 agreement and embedding cosine.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mkt.runtime.errors import MktError
from mkt.runtime.images import is_image_file
from mkt.runtime.preprocess import Preprocess

# int8 vs fp32 targets (the int8 issue's): agreement, embedding cosine (mean and 1st
# percentile) and accuracy drop on the test split.
TARGETS = {"top1_agreement_min": 0.98, "acc_drop_pt_max": 0.5, "cosine_mean_min": 0.99,
           "cosine_p1_min": 0.95}


@dataclass
class PhotoSet:
    """Letterboxed uint8 ``[N, S, S, 3]`` photos, their ids, and class indices (or None)."""

    ids: list[str]
    images: np.ndarray
    labels: np.ndarray | None
    source: str
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.ids)


def load_images(paths: list[Path], size: int) -> tuple[list[int], np.ndarray]:
    """Photos through the preprocessing contract (exactly what the runtime feeds the model);
    returns the indices that loaded and the stacked uint8 array."""
    pre = Preprocess(size=size)
    ok, arrs = [], []
    for i, p in enumerate(paths):
        try:
            arrs.append(pre.load(p))
            ok.append(i)
        except MktError:
            continue
    if not arrs:
        return ok, np.zeros((0, size, size, 3), np.uint8)
    return ok, np.stack(arrs)


def _sample(n_total: int, n: int | None, seed: int) -> np.ndarray:
    idx = np.arange(n_total)
    if n is not None and n < n_total:
        idx = np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))
    return idx


def split_photo_set(data: str | Path, labels: list[str], size: int, split: str,
                    n: int | None, seed: int, what: str | None = None) -> PhotoSet:
    """Photos of one split of a cleaned data dir (a fixed-seed sample of ``n``, or all),
    through the preprocessing contract, with their class indices."""
    from mkt.training.split import load_split

    data = Path(data)
    src = Path(json.loads((data / "source.json").read_text())["src"])
    if not src.is_absolute():
        src = (data / src).resolve()
    df = load_split(data).sort_values("photo_id").reset_index(drop=True)
    lab = {c: i for i, c in enumerate(labels)}
    unknown = sorted(set(df["category"]) - set(lab))
    if unknown:
        raise ValueError(f"{data}: categories not in the checkpoint's labels: {unknown}")
    part = df[df["split"] == split].reset_index(drop=True)
    part = part.iloc[_sample(len(part), n, seed)].reset_index(drop=True)
    paths = [src / "images" / f"{p}.jpg" for p in part["photo_id"]]
    ok, images = load_images(paths, size)
    part = part.iloc[ok]
    y = np.array([lab[c] for c in part["category"]], dtype=np.int64)
    return PhotoSet(list(part["photo_id"]), images, y, what or f"{split}-split photos of {data}",
                    skipped=len(paths) - len(ok))


def photo_sets_from_data(data: str | Path, labels: list[str], size: int, n_calib: int,
                         parity_limit: int | None, seed: int) -> tuple[PhotoSet, PhotoSet]:
    """(calibration: train split sample, parity: test split) from a cleaned data dir."""
    calib = split_photo_set(data, labels, size, "train", n_calib, seed,
                            f"{n_calib} train-split photos (seed {seed}) of {data}")
    parity = split_photo_set(data, labels, size, "test", parity_limit, seed,
                             f"test-split photos of {data}")
    if len(calib) == 0 or len(parity) == 0:
        raise ValueError(f"{data}: no usable train/test photos")
    return calib, parity


def photo_sets_from_dir(photos: str | Path, size: int, n_calib: int,
                        parity_limit: int | None, seed: int) -> tuple[PhotoSet, PhotoSet]:
    """One folder of photos for both calibration and parity (no labels)."""
    photos = Path(photos)
    paths = sorted(p for p in photos.iterdir() if is_image_file(p))
    ok, images = load_images(paths, size)
    if not ok:
        raise ValueError(f"{photos}: no readable photos")
    ids = [paths[i].stem for i in ok]
    ci = _sample(len(ids), n_calib, seed)
    pi = _sample(len(ids), parity_limit, seed)
    skipped = len(paths) - len(ok)
    calib = PhotoSet([ids[i] for i in ci], images[ci], None,
                     f"{len(ci)} photos of {photos} (seed {seed})", skipped)
    parity = PhotoSet([ids[i] for i in pi], images[pi], None,
                      f"photos of {photos} (same folder as calibration)", skipped)
    return calib, parity


def run_onnx(path: str | Path, images: np.ndarray, batch: int = 32,
             threads: int = 2) -> tuple[np.ndarray, np.ndarray, float]:
    """(logits, embedding, ms per photo) of an ONNX bundle model on uint8 NHWC images."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    logits, embs = [], []
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        lg, em = sess.run(["logits", "embedding"], {"image": images[i:i + batch]})
        logits.append(lg)
        embs.append(em)
    ms = 1000 * (time.perf_counter() - t0) / max(1, len(images))
    return np.concatenate(logits), np.concatenate(embs), ms


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


def compare(fp32: tuple[np.ndarray, np.ndarray], int8: tuple[np.ndarray, np.ndarray],
            labels: np.ndarray | None) -> dict[str, Any]:
    """int8 vs fp32: top-1 agreement, embedding cosine, accuracies and the drop (if labels)."""
    (lf, ef), (lq, eq) = fp32, int8
    pf, pq = lf.argmax(1), lq.argmax(1)
    cos = _cosine(ef.astype(np.float64), eq.astype(np.float64))
    out: dict[str, Any] = {
        "n": int(len(lf)),
        "top1_agreement": float((pf == pq).mean()),
        "cosine_mean": float(cos.mean()),
        "cosine_p1": float(np.percentile(cos, 1)),
        "cosine_min": float(cos.min()),
        "logits_max_abs_diff": float(np.abs(lf - lq).max()),
    }
    if labels is not None:
        af, aq = float((pf == labels).mean()), float((pq == labels).mean())
        out.update({"acc_fp32": af, "acc_int8": aq, "acc_drop_pt": 100 * (af - aq)})
    return out


def misses(m: dict[str, Any], targets: dict[str, float] = TARGETS) -> dict[str, float]:
    """How far each missed target is missed (empty: all met)."""
    out = {}
    if m["top1_agreement"] < targets["top1_agreement_min"]:
        out["top1_agreement"] = targets["top1_agreement_min"] - m["top1_agreement"]
    if m["cosine_mean"] < targets["cosine_mean_min"]:
        out["cosine_mean"] = targets["cosine_mean_min"] - m["cosine_mean"]
    if "cosine_p1" in m and m["cosine_p1"] < targets.get("cosine_p1_min", -1.0):
        out["cosine_p1"] = targets["cosine_p1_min"] - m["cosine_p1"]
    if "acc_drop_pt" in m and m["acc_drop_pt"] > targets["acc_drop_pt_max"]:
        out["acc_drop_pt"] = m["acc_drop_pt"] - targets["acc_drop_pt_max"]
    return out


def rank_key(m: dict[str, Any]) -> tuple:
    """Sort key, best first: targets met, then agreement, cosine, smaller accuracy drop."""
    return (len(misses(m)), -m["top1_agreement"], -m["cosine_mean"], m.get("acc_drop_pt", 0.0))


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def format_report(report: dict[str, Any]) -> str:
    """The parity report as a readable text table."""
    lines = [f"parity on {report['parity_set']['n']} photos ({report['parity_set']['source']})",
             f"torch fp32 vs ONNX fp32: max |logits diff| = "
             f"{report['fp32']['torch_vs_onnx_logits_max_abs']:.2e}, "
             f"embedding = {report['fp32']['torch_vs_onnx_embedding_max_abs']:.2e}"]
    if report["fp32"].get("acc") is not None:
        lines.append(f"ONNX fp32 accuracy: {report['fp32']['acc']:.4f}")
    cols = ["try", "agree", "cos_mean", "cos_min", "acc_int8", "drop_pt", "ms/img", "MB", "meets"]
    rows = []
    for t in report["tries"]:
        m = t.get("metrics") or {}
        rows.append([t["name"] + (" *" if t["name"] == report.get("chosen") else ""),
                     _fmt(m.get("top1_agreement")), _fmt(m.get("cosine_mean")),
                     _fmt(m.get("cosine_min")), _fmt(m.get("acc_int8")),
                     _fmt(m.get("acc_drop_pt")), _fmt(t.get("ms_per_photo")),
                     _fmt(t["bytes"] / 1e6) if t.get("bytes") else "-",
                     "error" if t.get("error") else ("yes" if t.get("meets_targets") else "no")])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines.append("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    tg = report["targets"]
    lines.append(f"targets: agreement >= {tg['top1_agreement_min']}, cosine mean >= "
                 f"{tg['cosine_mean_min']}, cosine p1 >= {tg.get('cosine_p1_min', '-')}, "
                 f"accuracy drop <= {tg['acc_drop_pt_max']} pt; "
                 f"fp32 ms/img {_fmt(report['fp32'].get('ms_per_photo'))}, "
                 f"fp32 {report['fp32']['bytes'] / 1e6:.1f} MB")
    if report.get("chosen"):
        verdict = "meets all targets" if report["meets_targets"] else \
            f"misses {report.get('misses')}"
        lines.append(f"chosen: {report['chosen']} (*), {verdict}")
    return "\n".join(lines)


__all__ = ["TARGETS", "PhotoSet", "compare", "format_report", "load_images", "misses",
           "photo_sets_from_data", "photo_sets_from_dir", "rank_key", "run_onnx"]
