"""`mkt evaluate CKPT`: a checkpoint on the test split, always beside frozen ImageNet features.

The fine-tuned model is scored with its own heads (logits for categories, embedding for
retrieval). The baseline is the same backbone with its ImageNet weights and no training on this
data: a logistic-regression probe on its pooled features for categories, and its L2-normalised
pooled features for retrieval. Both run through the same ONNX Runtime inference
(``features.model_outputs``) on the same photos, so the comparison is like for like.

Metrics (definitions in ``mkt.training.metrics``): photo top-1/top-3, listing top-1 (mean of a
listing's photo logits), per-class accuracy, confusion matrix; same-listing recall@1/@10 within
the test photos; category precision@10 of test photos against the train photos (the catalogue,
as `mkt similar` searches it); kNN price suggestion (median log price of the 25 nearest train
photos with a valid price, averaged over a listing's photos), R² against the true log price.
Text head: title -> photo recall@10 (query = the frozen MiniLM embedding of each test listing's
title, database = the test photos' ``text_embedding``; hit = a photo of that listing in the top
10). Calibration: ECE (15 bins) of the photo softmax before and after the checkpoint's
temperature (fitted on val at training time).
"""

from __future__ import annotations

import hashlib
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from mkt.runtime.fsutil import display_path
from mkt.training import metrics as M
from mkt.training.report import md_table, plot_confusion, plot_per_class, write_json
from mkt.training.train import ece_score

TARGETS = {"photo_top1": 0.70, "recall@1": 0.70, "recall@10": 0.90, "precision@10": 0.60,
           "price_r2_log": 0.40}
METRIC_NAMES = {
    "photo_top1": "photo top-1 accuracy",
    "photo_top3": "photo top-3 accuracy",
    "listing_top1": "listing top-1 accuracy (mean of photo logits)",
    "recall@1": "same-listing recall@1 (test vs test)",
    "recall@10": "same-listing recall@10 (test vs test)",
    "precision@10": "category precision@10 (test vs train catalogue)",
    "price_r2_log": "kNN price R² on log price (k=25, train catalogue)",
}
PROBE_C = 0.1
PRICE_K = 25


def score(logits: np.ndarray, emb: np.ndarray, y: np.ndarray, listing: np.ndarray,
          logprice: np.ndarray, db_emb: np.ndarray, db_y: np.ndarray, db_logprice: np.ndarray,
          n_classes: int, k_price: int = PRICE_K) -> dict:
    """Every metric for one model's test outputs against its train-photo catalogue."""
    pred = logits.argmax(1)
    rec = M.same_listing_recall(emb, listing, ks=(1, 10))
    return {
        "photo_top1": M.topk_accuracy(logits, y, 1),
        "photo_top3": M.topk_accuracy(logits, y, 3),
        "listing_top1": M.listing_accuracy(logits, y, listing),
        "recall@1": rec[1],
        "recall@10": rec[10],
        "precision@10": M.category_precision_at_k(emb, y, db_emb, db_y, 10),
        "price_r2_log": M.knn_price_r2(emb, listing, logprice, db_emb, db_logprice, k_price),
        "per_class": M.per_class_accuracy(y, pred, n_classes),
        "confusion": M.confusion(y, pred, n_classes),
    }


def _split_sha(data: Path) -> str:
    p = data / "split.csv"
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else ""


def _log_prices(data: Path, product_ids: list[str]) -> np.ndarray:
    listings = pd.read_parquet(data / "listings.parquet", columns=["product_id", "price"])
    price = listings.set_index("product_id")["price"].reindex(product_ids).to_numpy(np.float64)
    ok = M.valid_price(price)
    return np.where(ok, np.log(np.where(ok, price, 1.0)), np.nan)


