"""Score shipped bundles as users run them: through the runtime, at a chosen precision.

``mkt evaluate CKPT`` scores a checkpoint in torch; what a user gets is the exported bundle
(int8 or fp32 ONNX, decoded by the preprocessing contract, calibrated by the manifest). This
module runs bundles through :class:`mkt.runtime.model.Model` on a split of the cleaned data
and reports, side by side: photo top-1/top-3, listing top-1, per-class accuracy, the confusion
matrix, same-listing recall@1/@10 (test vs test), category precision@10 and kNN price R² (log)
against the train photos as the catalogue, expected calibration error of the calibrated
scores, and the share of photos flagged ``uncertain`` with the accuracy on them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mkt.runtime.fsutil import display_path
from mkt.training import metrics as M

PRICE_K = 25


def _photos(data: Path) -> tuple[pd.DataFrame, Path, list[str]]:
    from mkt.training.split import load_split

    df = load_split(data).sort_values("photo_id").reset_index(drop=True)
    src = Path(json.loads((data / "source.json").read_text())["src"])
    labels = json.loads((data / "labels.json").read_text())["labels"]
    listings = pd.read_parquet(data / "listings.parquet", columns=["product_id", "price"])
    df = df.merge(listings, on="product_id", how="left")
    return df, src / "images", labels


def run_bundle(bundle: str | Path, paths: list[Path], precision: str = "int8",
               threads: int | None = None, batch: int = 64) -> dict[str, np.ndarray]:
    """Outputs of a bundle on photos through the runtime: logits, embedding, calibrated
    probabilities and the uncertain flags (exactly what ``mkt classify`` computes)."""
    from mkt.runtime.model import Model

    m = Model(bundle, variant=precision, threads=threads)
    logits, emb, probs, flags = [], [], [], []
    for i in range(0, len(paths), batch):
        x = m.load(paths[i:i + batch])
        lo, em = m.predict(x)
        p = m.probabilities(lo)
        logits.append(lo)
        emb.append(em)
        probs.append(p)
        flags.append(m.calibration.flags(p, em, x))
    return {"logits": np.concatenate(logits), "embedding": np.concatenate(emb),
            "probs": np.concatenate(probs), "uncertain": np.concatenate(flags),
            "variant": m.variant}


def evaluate_bundle(bundle: str | Path, data: str | Path, *, precision: str = "int8",
                    split: str = "test", threads: int | None = None) -> dict[str, Any]:
    """Every metric of the module docstring for one bundle at one precision."""
    from mkt.export.calibrate import expected_calibration_error

    data = Path(data)
    df, img_dir, labels = _photos(data)
    lab = {c: i for i, c in enumerate(labels)}
    test = df[df["split"] == split].reset_index(drop=True)
    train = df[df["split"] == "train"].reset_index(drop=True)
    t0 = time.time()
    q = run_bundle(bundle, [img_dir / f"{p}.jpg" for p in test["photo_id"]], precision, threads)
    db = run_bundle(bundle, [img_dir / f"{p}.jpg" for p in train["photo_id"]], precision,
                    threads)
    y = test["category"].map(lab).to_numpy()
    db_y = train["category"].map(lab).to_numpy()
    listing = pd.factorize(test["product_id"])[0]
    logprice = np.where(M.valid_price(test["price"].to_numpy()),
                        np.log(test["price"].to_numpy().clip(1e-9)), np.nan)
    db_logprice = np.where(M.valid_price(train["price"].to_numpy()),
                           np.log(train["price"].to_numpy().clip(1e-9)), np.nan)
    logits, emb = q["logits"], q["embedding"]
    pred = logits.argmax(1)
    rec = M.same_listing_recall(emb, listing, ks=(1, 10))
    flags = q["uncertain"]
    correct = pred == y
    return {
        "bundle": display_path(bundle),
        "precision": q["variant"],
        "split": split,
        "n_photos": int(len(y)),
        "n_listings": int(len(np.unique(listing))),
        "photo_top1": M.topk_accuracy(logits, y, 1),
        "photo_top3": M.topk_accuracy(logits, y, 3),
        "listing_top1": M.listing_accuracy(logits, y, listing),
        "recall@1": rec[1],
        "recall@10": rec[10],
        "precision@10": M.category_precision_at_k(emb, y, db["embedding"], db_y, 10),
        "price_r2_log": M.knn_price_r2(emb, listing, logprice, db["embedding"], db_logprice,
                                       PRICE_K),
        "ece": expected_calibration_error(q["probs"], y),
        "uncertain_share": float(flags.mean()),
        "uncertain_accuracy": float(correct[flags].mean()) if flags.any() else None,
        "certain_accuracy": float(correct[~flags].mean()) if (~flags).any() else None,
        "per_class": dict(zip(labels, M.per_class_accuracy(y, pred, len(labels)).tolist(),
                              strict=True)),
        "confusion": M.confusion(y, pred, len(labels)).tolist(),
        "labels": labels,
        "seconds": round(time.time() - t0, 1),
        "_pred": pred, "_embedding": emb,  # for cross-precision agreement; not written out
    }


def precision_agreement(a: dict[str, Any], b: dict[str, Any]) -> dict[str, float]:
    """Top-1 agreement and embedding cosine between two runs on the same photos (a bundle's
    int8 and fp32 models): the int8 parity a user sees on this CPU, over a whole split."""
    ea, eb = a["_embedding"], b["_embedding"]
    cos = (ea * eb).sum(1) / (np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1)).clip(1e-12)
    return {"top1_agreement": float((a["_pred"] == b["_pred"]).mean()),
            "cosine_mean": float(cos.mean()), "cosine_p1": float(np.percentile(cos, 1)),
            "cosine_min": float(cos.min())}


def compare_bundles(bundles: dict[str, str | Path], data: str | Path, *,
                    precision: str = "int8", split: str = "test",
                    threads: int | None = None) -> dict[str, Any]:
    """:func:`evaluate_bundle` for each named bundle, in one run on the same photos."""
    return {name: evaluate_bundle(b, data, precision=precision, split=split, threads=threads)
            for name, b in bundles.items()}


ROWS = (("photo_top1", "photo top-1"), ("photo_top3", "photo top-3"),
        ("listing_top1", "listing top-1"), ("recall@1", "same-listing recall@1"),
        ("recall@10", "same-listing recall@10"), ("precision@10", "category precision@10"),
        ("price_r2_log", "kNN price R² (log)"), ("ece", "ECE (calibrated scores)"),
        ("uncertain_share", "share flagged uncertain"),
        ("uncertain_accuracy", "accuracy on flagged photos"),
        ("certain_accuracy", "accuracy on the rest"))


def render_markdown(results: dict[str, dict[str, Any]]) -> str:
    """One table, a column per bundle."""
    names = list(results)
    head = "| metric | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"

    def fmt(v: Any) -> str:
        return "–" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"

    body = "".join(f"| {label} | " + " | ".join(fmt(results[n].get(k)) for n in names) + " |\n"
                   for k, label in ROWS)
    first = results[names[0]]
    return (f"{first['split']} split: {first['n_photos']} photos, {first['n_listings']} "
            f"listings; each bundle through the runtime at "
            + ", ".join(f"{n}: {results[n]['precision']}" for n in names) + "\n\n" + head + body)


def main(argv: list[str] | None = None) -> int:
    """``python -m mkt.training.evaluate_bundle NAME=BUNDLE ... --data D --out DIR``."""
    import argparse

    from mkt.runtime.fsutil import atomic_write_json, atomic_write_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundles", nargs="+", help="NAME=BUNDLE_DIR[:precision]")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    results = {}
    for spec in a.bundles:
        name, _, rest = spec.partition("=")
        path, _, prec = rest.partition(":")
        results[name] = evaluate_bundle(path, a.data, precision=prec or "int8", split=a.split,
                                        threads=a.threads)
        print(f"{name}: top-1 {results[name]['photo_top1']:.3f} "
              f"({results[name]['seconds']} s)", flush=True)
    from mkt.runtime.bench import cpu_info

    names = list(results)
    agreement = {f"{x} vs {y}": precision_agreement(results[x], results[y])
                 for i, x in enumerate(names) for y in names[i + 1:]
                 if results[x]["bundle"] == results[y]["bundle"]
                 and results[x]["precision"] != results[y]["precision"]}
    for r in results.values():
        r.pop("_pred")
        r.pop("_embedding")
    a.out.mkdir(parents=True, exist_ok=True)
    out = {**results, "_agreement": agreement, "_cpu": cpu_info()}
    atomic_write_json(a.out / "bundles.json", out)
    md = render_markdown(results)
    if agreement:
        md += "\nint8 vs fp32 of one bundle, this CPU (" + ", ".join(cpu_info().get("simd", [])
                                                               or ["?"]) + "):\n\n"
        md += "".join(f"- {k}: top-1 agreement {v['top1_agreement']:.3f}, embedding cosine "
                      f"mean {v['cosine_mean']:.4f} / 1st percentile {v['cosine_p1']:.4f} / "
                      f"min {v['cosine_min']:.4f}\n" for k, v in agreement.items())
    atomic_write_text(a.out / "bundles.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
