"""Fit the photo + title fusion (category classifier, price kNN settings) for a bundle.

    python -m mkt.export.fusion --bundle DIR --data work/data --out DIR [--text-dir D]

1. Features (cached in ``--cache``, default ``$TMPDIR/mkt-fusion/features-<model_id>.npz``,
   keyed by model ids and data dir; never in the bundle): every photo of the
   cleaned data dir through the bundle's image model (``logits``, ``embedding``), and the
   MiniLM embedding of every listing title, from the bundle's own text model (manifest
   ``"text"``) or ``--text-dir`` (a folder with ``text.*.onnx`` + ``tokenizer.json``).
2. Listing-level features: mean of the listing's photo logits -> log-softmax (what
   ``mkt classify --listing`` does), mean photo embedding (renormalised), title embedding.
3. Category: multinomial logistic regression on ``[photo log-probs, (photo embedding),
   title embedding]`` (standardised), fitted on TRAIN listings; the feature set and ``C`` are
   chosen on VAL by listing top-1; TEST is scored once with the choice.
4. Price: kNN over the TRAIN listings (valid price only, see ``mkt.runtime.price``) with
   similarity ``alpha * cos(photo) + (1 - alpha) * cos(title)``, weights
   ``exp((s - s_best) / tau)``, mean of log price; alpha, k, tau chosen on VAL.
5. Writes ``<out>/fusion.npz`` (read by :mod:`mkt.runtime.fusion`, numpy only) and
   ``<out>/fusion.json`` (choices and val/test numbers).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
FEATURE_SETS = ("logp+title", "logp+emb+title")
ALPHA_GRID = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)
K_GRID = (10, 20, 40)
TAU_GRID = (0.02, 0.05, 0.1)


def _log(msg: str) -> None:
    print(f"[fusion {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_data(data: str | Path) -> tuple[Any, Any]:
    """(listings with a ``split`` column, photos) of a cleaned data dir."""
    import pandas as pd

    d = Path(data)
    lst = pd.read_parquet(d / "listings.parquet")
    sp = pd.read_csv(d / "split.csv", dtype=str)
    lst = lst.merge(sp, on="product_id", how="inner")
    photos = pd.read_parquet(d / "photos.parquet")
    return lst, photos


def photo_dir_from_data(data: str | Path) -> Path:
    """The photo folder of a cleaned data dir (its ``source.json``, as ``mkt data clean``
    writes it)."""
    src = Path(data) / "source.json"
    try:
        s = json.loads(src.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{src}: cannot read the data's source ({e})") from None
    for k in ("src", "source", "path"):
        if isinstance(s.get(k), str):
            folder = Path(s[k])
            if not folder.is_absolute():
                folder = (Path(data) / folder).resolve()
            if (folder / "images").is_dir():
                return folder / "images"
    raise ValueError(f"{src}: its source has no images/ folder")


def text_encoder_for(bundle_dir: Path, text_dir: Path | None):
    from mkt.runtime.bundle import load_bundle
    from mkt.runtime.text import TextEncoder

    b = load_bundle(bundle_dir)
    if "text" in b.manifest:
        return TextEncoder.from_bundle(b), str(b.manifest["text"].get("model"))
    if text_dir is None:
        raise SystemExit(f"{bundle_dir}: bundle has no text model; pass --text-dir")
    td = Path(text_dir)
    model = next((td / n for n in ("text.int8.onnx", "text.fp32.onnx") if (td / n).is_file()),
                 None)
    if model is None:
        raise SystemExit(f"{td}: no text.int8.onnx / text.fp32.onnx")
    return TextEncoder(model, td / "tokenizer.json"), model.name


def extract_features(bundle_dir: Path, data: Path, cache: Path, text_dir: Path | None = None,
                     batch: int = 64, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Photo outputs + title embeddings for every listing of ``data``; cached in ``cache``."""
    from mkt.runtime.images import load_letterboxed
    from mkt.runtime.model import Model

    model = Model(bundle_dir)
    enc, text_name = text_encoder_for(bundle_dir, text_dir)
    key = f"{model.model_id}|{text_name}|{Path(data).resolve()}|listing-text-v2"
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        if str(z["key"]) == key:
            log(f"features from cache {cache}")
            return {k: z[k] for k in z.files}
    lst, photos = load_data(data)
    img_dir = photo_dir_from_data(data)
    pids = photos["photo_id"].astype(str).tolist()
    outs: dict[str, list[np.ndarray]] = {}
    t0 = time.time()
    for s in range(0, len(pids), batch):
        x = np.stack([load_letterboxed(img_dir / f"{p}.jpg", model.input_size)
                      for p in pids[s: s + batch]])
        for k, v in model.run(x).items():
            outs.setdefault(k, []).append(v)
        if (s // batch) % 20 == 0:
            log(f"photos {s + len(x)}/{len(pids)} ({time.time() - t0:.0f}s)")
    titles = lst["title"].astype(str).tolist()
    log(f"title embeddings for {len(titles)} listings")
    temb = enc.encode([t if t.strip() else "(no title)" for t in titles], batch_size=64)
    # the catalogue side of the price kNN: what the index stores for each listing (title +
    # start of description, :func:`mkt.runtime.index.listing_text`)
    from mkt.runtime.index import listing_text

    log(f"listing-text embeddings for {len(titles)} listings")
    lemb = enc.encode([listing_text(t, d) or "(no text)" for t, d in
                       zip(titles, lst["description"].astype(str), strict=True)], batch_size=64)
    res = {
        "key": np.array(key),
        "photo_ids": np.array(pids),
        "photo_product_ids": photos["product_id"].astype(str).to_numpy(dtype=str),
        "product_ids": lst["product_id"].astype(str).to_numpy(dtype=str),
        "split": lst["split"].astype(str).to_numpy(dtype=str),
        "category": lst["category"].astype(str).to_numpy(dtype=str),
        "price": lst["price"].astype(float).to_numpy(),
        "title_emb": temb.astype(np.float32),
        "listing_emb": lemb.astype(np.float32),
        "labels": np.array(model.labels),
    }
    for k, v in outs.items():
        res[f"photo_{k}"] = np.concatenate(v).astype(np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **res)
    return res


def listing_features(f: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per listing (rows of ``f["product_ids"]``): mean photo logits -> log-softmax, mean
    photo embedding (renormalised); listings with no photo are dropped (``keep``)."""
    from mkt.runtime.fusion import listing_photo_features

    pos = {p: i for i, p in enumerate(f["product_ids"])}
    groups: dict[int, list[int]] = {}
    for j, p in enumerate(f["photo_product_ids"]):
        if p in pos:
            groups.setdefault(pos[p], []).append(j)
    keep = np.array(sorted(groups), dtype=np.int64)
    logp = np.zeros((len(keep), f["photo_logits"].shape[1]), np.float32)
    emb = np.zeros((len(keep), f["photo_embedding"].shape[1]), np.float32)
    for r, i in enumerate(keep):
        lp, e = listing_photo_features(f["photo_logits"][groups[i]],
                                       f["photo_embedding"][groups[i]])
        logp[r], emb[r] = lp, e
    return {"keep": keep, "logp": logp, "emb": emb}


def _design(feat: str, logp, emb, title) -> np.ndarray:
    parts = [logp] + ([emb] if "emb" in feat else []) + [title]
    return np.concatenate(parts, axis=1).astype(np.float64)


def fit_category(f: dict[str, Any], L: dict[str, np.ndarray],
                 log: Callable[[str], None] = _log) -> tuple[dict[str, Any], dict[str, Any]]:
    """Logistic regression fusion; returns (arrays for fusion.npz, report)."""
    from sklearn.linear_model import LogisticRegression

    labels = [str(x) for x in f["labels"]]
    li = {c: i for i, c in enumerate(labels)}
    keep = L["keep"]
    split = f["split"][keep]
    y = np.array([li[c] for c in f["category"][keep]])
    title = f["title_emb"][keep]
    tr, va, te = (split == "train"), (split == "val"), (split == "test")
    rep: dict[str, Any] = {"n": {"train": int(tr.sum()), "val": int(va.sum()),
                                 "test": int(te.sum())}}
    rep["photo_only"] = {s: float((L["logp"][m].argmax(1) == y[m]).mean())
                         for s, m in (("val", va), ("test", te))}
    grid = []
    best = None
    for feat in FEATURE_SETS:
        X = _design(feat, L["logp"], L["emb"], title)
        mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-6
        Z = (X - mu) / sd
        for C in C_GRID:
            clf = LogisticRegression(C=C, max_iter=2000)
            clf.fit(Z[tr], y[tr])
            acc = float((clf.predict(Z[va]) == y[va]).mean())
            grid.append({"features": feat, "C": C, "val_top1": acc})
            log(f"category {feat} C={C}: val top-1 {acc:.4f}")
            if best is None or acc > best[0]:
                best = (acc, feat, C, clf, mu, sd)
    assert best is not None
    acc, feat, C, clf, mu, sd = best
    Xte = (_design(feat, L["logp"], L["emb"], title)[te] - mu) / sd
    test_acc = float((clf.predict(Xte) == y[te]).mean())
    # title-only reference (same protocol)
    ttr = title[tr].astype(np.float64)
    tmu, tsd = ttr.mean(0), ttr.std(0) + 1e-6
    tl = LogisticRegression(C=1.0, max_iter=2000).fit((ttr - tmu) / tsd, y[tr])
    rep["title_only_C1"] = {
        "val": float((tl.predict((title[va] - tmu) / tsd) == y[va]).mean()),
        "test": float((tl.predict((title[te] - tmu) / tsd) == y[te]).mean())}
    rep.update(grid=grid, chosen={"features": feat, "C": C}, val_top1=acc, test_top1=test_acc)
    log(f"category chosen {feat} C={C}: val {acc:.4f} test {test_acc:.4f}")
    arrays = {
        "cat_W": clf.coef_.astype(np.float32), "cat_b": clf.intercept_.astype(np.float32),
        "cat_mu": mu.astype(np.float32), "cat_sd": sd.astype(np.float32),
        "cat_uses_emb": np.array("emb" in feat), "labels": np.array(labels),
    }
    return arrays, rep


def fit_price(f: dict[str, Any], L: dict[str, np.ndarray],
              log: Callable[[str], None] = _log) -> tuple[dict[str, Any], dict[str, Any]]:
    """Choose alpha/k/tau of the fused kNN on val; catalogue = train listings, each by its
    mean photo embedding and its listing-text embedding (as the index stores it); queries by
    their photos and their title only (what a seller types)."""
    from sklearn.metrics import r2_score

    from mkt.runtime.fusion import knn_log_price
    from mkt.training.metrics import valid_price

    keep = L["keep"]
    split = f["split"][keep]
    price = f["price"][keep]
    ok = valid_price(price)
    cat = (split == "train") & ok
    emb, title = L["emb"], f["title_emb"][keep]
    ctext = f["listing_emb"][keep]
    ylog = np.log(np.where(ok, price, 1.0))

    def score(mask, alpha, k, tau):
        pe = knn_log_price(emb[mask], title[mask], emb[cat], ctext[cat], ylog[cat],
                           alpha=alpha, k=k, tau=tau)
        return float(r2_score(ylog[mask], pe))

    va, te = (split == "val") & ok, (split == "test") & ok
    grid = []
    for a in ALPHA_GRID:
        for k in K_GRID:
            for tau in TAU_GRID:
                grid.append({"alpha": a, "k": k, "tau": tau, "val_r2_log": score(va, a, k, tau)})
    best = max(grid, key=lambda g: g["val_r2_log"])
    log(f"price chosen {best}")
    test = score(te, best["alpha"], best["k"], best["tau"])
    photo_only = max((g for g in grid if g["alpha"] == 1.0), key=lambda g: g["val_r2_log"])
    title_only = max((g for g in grid if g["alpha"] == 0.0), key=lambda g: g["val_r2_log"])
    rep = {
        "n": {"catalogue": int(cat.sum()), "val": int(va.sum()), "test": int(te.sum())},
        "chosen": {k: best[k] for k in ("alpha", "k", "tau")},
        "val_r2_log": best["val_r2_log"], "test_r2_log": test,
        "photo_only": {**photo_only, "test_r2_log": score(te, 1.0, photo_only["k"],
                                                          photo_only["tau"])},
        "title_only": {**title_only, "test_r2_log": score(te, 0.0, title_only["k"],
                                                          title_only["tau"])},
        "grid": grid,
    }
    log(f"price: val {best['val_r2_log']:.4f} test {test:.4f}")
    arrays = {"price_alpha": np.float32(best["alpha"]), "price_k": np.int32(best["k"]),
              "price_tau": np.float32(best["tau"])}
    return arrays, rep


def fit_fusion(bundle: str | Path, data: str | Path, out: str | Path,
               text_dir: str | Path | None = None, cache: str | Path | None = None,
               log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Everything above; writes ``fusion.npz`` + ``fusion.json`` into ``out`` (the bundle
    dir, normally: then re-hash the manifest's ``files``)."""
    import tempfile

    from mkt.runtime import fsutil
    from mkt.runtime.bundle import load_bundle

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    b = load_bundle(bundle)
    cache = Path(cache) if cache else (Path(tempfile.gettempdir()) / "mkt-fusion"
                                       / f"features-{b.model_id}.npz")
    f = extract_features(Path(bundle), Path(data), cache,
                         Path(text_dir) if text_dir else None, log=log)
    L = listing_features(f)
    cat_arrays, cat_rep = fit_category(f, L, log)
    price_arrays, price_rep = fit_price(f, L, log)
    arrays = {**cat_arrays, **price_arrays, "model_id": np.array(b.model_id),
              "text_dim": np.int32(f["title_emb"].shape[1])}
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    fsutil.atomic_write_bytes(out / "fusion.npz", buf.getvalue())
    report = {"model_id": b.model_id, "bundle": str(Path(bundle)), "data": str(Path(data)),
              "category": cat_rep, "price": price_rep}
    fsutil.atomic_write_json(out / "fusion.json", report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--text-dir", type=Path, default=None,
                    help="text model dir, when the bundle has no 'text' section yet")
    ap.add_argument("--cache", type=Path, default=None, help="feature cache file (.npz)")
    a = ap.parse_args(argv)
    rep = fit_fusion(a.bundle, a.data, a.out, a.text_dir, a.cache)
    c, p = rep["category"], rep["price"]
    print(json.dumps({"category": {k: c[k] for k in ("chosen", "val_top1", "test_top1",
                                                     "photo_only", "title_only_C1")},
                      "price": {k: p[k] for k in ("chosen", "val_r2_log", "test_r2_log")}},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

