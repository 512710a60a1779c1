"""The seed projects' baselines, reproduced on mkt's listing-level split.

- price from tabular features (category path, county, town, text lengths) with Ridge / Lasso /
  ElasticNet, each tuned by 5-fold GridSearchCV on train+val, scored on test (raw and log price);
- category from raw pixels: logistic regression on standardised 32x32 RGB photos;
- category from a small CNN trained from scratch on 64 px photos (mkt's own training loop);
- the majority class and the mean price, for context.

Every figure is on the test split of the cleaned data's ``split.csv`` (by listing, reused photos
on one side only), so none of them is inflated by photos of one listing on both sides.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from mkt.runtime.catalogue import MAX_VALID_PRICE
from mkt.training.metrics import topk_accuracy, valid_price
from mkt.training.report import md_table, write_json

MAX_PRICE = MAX_VALID_PRICE
PRICE_RULE = ("a listing's price is used when it is known, above £0 and at most £100,000 "
              "(train and test alike); others are dropped")
SEED = {"price_r2": 0.088, "pixel_logreg_top1": "0.16-0.17", "small_cnn_top1": 0.166}
ALPHAS = tuple(np.logspace(-3, 3, 7).tolist())
REL_ALPHAS = (1e-3, 1e-2, 1e-1, 1.0)  # Lasso / ElasticNet: alpha = r * std(target)
L1_RATIOS = (0.2, 0.5, 0.8)
CV_FOLDS = 5
PIXEL_SIZE = 32
PIXEL_CS = (1e-3, 1e-2)


# --------------------------------------------------------------------------- data


def _photo_table(data: Path, limit: int | None):
    """Photos (paths, labels, listing, split) exactly as the training loop sees them."""
    from mkt.training.train import TrainConfig, load_train_data

    return load_train_data(TrainConfig(data=str(data), out="", limit_photos=limit,
                                       progress=False, tensorboard=False))


def price_frame(listings: pd.DataFrame) -> pd.DataFrame:
    """Tabular features of a listing for the price models (no photo, no free text)."""
    levels = listings["category_path"].fillna("").str.split(" / ")
    out = pd.DataFrame(index=listings.index)
    out["category"] = listings["category"].fillna("")
    for i in (1, 2, 3):
        out[f"path_{i}"] = [" / ".join(p[: i + 1]) if len(p) > i else "(none)" for p in levels]
    out["county"] = listings["county"].fillna("").replace("", "(none)")
    out["town"] = listings["town"].fillna("").replace("", "(none)")
    out["title_words"] = np.log1p(listings["title"].fillna("").str.split().str.len())
    out["desc_chars"] = np.log1p(listings["description"].fillna("").str.len())
    out["n_photos"] = listings["photo_ids"].map(len).astype(float)
    return out


CATEGORICAL = ["category", "path_1", "path_2", "path_3", "county"]
NUMERIC = ["title_words", "desc_chars", "n_photos"]


def _price_pipeline(model, min_town: int = 5):
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    pre = ColumnTransformer([
        ("cat", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
        # towns: the frequent ones (>= min_town training listings) get a column, rest "other"
        ("town", OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=min_town),
         ["town"]),
        ("num", StandardScaler(), NUMERIC),
    ])
    return Pipeline([("features", pre), ("model", model)])


def price_baselines(listings: pd.DataFrame, cv: int | None = None, seed: int = 0) -> dict:
    """Ridge / Lasso / ElasticNet on raw and on log price; ``listings`` has a ``split`` column."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import ElasticNet, Lasso, Ridge
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GridSearchCV, KFold

    cv = cv or CV_FOLDS
    ok = valid_price(listings["price"].to_numpy(), MAX_PRICE)
    fit_rows = listings[ok & listings["split"].isin(["train", "val"])]
    test_rows = listings[ok & (listings["split"] == "test")]
    counts = {"listings": int(len(listings)), "valid_price": int(ok.sum()),
              "dropped_price": int((~ok).sum()), "fit_train_val": int(len(fit_rows)),
              "test": int(len(test_rows))}
    x_fit, x_test = price_frame(fit_rows), price_frame(test_rows)
    y_fit, y_test = fit_rows["price"].to_numpy(), test_rows["price"].to_numpy()
    alphas = np.asarray(ALPHAS)
    models = {"ridge": Ridge(), "lasso": Lasso(max_iter=5000),
              "elasticnet": ElasticNet(max_iter=5000)}
    folds = KFold(cv, shuffle=True, random_state=seed)
    results: dict = {}
    for target in ("raw", "log"):
        yf = y_fit if target == "raw" else np.log(y_fit)
        # Ridge's alpha does not depend on the target's scale; the L1 penalty's does, so Lasso
        # and ElasticNet search alpha = r * std(target) (tiny raw-price alphas never converge)
        l1_alphas = np.asarray(REL_ALPHAS) * float(np.std(yf))
        grids = {"ridge": {"model__alpha": alphas}, "lasso": {"model__alpha": l1_alphas},
                 "elasticnet": {"model__alpha": l1_alphas, "model__l1_ratio": list(L1_RATIOS)}}
        for name, est in models.items():
            grid = grids[name]
            t0 = time.time()
            search = GridSearchCV(_price_pipeline(est), grid, cv=folds, scoring="r2", n_jobs=1)
            with warnings.catch_warnings(), threadpool_limits(1):
                warnings.simplefilter("ignore", ConvergenceWarning)
                search.fit(x_fit, yf)
            pred = search.predict(x_test)
            row = {"best_params": {k.removeprefix("model__"): float(v)
                                   for k, v in search.best_params_.items()},
                   "cv_r2": float(search.best_score_), "seconds": round(time.time() - t0, 1)}
            if target == "raw":
                row["test_r2"] = float(r2_score(y_test, pred))
            else:
                row["test_r2_log"] = float(r2_score(np.log(y_test), pred))
                row["test_r2_raw_from_log"] = float(r2_score(y_test, np.exp(pred)))
            results[f"{name}_{target}"] = row
    results["mean_price"] = {
        "test_r2": float(r2_score(y_test, np.full_like(y_test, y_fit.mean()))),
        "test_r2_log": float(r2_score(np.log(y_test),
                                      np.full(len(y_test), np.log(y_fit).mean()))),
    }
    return {"counts": counts, "rule": PRICE_RULE, "features": CATEGORICAL + ["town"] + NUMERIC,
            "cv_folds": cv, "alphas": alphas.tolist(), "rel_alphas": list(REL_ALPHAS),
            "l1_ratios": list(L1_RATIOS),
            "models": results}


