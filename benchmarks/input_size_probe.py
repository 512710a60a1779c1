"""Native vs 224 px input for frozen EfficientNet-Lite trunks, on the validation split.

Why: the dataset's photos are 224 px, while Lite1 and Lite2 were trained on ImageNet at 240 and
260 px. Feeding them upscaled photos costs 1.15x / 1.35x the pixels (time); this says whether
it buys anything. Each (arch, size) is the frozen ImageNet trunk's pooled features of the eval
view (the runtime's preprocessing contract at that size), scored by the same linear probe
``mkt evaluate`` uses (fit on train photos) and by same-listing recall on the features
themselves. Val only: a choice is made from it.

    python benchmarks/input_size_probe.py --data work/data --out reports/model_quality/input_size
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mkt.runtime.bench import cpu_info
from mkt.training import metrics as M
from mkt.training.evaluate import _probe_logits
from mkt.training.features import model_outputs
from mkt.training.models import build_model, get_arch
from mkt.training.report import md_table
from mkt.training.train import TrainConfig, load_train_data

CONFIGS = (("efficientnet_lite0", 224), ("efficientnet_lite1", 224), ("efficientnet_lite1", 240),
           ("efficientnet_lite2", 224), ("efficientnet_lite2", 260))


def probe(arch: str, size: int, td, n_classes: int) -> dict:
    spec = get_arch(arch)
    model = build_model(arch, n_classes, pretrained="imagenet").eval()
    tr, va = np.flatnonzero(td.split == "train"), np.flatnonzero(td.split == "val")
    t0 = time.time()
    feats = model_outputs(model, [td.paths[i] for i in np.r_[tr, va]], spec.mean, spec.std,
                          size, progress=False)["features"]
    seconds = time.time() - t0
    f_tr, f_va = feats[: len(tr)], feats[len(tr):]
    logits = _probe_logits(f_tr, td.label[tr], f_va, n_classes)
    emb, db = M.l2_normalise(f_va), M.l2_normalise(f_tr)
    rec = M.same_listing_recall(emb, td.listing[va], ks=(1, 10))
    return {"arch": arch, "size": size, "native": size == spec.input_size,
            "val_top1": M.topk_accuracy(logits, td.label[va], 1),
            "val_listing_top1": M.listing_accuracy(logits, td.label[va], td.listing[va]),
            "val_recall@1": rec[1], "val_recall@10": rec[10],
            "val_precision@10": M.category_precision_at_k(emb, td.label[va], db, td.label[tr], 10),
            "ms_per_photo": round(1000 * seconds / len(feats), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args()
    td = load_train_data(TrainConfig(data=a.data, out="", progress=False, tensorboard=False))
    rows = []
    for arch, size in CONFIGS:
        rows.append(probe(arch, size, td, len(td.labels)))
        print(json.dumps(rows[-1]), flush=True)
    write_results(rows, cpu_info(), a.data, a.out)


def write_results(rows: list[dict], cpu: dict, data: str, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=1) + "\n",
                                      encoding="utf-8")
    cols = ["val_top1", "val_listing_top1", "val_recall@1", "val_recall@10", "val_precision@10"]
    table = md_table(["trunk (frozen ImageNet)", "input px", *cols, "ms a photo (extract)"],
                     [[r["arch"], f"{r['size']}{' (native)' if r['native'] else ''}",
                       *[f"{r[c]:.3f}" for c in cols], f"{r['ms_per_photo']:.1f}"] for r in rows])
    (out / "results.md").write_text(
        "# Native vs 224 px input, frozen trunks, val split\n\n"
        f"`python benchmarks/input_size_probe.py --data {data} --out {out}`\n\n"
        f"CPU: {cpu['model']}, {cpu['usable_cores']} cores ({', '.join(cpu.get('simd', []))}); "
        "ms a photo: the extraction's wall time over the train and val photos (decode, "
        "preprocess, onnxruntime at batch 64, and the one-off ONNX export) divided by their "
        "number.\n\n"
        + table + "\n", encoding="utf-8")

if __name__ == "__main__":
    main()