def _probe_logits(f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray,
                  n_classes: int, seed: int = 0) -> np.ndarray:
    """Standardised logistic-regression probe on frozen features; scores ``[N, n_classes]``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(),
                        LogisticRegression(C=PROBE_C, max_iter=500, random_state=seed))
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(f_train, y_train)
        s = clf.decision_function(f_test)
    out = np.full((len(f_test), n_classes), -np.inf)
    cls = clf.classes_
    out[:, cls] = s if s.ndim == 2 else np.c_[-s, s]
    return out


def _text_metrics(data: Path, td, te: np.ndarray, temb: np.ndarray | None, ckpt: dict) -> dict:
    """Title -> photo recall@10 of the text head on the test split."""
    from mkt.training.text import TEXT_MODEL, title_embeddings
    from mkt.training.train import title_recall_at_k

    if temb is None or "text_dim" not in ckpt:
        return {"unavailable": "checkpoint has no trained text head"}
    pids = sorted(set(td.product_ids))
    cache = Path(ckpt.get("config", {}).get("cache_dir") or "") / "titles-minilm.npy"
    cache = cache if cache.parent.is_dir() and str(cache.parent) not in ("", ".") else None
    text = title_embeddings(data, pids, cache)
    lst = td.listing[te]
    return {"title_recall@10": title_recall_at_k(temb, lst, text[lst], 10),
            "title_recall@1": title_recall_at_k(temb, lst, text[lst], 1),
            "queries": int(len(np.unique(lst))), "database_photos": int(len(lst)),
            "text_model": TEXT_MODEL,
            "text_weight": (ckpt.get("config") or {}).get("text_weight")}


def _stem_cache_for(model, ckpt: dict, td):
    """The training run's stem cache, when it matches this checkpoint's stem and photos."""
    from torch import nn

    from mkt.training.features import load_stem_cache_if_valid
    from mkt.training.train import TrainConfig, stem_cache_name

    cfg = ckpt.get("config") or {}
    if cfg.get("mode", "auto") == "full" or not cfg.get("cache_dir") and not cfg.get("out"):
        return None
    try:
        heads_only = bool(cfg.get("heads_only"))
        tc = TrainConfig(data="", out="", arch=ckpt["arch"], split=ckpt.get("split"),
                         n_aug=int(cfg.get("n_aug", 3)), heads_only=heads_only)
        f = Path(cfg.get("cache_dir") or cfg.get("out")) / stem_cache_name(tc)
        frozen = nn.Sequential(model.stem, model.tail) if heads_only else model.stem
        return load_stem_cache_if_valid(frozen, td.paths, td.split == "train", tc.n_aug,
                                        int(ckpt["input_size"]), int(cfg.get("seed", 0)), f)
    except Exception:  # noqa: BLE001 - no usable cache: fall back to the photos
        return None


def _outputs_from_pooled(model, cache, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Heads of ``model`` on cached pooled trunk features of each row's eval view."""
    import torch

    views = cache.views_of()
    first = np.array([views[int(r)][cache.view[views[int(r)]] == 0][0] for r in rows], np.int64)
    feats = cache.acts[first].astype(np.float32)
    model.eval()
    with torch.no_grad():
        lo, em, te = model.heads(torch.from_numpy(feats))
    return {"logits": lo.numpy(), "embedding": em.numpy(), "text_embedding": te.numpy(),
            "features": feats}