# --------------------------------------------------------------------------- photos


def load_pixels(paths, size: int = PIXEL_SIZE) -> np.ndarray:
    """Photos letterboxed and downscaled to ``size`` px, flattened to float32 rows (0..1)."""
    from mkt.training.features import load_uint8

    return np.stack([load_uint8(p, size).reshape(-1) for p in paths]).astype(np.float32) / 255.0


def pixel_logreg_baseline(paths, y: np.ndarray, split: np.ndarray, n_classes: int,
                          size: int = PIXEL_SIZE, cs=PIXEL_CS, seed: int = 0) -> dict:
    """Logistic regression on standardised raw pixels; C picked on val, refit on train+val."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.time()
    x = load_pixels(paths, size)
    load_s = time.time() - t0
    tr, va, te = (split == "train"), (split == "val"), (split == "test")

    def fit(mask, c):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=200,
                                                                 random_state=seed))
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x[mask], y[mask])
        return clf

    val_acc: dict[str, float] = {}
    best_c = cs[len(cs) // 2]
    if va.any() and len(np.unique(y[tr])) > 1 and len(cs) > 1:
        for c in cs:
            val_acc[str(c)] = float((fit(tr, c).predict(x[va]) == y[va]).mean())
        best_c = float(max(cs, key=lambda c: val_acc[str(c)]))
    final = fit(tr | va, best_c)
    scores = final.decision_function(x[te])
    full = np.full((len(scores), n_classes), -np.inf)
    full[:, final.classes_] = scores if scores.ndim == 2 else np.c_[-scores, scores]
    return {"size": size, "features": size * size * 3, "C_grid": list(cs), "val_acc": val_acc,
            "best_C": best_c, "test_top1": topk_accuracy(full, y[te], 1),
            "test_top3": topk_accuracy(full, y[te], 3), "n_fit": int((tr | va).sum()),
            "n_test": int(te.sum()), "load_seconds": round(load_s, 1),
            "seconds": round(time.time() - t0, 1)}


def majority_baseline(y: np.ndarray, split: np.ndarray, labels: list[str]) -> dict:
    fit = y[np.isin(split, ["train", "val"])]
    top = int(np.bincount(fit, minlength=len(labels)).argmax())
    test = y[split == "test"]
    return {"class": labels[top], "test_top1": float((test == top).mean()) if len(test) else None,
            "chance": 1.0 / len(labels)}


def small_cnn_baseline(data: Path, out: Path, epochs: int, limit: int | None, paths,
                       y: np.ndarray, split: np.ndarray, threads: int | None = None) -> dict:
    """mkt's training loop with the 4-layer CNN from scratch (64 px); test top-1 of best.pt."""
    from mkt.training.features import model_outputs
    from mkt.training.train import TrainConfig, load_checkpoint, train

    t0 = time.time()
    cfg = TrainConfig(data=str(data), out=str(out / "small_cnn"), arch="small_cnn", weights=None,
                      mode="full", epochs=epochs, freeze_epochs=0, lr=3e-3, limit_photos=limit,
                      threads=threads, progress=False, tensorboard=False,
                      command="mkt train baselines")
    metrics = train(cfg)
    train_s = time.time() - t0
    model, ckpt = load_checkpoint(out / "small_cnn" / "best.pt")
    te = split == "test"
    outs = model_outputs(model, list(np.asarray(paths)[te]), ckpt["mean"], ckpt["std"],
                         ckpt["input_size"], progress=False)
    hist = metrics.get("history", [])
    return {"epochs_run": len(hist), "epochs": epochs, "best_epoch": int(ckpt["epoch"]),
            "lr": cfg.lr, "input_size": int(ckpt["input_size"]),
            "test_top1": topk_accuracy(outs["logits"], y[te], 1),
            "test_top3": topk_accuracy(outs["logits"], y[te], 3),
            "val_acc_best": max((h.get("val_acc", float("nan")) for h in hist), default=None),
            "epoch_seconds": [h["seconds"] for h in hist],
            "train_seconds": round(train_s, 1), "seconds": round(time.time() - t0, 1),
            "checkpoint": str(out / "small_cnn" / "best.pt")}


