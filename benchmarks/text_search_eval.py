"""Choose the text-search fusion weights on VAL, score them once on TEST, time search_text.

    python benchmarks/text_search_eval.py --text-dir DIR [--bundle B] [--index I]
        [--data work/data] [--work /tmp/mkt-text-eval] [--out benchmarks/results]

Protocol (known-item search from a title): the catalogue is every listing of the cleaned data
dir with its photos (vectors taken from the shipped catalogue index ``--index``, built by
``--bundle``), title + description in the FTS5 table and a MiniLM listing vector each. For the
queried split (val, then test), each listing's TITLE IS WITHHELD from the index (its text is
its description only, its listing vector embeds the description only); the query is the title,
and the target is that listing. Metrics: MRR@10, recall@1, recall@10 of the target, and
precision@10 of the query listing's category among the results (relevance proxy).

Cross-modal path: the photos' ``text_embedding`` vectors stored in the index (the model's LiT
head). For an index without them, a stand-in: a ridge regression from the photo embedding to
the MiniLM title embedding, fitted on TRAIN photos only (a linear LiT-style head).

Weights: grid over (lexical, semantic, crossmodal); best by val MRR@10. Latency: p50 of
``search_text`` end to end (encode + 3 paths + fusion + metadata), warm, k=10, on the full
catalogue index (no title withheld).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import numpy as np

GRID_LEX = (0.0, 0.5, 1.0, 2.0)
GRID_SEM = (0.0, 0.5, 1.0, 2.0)
GRID_X = (0.0, 0.25, 0.5, 1.0)


def log(m: str) -> None:
    print(f"[text-eval {time.strftime('%H:%M:%S')}] {m}", flush=True)


def photo_vectors(index_dir: Path | None):
    from mkt.runtime.index import Index

    idx = Index.open(index_dir)
    ids = idx.ids()
    labs = [idx._db.execute("SELECT label FROM items WHERE id=?", (i,)).fetchone()[0]
            for i in ids]
    vec = np.asarray(idx._hnsw.get_items(labs), np.float32)
    return idx.model_id, ids, vec


def main(argv=None) -> int:
    import pandas as pd

    from mkt.runtime.bench import cpu_info
    from mkt.runtime.bundle import load_bundle
    from mkt.runtime.index import Index, listing_text
    from mkt.runtime.search import path_rankings, rrf, search_text
    from mkt.runtime.text import TextEncoder

    ap = argparse.ArgumentParser()
    ap.add_argument("--text-dir", type=Path, required=True)
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--index", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=Path("work/data"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/mkt-text-eval"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    td = a.text_dir
    model_file = next(td / n for n in ("text.int8.onnx", "text.fp32.onnx") if (td / n).is_file())
    enc = TextEncoder(model_file, td / "tokenizer.json")

    lst = pd.read_parquet(a.data / "listings.parquet")
    sp = pd.read_csv(a.data / "split.csv", dtype=str)
    lst = lst.merge(sp, on="product_id")
    L = {r.product_id: r for r in lst.itertuples()}
    model_id, pids_photo, pvec = photo_vectors(a.index)
    b = load_bundle(a.bundle)
    assert b.model_id == model_id, "index and bundle disagree"
    src = Index.open(a.index)
    meta_rows = src.photos_meta(pids_photo)
    keep = [i for i, p in enumerate(pids_photo) if meta_rows[p].get("product_id") in L]
    pids_photo = [pids_photo[i] for i in keep]
    pvec = pvec[keep]
    photo_pid = [meta_rows[p]["product_id"] for p in pids_photo]
    log(f"{len(pids_photo)} photos of {len(set(photo_pid))} listings")

    # --- MiniLM vectors (cached): full text for all, description-only for val/test, titles
    cache = a.work / f"vecs-{model_file.stem}.npz"
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        full, desc_only, titles = ({str(k): v for k, v in zip(z[f"{n}_ids"], z[n], strict=True)}
                                   for n in ("full", "desc", "title"))
    else:
        full, desc_only, titles = {}, {}, {}
        allp = list(L)
        t0 = time.time()
        v = enc.encode([listing_text(L[p].title, L[p].description) or "-" for p in allp])
        full = dict(zip(allp, v, strict=True))
        log(f"full listing text embedded ({time.time() - t0:.0f}s)")
        qp = [p for p in allp if L[p].split in ("val", "test")]
        v = enc.encode([listing_text(None, L[p].description) or "-" for p in qp])
        desc_only = dict(zip(qp, v, strict=True))
        v = enc.encode([L[p].title or "-" for p in allp])
        titles = dict(zip(allp, v, strict=True))
        arrays = {}
        for n, d in (("full", full), ("desc", desc_only), ("title", titles)):
            arrays[f"{n}_ids"] = np.array(list(d), dtype=str)
            arrays[n] = np.stack(list(d.values())).astype(np.float32)
        np.savez(cache, **arrays)
        log(f"embedded in {time.time() - t0:.0f}s")

    # --- cross-modal stand-in: ridge photo embedding -> title embedding, TRAIN photos only
    tr = np.array([L[p].split == "train" for p in photo_pid])
    X = pvec[tr].astype(np.float64)
    Y = np.stack([titles[p] for p, t in zip(photo_pid, tr, strict=True) if t]).astype(np.float64)
    Xb = np.hstack([X, np.ones((len(X), 1))])
    lam = 1.0
    W = np.linalg.solve(Xb.T @ Xb + lam * np.eye(Xb.shape[1]), Xb.T @ Y)
    xmod = (np.hstack([pvec, np.ones((len(pvec), 1))]) @ W).astype(np.float32)
    xmod /= np.linalg.norm(xmod, axis=1, keepdims=True)
    xsource = ("stand-in (ridge from the 256-d photo embedding to the MiniLM title embedding, "
               "fit on train photos)")
    # a bundle trained with the LiT title loss has the real thing: its text_embedding output,
    # stored in the index as the photos' cross-modal vectors. Use those when present.
    xids, xvecs = src.photo_text_vectors() if src.has_text else ([], None)
    if len(xids):
        pos = {p: i for i, p in enumerate(xids)}
        if all(p in pos for p in pids_photo):
            xmod = np.asarray(xvecs, np.float32)[[pos[p] for p in pids_photo]]
            xsource = ("the model's own `text_embedding` vectors (LiT head), as stored in the "
                       "catalogue index")
            log(f"cross-modal path: {xsource}")

    def build(withhold: str | None, path: Path) -> Index:
        meta = []
        for pid, ph in zip(photo_pid, pids_photo, strict=True):
            r = L[pid]
            hide = withhold is not None and r.split == withhold
            meta.append({"product_id": pid, "title": None if hide else r.title,
                         "description": r.description, "price": r.price,
                         "category": r.category, "path": f"images/{ph}.jpg"})
        idx = Index.create(path, model_id=model_id, dim=pvec.shape[1], ids=pids_photo,
                           vectors=pvec, meta=meta, text_vectors=xmod, overwrite=True)
        lp = list(idx.listing_texts(missing_only=True))
        vec = np.stack([desc_only[p] if (withhold and L[p].split == withhold) else full[p]
                        for p in lp])
        idx.set_listing_vectors(lp, vec)
        return idx

    def evaluate(split: str, weights_grid):
        idx = build(split, a.work / f"idx-{split}")
        qp = [p for p in L if L[p].split == split and p in set(photo_pid)]
        qs = [str(L[p].title) for p in qp]
        qv = enc.encode(qs)
        ranks = [path_rankings(idx, v, q, 100) for v, q in zip(qv, qs, strict=True)]
        cats = {p: L[p].category for p in L}
        res = []
        for w in weights_grid:
            rr, r1, r10, p10 = [], 0, 0, []
            for p, rk in zip(qp, ranks, strict=True):
                fused = [k for k, *_ in rrf(rk, w)][:10]
                pos = fused.index(p) + 1 if p in fused else None
                rr.append(1.0 / pos if pos else 0.0)
                r1 += pos == 1
                r10 += pos is not None
                others = [k for k in fused if k != p]
                p10.append(np.mean([cats.get(k) == cats[p] for k in others]) if others else 0)
            n = len(qp)
            res.append({**w, "mrr10": float(np.mean(rr)), "r1": r1 / n, "r10": r10 / n,
                        "cat_p10": float(np.mean(p10)), "n": n})
        idx.close()
        return res

    grid = [{"lexical": x, "semantic": y, "crossmodal": z}
            for x, y, z in itertools.product(GRID_LEX, GRID_SEM, GRID_X) if x + y + z > 0]
    log(f"val: {len(grid)} weight settings")
    val = evaluate("val", grid)
    best = max(val, key=lambda r: (round(r["mrr10"], 4), r["r10"]))
    chosen = {k: best[k] for k in ("lexical", "semantic", "crossmodal")}
    log(f"chosen on val {chosen}: MRR@10 {best['mrr10']:.4f}")
    single = [{"lexical": 1.0, "semantic": 0.0, "crossmodal": 0.0},
              {"lexical": 0.0, "semantic": 1.0, "crossmodal": 0.0},
              {"lexical": 0.0, "semantic": 0.0, "crossmodal": 1.0},
              {"lexical": 1.0, "semantic": 1.0, "crossmodal": 1.0}]
    test = evaluate("test", [chosen] + [s for s in single if s != chosen])

    # --- latency on the full catalogue index (nothing withheld)
    full_idx = build(None, a.work / "idx-full")
    qs = ["oak dining table", "mountain bike", "iphone 12", "baby pram", "cordless drill",
          "leather sofa", "ps4 with games", "kids bike", "garden furniture", "office chair"]
    for q in qs * 2:
        search_text(full_idx, enc, [q], k=10, weights=chosen)
    ts = []
    for i in range(100):
        t = time.perf_counter()
        search_text(full_idx, enc, [qs[i % len(qs)]], k=10, weights=chosen)
        ts.append((time.perf_counter() - t) * 1000)
    ts.sort()
    enc_ts = []
    for i in range(100):
        t = time.perf_counter()
        enc.encode([qs[i % len(qs)]])
        enc_ts.append((time.perf_counter() - t) * 1000)
    lat = {"search_text_p50_ms": round(statistics.median(ts), 2),
           "search_text_p90_ms": round(ts[89], 2),
           "encode_only_p50_ms": round(statistics.median(enc_ts), 2),
           "photos": full_idx.count, "listings": full_idx.text_counts()["listings"],
           "threads": enc.threads, "cpu": cpu_info()}
    log(f"latency {lat}")
    out = {"protocol": __doc__.split("Weights:")[0].strip(), "text_model": model_file.name,
           "photo_model_id": model_id, "crossmodal": xsource,
           "chosen": chosen, "val_best": best, "val_grid": val, "test": test, "latency": lat}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "text_search.json").write_text(json.dumps(out, indent=2) + "\n")
    md = ["# Text search: fusion weights (chosen on val) and latency", "",
          f"Text model `{model_file.name}`, photo model `{model_id}`; cross-modal path: "
          f"{xsource}.",
          "", "Protocol: query = a listing's title; that listing's title is withheld from the "
          "index (description + photos only); target = that listing. Weighted RRF, k0 = 60.",
          "", f"**Chosen on val: {chosen}** (val MRR@10 {best['mrr10']:.3f}).", "",
          "| split | lexical | semantic | crossmodal | MRR@10 | R@1 | R@10 | category P@10 |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in [best] + sorted(val, key=lambda r: -r["mrr10"])[1:6]:
        md.append(f"| val | {r['lexical']} | {r['semantic']} | {r['crossmodal']} | "
                  f"{r['mrr10']:.3f} | {r['r1']:.3f} | {r['r10']:.3f} | {r['cat_p10']:.3f} |")
    for r in test:
        md.append(f"| test | {r['lexical']} | {r['semantic']} | {r['crossmodal']} | "
                  f"{r['mrr10']:.3f} | {r['r1']:.3f} | {r['r10']:.3f} | {r['cat_p10']:.3f} |")
    md += ["", f"Test: {test[0]['n']} queries, scored once with the val choice (first test "
           "row); the other test rows are single paths and equal weights, for reference.", "",
           f"Latency (full catalogue: {lat['photos']} photos, {lat['listings']} listings), warm, "
           f"k=10, {lat['threads']} threads, {lat['cpu']['model']} ({lat['cpu']['usable_cores']} "
           f"cores, load average {lat['cpu'].get('loadavg')} after the run): "
           f"search_text p50 **{lat['search_text_p50_ms']} ms** (p90 {lat['search_text_p90_ms']}"
           f" ms), of which query encoding p50 {lat['encode_only_p50_ms']} ms.", ""]
    (a.out / "text_search.md").write_text("\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