def _pooled_baseline(bmodel, spec, td, ckpt: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """Frozen-ImageNet pooled features of the eval views from the pooled cache, if it matches."""
    from torch import nn

    from mkt.training.features import load_stem_cache_if_valid
    from mkt.training.train import TrainConfig, stem_cache_name

    cfg = ckpt.get("config") or {}
    d = cfg.get("cache_dir") or cfg.get("out")
    if not d:
        return None
    n_aug = int(cfg.get("n_aug", 3))
    f = Path(d) / stem_cache_name(TrainConfig(data="", out="", arch=spec.name, n_aug=n_aug,
                                              heads_only=True))
    cache = load_stem_cache_if_valid(nn.Sequential(bmodel.stem, bmodel.tail), td.paths,
                                     td.split == "train", n_aug, spec.input_size,
                                     int(cfg.get("seed", 0)), f)
    if cache is None:
        return None
    views = cache.views_of()
    out = []
    for m in (td.split == "train", td.split == "test"):
        rows = np.flatnonzero(m)
        first = np.array([views[int(r)][cache.view[views[int(r)]] == 0][0] for r in rows])
        out.append(cache.acts[first].astype(np.float32))
    return out[0], out[1]


def _baseline_features(bmodel, spec, p_tr: list, p_te: list, ckpt: dict,
                       progress: bool, td=None) -> tuple[np.ndarray, np.ndarray]:
    """Pooled frozen-ImageNet features of train and test photos, cached beside the stem cache.

    They depend only on the arch, its ImageNet weights and the photos, not on the checkpoint,
    so every evaluation of the same arch on the same split reuses them.
    """
    from mkt.training.features import model_outputs

    if td is not None and (pooled := _pooled_baseline(bmodel, spec, td, ckpt)) is not None:
        return pooled
    cache_dir = (ckpt.get("config") or {}).get("cache_dir")
    h = hashlib.sha256(f"{spec.name}/{bmodel.pretrained}/{spec.input_size}".encode())
    h.update("\n".join(map(str, p_tr)).encode() + b"|" + "\n".join(map(str, p_te)).encode())
    key = h.hexdigest()
    f = Path(cache_dir) / f"baseline-{spec.name}-{key[:16]}.npz" if cache_dir else None
    if f is not None and f.exists():
        z = np.load(f)
        return z["train"], z["test"]
    b_tr = model_outputs(bmodel, p_tr, spec.mean, spec.std, spec.input_size,
                         progress=progress)["features"]
    b_te = model_outputs(bmodel, p_te, spec.mean, spec.std, spec.input_size,
                         progress=progress)["features"]
    if f is not None and f.parent.is_dir():
        tmp = Path(str(f) + ".tmp.npz")
        np.savez(tmp, train=b_tr, test=b_te)
        tmp.replace(f)
    return b_tr, b_te


def evaluate(checkpoint: Path, data: Path | None = None, out: Path | None = None,
             baseline: bool = True, limit: int | None = None, progress: bool = False) -> dict:
    """Evaluate ``checkpoint`` on the test split; writes report.json/.md and PNGs to ``out``.

    ``data`` defaults to the checkpoint's cleaned data dir; ``limit`` keeps about that many
    photos (whole listings, every split) for quick checks.
    """
    from mkt.training.checkpoint import data_for_report
    from mkt.training.features import model_outputs, model_outputs_from_cache
    from mkt.training.models import build_model, get_arch
    from mkt.training.train import TrainConfig, load_checkpoint, load_train_data

    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else checkpoint.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    model, ckpt = load_checkpoint(checkpoint)
    data = Path(data) if data is not None else Path(ckpt["data"]["clean_dir"])
    images = (ckpt.get("config") or {}).get("images")
    td = load_train_data(TrainConfig(data=str(data), out="", images=images, limit_photos=limit,
                                     progress=False, tensorboard=False))
    labels = list(ckpt["labels"])
    if td.labels != labels:
        raise ValueError(f"{data}: labels {td.labels} differ from the checkpoint's {labels}")
    n = len(labels)
    tr, te = td.split == "train", td.split == "test"
    if not te.any() or not tr.any():
        raise ValueError(f"{data}: the split has no test or no train photos")
    paths = np.asarray(td.paths)
    logprice = _log_prices(data, td.product_ids)
    y_tr, y_te, lst_te = td.label[tr], td.label[te], td.listing[te]
    lp_tr, lp_te = logprice[tr], logprice[te]
    timings: dict[str, float] = {}

    t = time.time()
    cache = _stem_cache_for(model, ckpt, td) if limit is None else None
    heads_only = bool((ckpt.get("config") or {}).get("heads_only"))
    if cache is not None:
        # cached-mode training never changes the stem: run only the tail on the cached
        # (float16) stem activations of each photo's eval view (heads-only runs: only the
        # heads, on the cached pooled features of the frozen trunk)
        run = _outputs_from_pooled if heads_only else model_outputs_from_cache
        o_tr = run(model, cache, np.flatnonzero(tr))
        o_te = run(model, cache, np.flatnonzero(te))
    else:
        o_tr = model_outputs(model, list(paths[tr]), ckpt["mean"], ckpt["std"],
                             ckpt["input_size"], progress=progress)
        o_te = model_outputs(model, list(paths[te]), ckpt["mean"], ckpt["std"],
                             ckpt["input_size"], progress=progress)
    timings["inference_finetuned_s"] = round(time.time() - t, 1)
    inference_from = "photos"
    if cache is not None:
        inference_from = ("cached float16 pooled features of the eval view (frozen trunk)"
                          if heads_only else
                          "cached float16 stem activations of the eval view (frozen stem)")
    t = time.time()
    with threadpool_limits(1):
        ft = score(o_te["logits"], o_te["embedding"], y_te, lst_te, lp_te, o_tr["embedding"],
                   y_tr, lp_tr, n)
    timings["metrics_finetuned_s"] = round(time.time() - t, 1)
    t = time.time()
    text_info = _text_metrics(data, td, te, o_te.get("text_embedding"), ckpt)
    timings["text_metrics_s"] = round(time.time() - t, 1)
    temp = float((ckpt.get("calibration") or {}).get("temperature")
                 or (ckpt.get("metrics") or {}).get("temperature") or 1.0)
    ft["ece"] = ece_score(o_te["logits"], y_te)
    ft["ece_calibrated"] = ece_score(o_te["logits"], y_te, temperature=temp)
    ft["title_recall@10"] = text_info.get("title_recall@10", float("nan"))
    calibration = {"temperature": temp, "ece_test_before": ft["ece"],
                   "ece_test_after": ft["ece_calibrated"], "bins": 15,
                   **{k: v for k, v in (ckpt.get("calibration") or {}).items()
                      if k.startswith("ece_val")}}

    base: dict | None = None
    base_info: dict = {"requested": baseline}
    if baseline:
        t = time.time()
        try:
            bmodel = build_model(ckpt["arch"], n, ckpt["embed_dim"], pretrained="imagenet")
        except Exception as exc:  # noqa: BLE001 - offline download etc.: report, don't die
            bmodel = None
            base_info["unavailable"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        if bmodel is not None and "random" in str(bmodel.pretrained).lower():
            base_info["unavailable"] = f"{ckpt['arch']} has no ImageNet weights"
            bmodel = None
        if bmodel is not None:
            spec = get_arch(ckpt["arch"])
            base_info["pretrained"] = bmodel.pretrained
            b_tr, b_te = _baseline_features(bmodel, spec, list(paths[tr]), list(paths[te]),
                                            ckpt, progress, td if limit is None else None)
            timings["inference_baseline_s"] = round(time.time() - t, 1)
            t = time.time()
            b_logits = _probe_logits(b_tr, y_tr, b_te, n)
            timings["probe_baseline_s"] = round(time.time() - t, 1)
            t = time.time()
            e_tr, e_te = M.l2_normalise(b_tr), M.l2_normalise(b_te)
            with threadpool_limits(1):
                base = score(b_logits, e_te, y_te, lst_te, lp_te, e_tr, y_tr, lp_tr, n)
            timings["metrics_baseline_s"] = round(time.time() - t, 1)
            base_info.update({"features": "pooled trunk features, L2-normalised for retrieval",
                              "feature_dim": int(b_tr.shape[1]),
                              "probe": f"StandardScaler + LogisticRegression(C={PROBE_C}, "
                                       "max_iter=500) on train photos"})
    timings["total_s"] = round(time.time() - t_all, 1)

    support = np.bincount(y_te, minlength=n)
    ck_sha = ckpt["data"].get("split_sha256", "")
    report = {
        "checkpoint": {"path": display_path(checkpoint), "arch": ckpt["arch"],
                       "pretrained": ckpt.get("pretrained"), "epoch": ckpt.get("epoch"),
                       "best_metric": ckpt.get("best_metric"), "command": ckpt.get("command"),
                       "config": ckpt.get("config"), "data": data_for_report(ckpt)},
        "data": {"clean_dir": display_path(data), "split_sha256": _split_sha(data),
                 "split_matches_checkpoint": (_split_sha(data) == ck_sha) if ck_sha else None,
                 "limit": limit},
        "counts": {"train_photos": int(tr.sum()), "test_photos": int(te.sum()),
                   "test_listings": int(len(np.unique(lst_te))),
                   "recall_queries": M.same_listing_queries(lst_te),
                   "price_test_listings": int(len(np.unique(lst_te[np.isfinite(lp_te)]))),
                   "price_catalogue_photos": int(np.isfinite(lp_tr).sum()),
                   "test_per_class": dict(zip(labels, support.tolist(), strict=True))},
        "labels": labels,
        "targets": TARGETS,
        "price_rule": "price known, > £0 and <= £100,000 (query listings and catalogue alike)",
        "finetuned": ft,
        "baseline": base,
        "baseline_info": base_info,
        "text": text_info,
        "calibration": calibration,
        "inference_from": inference_from,
        "timings": timings,
    }
    report["finetuned_meets_targets"] = {k: bool(ft[k] >= v) for k, v in TARGETS.items()
                                         if np.isfinite(ft[k])}
    write_json(out / "report.json", report)
    plot_confusion(ft["confusion"], labels, out / "confusion.png",
                   f"fine-tuned {ckpt['arch']}: test photos, rows normalised")
    if base is not None:
        plot_confusion(base["confusion"], labels, out / "confusion_baseline.png",
                       f"frozen ImageNet {ckpt['arch']} + linear probe: rows normalised")
    series = {}
    if base is not None:
        series["frozen ImageNet + probe"] = base["per_class"]
    series["fine-tuned"] = ft["per_class"]
    plot_per_class(labels, series, out / "per_class.png",
                   f"per-class test accuracy ({ckpt['arch']})", support=support.tolist())
    (out / "report.md").write_text(render_markdown(report))
    return report


def render_markdown(r: dict) -> str:
    ft, base, ck = r["finetuned"], r["baseline"], r["checkpoint"]
    rows = []
    for key, name in METRIC_NAMES.items():
        target = r["targets"].get(key)
        met = (ft[key] >= target) if target is not None and np.isfinite(ft[key]) else None
        rows.append([name, base[key] if base else None, ft[key],
                     f">= {target:.2f}" if target is not None else "–", met])
    c = r["counts"]
    bi = r["baseline_info"]
    lines = [
        f"# Evaluation: {ck['arch']} ({ck['pretrained']}), epoch {ck['epoch']}\n",
        f"Checkpoint `{ck['path']}`; trained with `{ck['command']}`.",
        f"Data `{r['data']['clean_dir']}`, test split: {c['test_photos']} photos of "
        f"{c['test_listings']} listings; catalogue: {c['train_photos']} train photos. "
        "Split matches the checkpoint's: "
        f"{ {True: 'yes', False: 'NO', None: 'unknown'}[r['data']['split_matches_checkpoint']] }."
        + (f" Limited to about {r['data']['limit']} photos." if r["data"]["limit"] else "")
        + "\n",
        md_table(["metric", "frozen ImageNet", "fine-tuned", "target", "met"], rows),
    ]
    if base is None:
        lines.append(f"Frozen-ImageNet baseline: unavailable "
                     f"({bi.get('unavailable', 'not requested')}).\n")
    else:
        lines.append(f"Frozen ImageNet: {bi['pretrained']}, {bi['features']} "
                     f"({bi['feature_dim']}-d); categories by {bi['probe']}.\n")
    lines += [
        f"Recall queries: {c['recall_queries']} test photos whose listing has another test "
        "photo (query excluded from the candidates). Price: "
        f"{c['price_test_listings']} test listings and {c['price_catalogue_photos']} catalogue "
        f"photos with a valid price ({r['price_rule']}). The price R² target belongs to a later "
        "issue.\n",
        "## Per-class test accuracy\n",
    ]
    pc_rows = []
    for i, lab in enumerate(r["labels"]):
        pc_rows.append([lab, c["test_per_class"][lab],
                        base["per_class"][i] if base else None, ft["per_class"][i]])
    lines.append(md_table(["class", "test photos", "frozen ImageNet", "fine-tuned"], pc_rows))
    tx, cal = r.get("text") or {}, r.get("calibration") or {}
    lines.append("## Text head and calibration\n")
    if "title_recall@10" in tx:
        lines.append(f"Title -> photo recall@10 (test): {tx['title_recall@10']:.3f} "
                     f"(@1 {tx['title_recall@1']:.3f}); {tx['queries']} title queries "
                     f"({tx['text_model']}) against {tx['database_photos']} test photos' "
                     "text_embedding.\n")
    else:
        lines.append(f"Text head: {tx.get('unavailable', 'not evaluated')}.\n")
    if cal:
        val = ""
        if "ece_val_before" in cal:
            val = (f"; val {cal['ece_val_before']:.3f} -> {cal['ece_val_after']:.3f}")
        lines.append(f"ECE (15 bins), temperature T = {cal['temperature']:.3f} fitted on val: "
                     f"test {cal['ece_test_before']:.3f} -> {cal['ece_test_after']:.3f}{val} "
                     "(target <= 0.05).\n")
    lines.append("![per-class accuracy](per_class.png)\n\n![confusion matrix](confusion.png)\n")
    lines.append("Timings (s): " + ", ".join(f"{k} {v}" for k, v in r["timings"].items()))
    return "\n".join(lines) + "\n"