# --------------------------------------------------------------------------- all of them


def run_baselines(data: Path, out: Path, cnn_epochs: int = 15, limit: int | None = None,
                  cnn: bool = True, cnn_threads: int | None = None) -> dict:
    """Run every baseline; writes ``out/report.json`` and ``out/report.md``; returns the report.

    ``limit`` keeps about that many photos (whole listings, every split) for smoke runs; the
    price models then use only those photos' listings. ``cnn=False`` skips the small CNN;
    ``cnn_threads`` sets torch's threads for it (1 is fastest on a busy 2-core machine).
    """
    data, out = Path(data), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    photos = _photo_table(data, limit)
    y, split = photos.label, photos.split
    labels = photos.labels
    listings = pd.read_parquet(data / "listings.parquet")
    split_csv = pd.read_csv(data / "split.csv", dtype=str)
    listings = listings.merge(split_csv, on="product_id")
    if limit:
        listings = listings[listings["product_id"].isin(set(photos.product_ids))]
    listings = listings.reset_index(drop=True)

    report: dict = {
        "data": {"clean_dir": str(data.resolve()), "split": json.loads(
            (data / "split.json").read_text()), "limit": limit,
            "photos": {s: int((split == s).sum()) for s in ("train", "val", "test")}},
        "seed_figures": SEED,
        "timings": {},
    }

    def save(status: str) -> None:
        # written after every stage, so a slow or failed CNN still leaves the other numbers
        report["status"] = status
        report["timings"]["total_seconds"] = round(time.time() - t_all, 1)
        write_json(out / "report.json", report)
        (out / "report.md").write_text(render_markdown(report))

    report["majority"] = majority_baseline(y, split, labels)
    t = time.time()
    report["price"] = price_baselines(listings)
    report["timings"]["price_seconds"] = round(time.time() - t, 1)
    save("running: raw-pixel logistic regression")
    t = time.time()
    report["pixel_logreg"] = pixel_logreg_baseline(photos.paths, y, split, len(labels))
    report["timings"]["pixel_logreg_seconds"] = round(time.time() - t, 1)
    if cnn:
        save(f"running: small CNN ({cnn_epochs} epochs)")
        t = time.time()
        report["small_cnn"] = small_cnn_baseline(data, out, cnn_epochs, limit, photos.paths, y,
                                                 split, cnn_threads)
        report["timings"]["small_cnn_seconds"] = round(time.time() - t, 1)
    save("done")
    return report


def render_markdown(r: dict) -> str:
    pm = r["price"]["models"]
    rows: list[list[object]] = [
        ["majority class (" + r["majority"]["class"] + ")", "test photo top-1",
         r["majority"]["test_top1"], "–"],
        ["mean train price", "test R² (price)", pm["mean_price"]["test_r2"], "–"],
    ]
    for name in ("ridge", "lasso", "elasticnet"):
        rows.append([f"{name} (tabular)", "test R² (price)", pm[f"{name}_raw"]["test_r2"],
                     SEED["price_r2"]])
    for name in ("ridge", "lasso", "elasticnet"):
        rows.append([f"{name} (tabular, log target)", "test R² (log price)",
                     pm[f"{name}_log"]["test_r2_log"], "–"])
    pl = r.get("pixel_logreg")
    if pl:
        rows.append([f"logistic regression on {pl['size']}x{pl['size']} pixels",
                     "test photo top-1", pl["test_top1"], SEED["pixel_logreg_top1"]])
    if "small_cnn" in r:
        sc = r["small_cnn"]
        rows.append([f"small CNN from scratch ({sc['input_size']} px, {sc['epochs_run']} ep)",
                     "test photo top-1", sc["test_top1"], SEED["small_cnn_top1"]])
    c = r["price"]["counts"]
    ph = r["data"]["photos"]
    lines = [
        "# Seed baselines on the listing-level split\n",
        *([f"**Status: {r['status']}** (this report is rewritten as each stage finishes)\n"]
          if r.get("status", "done") != "done" else []),
        f"Data: `{r['data']['clean_dir']}` (split seed {r['data']['split'].get('seed')}, "
        f"sha256 {str(r['data']['split'].get('sha256', ''))[:12]}…)"
        + (f", limited to about {r['data']['limit']} photos" if r["data"]["limit"] else "")
        + f". Photos train/val/test: {ph['train']}/{ph['val']}/{ph['test']}.\n",
        md_table(["baseline", "metric", "ours", "seed figure"], rows),
        "## Settings\n",
        f"- Price rule: {r['price']['rule']}: {c['valid_price']} of {c['listings']} listings "
        f"kept ({c['fit_train_val']} train+val, {c['test']} test).",
        f"- Price features: {', '.join(r['price']['features'])} (one-hot, unknown ignored; towns "
        "with fewer than 5 training listings share one column; numbers standardised); "
        f"{r['price']['cv_folds']}-fold GridSearchCV on train+val: Ridge alpha in "
        f"{[float(f'{a:g}') for a in r['price']['alphas']]}; Lasso and ElasticNet alpha = r x "
        f"std(target), r in {r['price'].get('rel_alphas')} (ElasticNet also l1_ratio in "
        f"{r['price'].get('l1_ratios')}).",
    ]
    for k, v in pm.items():
        if "best_params" in v:
            extra = (f", R² of exp(prediction) on raw price {v['test_r2_raw_from_log']:.3f}"
                     if "test_r2_raw_from_log" in v else "")
            lines.append(f"  - {k}: best {v['best_params']}, CV R² {v['cv_r2']:.3f}{extra} "
                         f"({v['seconds']} s)")
    if pl:
        lines.append(f"- Pixels: {pl['size']}x{pl['size']} RGB letterboxed, standardised, C "
                     f"picked on val from {pl['C_grid']} (val acc {pl['val_acc']}), best C "
                     f"{pl['best_C']}, refit on train+val; test top-3 {pl['test_top3']:.3f}.")
    if "small_cnn" in r:
        sc = r["small_cnn"]
        lines.append(f"- Small CNN: mkt's training loop, arch small_cnn from random init, "
                     f"lr {sc['lr']}, {sc['epochs_run']}/{sc['epochs']} epochs (early stop on "
                     f"val), best epoch {sc['best_epoch']}; test top-3 {sc['test_top3']:.3f}; "
                     f"{sc['train_seconds']} s training.")
    lines.append(f"- Majority class: chance level is {r['majority']['chance']:.3f} "
                 "(13 classes).")
    lines.append("- Timings (s): " + ", ".join(f"{k} {v}" for k, v in r["timings"].items()))
    return "\n".join(lines) + "\n"
