"""Calibrate and evaluate `mkt dupes` (same picture re-used across listings).

    python benchmarks/eval_dupes.py [--data work/data] [--bundle mkt/assets/bundle]

Universe: every photo of the cleaned data, plus, for a random sample of them, three copies as
a re-user would make them: JPEG quality 60 (``jpeg60``), halved then scaled back up
(``resize50``, saved at JPEG q90) and a 90% centre crop (``crop90``, q90, not resized back).

Positive pairs (same picture): byte-identical photos of the data (grouped by sha256:
``exact``), a copy and its original (or the original's byte-identical twins), two copies of
one picture. Every other pair is negative, including two different photos of one listing
(the hard negatives: same item, same room, seconds apart).

Photos are split in two halves by connected component (same listing or same bytes), so no
picture or listing is on both sides. The decision rule (cosine threshold, optional dHash
distance, optional "sure" cosine that skips the hash) is CALIBRATED on half A: the most
recall with precision >= 0.99, else the best F1. Precision and recall are REPORTED on half B,
overall and per transform (universe: the originals + that transform's copies).

Writes ``benchmarks/results/dupes.json`` and ``dupes.md``; the highest-scoring "false
positives" among original photos are drawn in ``work/dupes_false_positives.html`` to check by
eye whether they are unlabelled duplicates (re-encoded copies across listings) or real errors.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TRANSFORMS = ("jpeg60", "resize50", "crop90")
T_GRID = tuple(np.round(np.arange(0.80, 0.99, 0.01), 3).tolist()) + tuple(
    np.round(np.arange(0.99, 1.0, 0.001), 4).tolist())
H_GRID = (None, 4, 6, 8, 10, 12, 14, 16, 18, 20, 24, 28)
SURE_GRID = (None, 0.97, 0.98, 0.99, 0.995)


def _eval_price_module():
    spec = importlib.util.spec_from_file_location("eval_price", Path(__file__).with_name(
        "eval_price.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def transform(data: bytes, kind: str) -> bytes:
    from PIL import Image

    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    buf = io.BytesIO()
    if kind == "jpeg60":
        im.save(buf, "JPEG", quality=60)
    elif kind == "resize50":
        im = im.resize((max(1, w // 2), max(1, h // 2)), Image.BILINEAR).resize(
            (w, h), Image.BILINEAR)
        im.save(buf, "JPEG", quality=90)
    elif kind == "crop90":
        cw, ch = round(w * 0.9), round(h * 0.9)
        left, top = (w - cw) // 2, (h - ch) // 2
        im.crop((left, top, left + cw, top + ch)).save(buf, "JPEG", quality=90)
    else:
        raise ValueError(kind)
    return buf.getvalue()


def hashes_of(sources, size: int, cache: Path | None, ids: list[str] | None,
              threads: int) -> np.ndarray:
    """dHash (packed, [N, 8]) of letterboxed photos (paths or bytes), cached by id."""
    from concurrent.futures import ThreadPoolExecutor

    from mkt.runtime.dupes import dhash
    from mkt.runtime.images import load_letterboxed

    have: dict[str, np.ndarray] = {}
    if cache is not None and cache.exists():
        z = np.load(cache, allow_pickle=False)
        have = dict(zip(z["ids"].tolist(), z["hashes"], strict=True))
    todo = [i for i in range(len(sources)) if ids is None or ids[i] not in have]
    with ThreadPoolExecutor(max_workers=threads) as ex:
        got = list(ex.map(lambda i: dhash(load_letterboxed(sources[i], size)), todo))
    for i, h in zip(todo, got, strict=True):
        have[ids[i] if ids is not None else str(i)] = h
    if cache is not None and todo and ids is not None:
        keys = sorted(have)
        np.savez(cache, ids=np.array(keys), hashes=np.stack([have[k] for k in keys]))
    if ids is None:
        return np.stack(got) if got else np.zeros((0, 8), np.uint8)
    return np.stack([have[i] for i in ids])


def components(product: list[str], sha: list[str]) -> np.ndarray:
    from mkt.runtime.dupes import UnionFind

    n = len(product)
    uf = UnionFind(n)
    first: dict[tuple[str, str], int] = {}
    for i in range(n):
        for key in (("p", product[i]), ("s", sha[i])):
            if key in first:
                uf.union(first[key], i)
            else:
                first[key] = i
    return np.array([uf.find(i) for i in range(n)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO / "work" / "data")
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=REPO / "work" / "cache")
    ap.add_argument("--vectors-from", type=Path, default=REPO / "mkt" / "assets" / "index",
                    help="catalogue index of the same model to take vectors from (verified)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--fp-html", type=Path, default=REPO / "work" / "dupes_false_positives.html")
    ap.add_argument("--sample", type=int, default=600, help="photos to make copies of")
    ap.add_argument("--floor", type=float, default=0.80, help="lowest cosine considered")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--limit", type=int, default=0, help="dev: use only N photos")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import pandas as pd

    from mkt.runtime.dupes import (
        DEFAULT_MAX_HASH_DISTANCE,
        DEFAULT_SURE_THRESHOLD,
        DEFAULT_THRESHOLD,
        candidate_pairs,
        hamming,
    )
    from mkt.runtime.model import Model

    ep = _eval_price_module()
    t0 = time.time()
    rng = np.random.default_rng(args.seed)
    model = Model(args.bundle, threads=args.threads)
    photos = pd.read_parquet(args.data / "photos.parquet").sort_values("photo_id")
    if args.limit:
        photos = photos.sample(n=min(args.limit, len(photos)), random_state=args.seed)
        photos = photos.sort_values("photo_id")
    photos = photos.reset_index(drop=True)
    root = ep.photo_root(args.data)
    ids = photos["photo_id"].tolist()
    paths = [root / "images" / f"{i}.jpg" for i in ids]
    n0 = len(ids)
    print(f"{n0} photos; embedding with {model!r}", file=sys.stderr, flush=True)
    vec0 = ep.embed_photos(model, paths, ids, args.cache, index_dir=args.vectors_from)
    args.cache.mkdir(parents=True, exist_ok=True)
    hash0 = hashes_of(paths, model.input_size, args.cache / "dhash8.npz", ids, model.threads)

    # halves by connected component (listing or identical bytes)
    comp = components(photos["product_id"].tolist(), photos["sha256"].tolist())
    uniq = np.unique(comp)
    half_of_comp = dict(zip(uniq.tolist(), rng.permutation(len(uniq)) % 2, strict=True))
    half0 = np.array([half_of_comp[c] for c in comp])

    # copies of a sample
    sample = np.sort(rng.choice(n0, size=min(args.sample, n0), replace=False))
    copy_src, copy_kind, copy_bytes = [], [], []
    for i in sample:
        data = paths[i].read_bytes()
        for t in TRANSFORMS:
            copy_src.append(int(i))
            copy_kind.append(t)
            copy_bytes.append(transform(data, t))
    print(f"embedding {len(copy_bytes)} copies", file=sys.stderr, flush=True)
    vec1 = model.embed(copy_bytes)
    hash1 = hashes_of(copy_bytes, model.input_size, None, None, model.threads)

    copy_cos = np.sum(vec1 * vec0[np.array(copy_src)], axis=1)
    copy_hd = hamming(hash1, hash0[np.array(copy_src)])
    copy_stats = {}
    for t in TRANSFORMS:
        m = np.array(copy_kind) == t
        copy_stats[t] = {
            "cosine_p10_p50_p90": np.round(np.percentile(copy_cos[m], [10, 50, 90]), 4).tolist(),
            "dhash_p10_p50_p90": np.percentile(copy_hd[m], [10, 50, 90]).tolist()}
    vec = np.concatenate([vec0, vec1])
    hsh = np.concatenate([hash0, hash1])
    src = np.concatenate([np.arange(n0), np.array(copy_src, np.int64)])  # original of a node
    kind = np.array(["orig"] * n0 + copy_kind)
    half = half0[src]
    sha = photos["sha256"].to_numpy()
    pic = sha[src]
    prod = photos["product_id"].to_numpy()[src]
    print(f"candidate pairs >= {args.floor} among {len(vec)} photos", file=sys.stderr,
          flush=True)
    pairs, scores = candidate_pairs(vec, args.floor)
    a, b = pairs[:, 0], pairs[:, 1]
    same_half = half[a] == half[b]
    a, b, scores = a[same_half], b[same_half], scores[same_half].astype(np.float64)
    hd = hamming(hsh[a], hsh[b])
    pos = pic[a] == pic[b]
    ph = half[a]
    ka, kb = kind[a], kind[b]
    # which transform a pair belongs to: "" orig-orig, t for orig-t / t-t, "mixed" otherwise
    tset = np.where(ka == "orig", kb, np.where((kb == "orig") | (kb == ka), ka, "mixed"))
    tset = np.where(tset == "orig", "", tset)
    same_listing = (prod[a] == prod[b]) & ~pos
    print(f"{len(a)} candidate pairs ({pos.sum()} positive)", file=sys.stderr, flush=True)

    # total positives per half and transform (also those below the floor)
    totals = {h: Counter() for h in (0, 1)}
    for h in (0, 1):
        for p, g in pd.DataFrame({"pic": pic, "kind": kind})[half == h].groupby("pic"):
            o = int((g["kind"] == "orig").sum())
            c = Counter(g["kind"][g["kind"] != "orig"])
            totals[h][""] += o * (o - 1) // 2
            for t in TRANSFORMS:
                totals[h][t] += c[t] * o + c[t] * (c[t] - 1) // 2
            m = sum(c.values())
            totals[h]["mixed"] += m * (m - 1) // 2 - sum(v * (v - 1) // 2 for v in c.values())
            del p

    def metrics(pred: np.ndarray, h: int) -> dict:
        sel = ph == h
        out = {}
        tp_all = int((pred & pos & sel).sum())
        fp_all = int((pred & ~pos & sel).sum())
        p_all = sum(totals[h].values())
        out["all"] = _prf(tp_all, fp_all, p_all)
        out["all"]["false_positives_same_listing"] = int((pred & same_listing & sel).sum())
        fp_orig = int((pred & ~pos & sel & (tset == "")).sum())
        for t in ("",) + TRANSFORMS:
            m = sel & (tset == t)
            tp = int((pred & pos & m).sum())
            fp = int((pred & ~pos & m).sum()) + (fp_orig if t else 0)
            out[t or "exact"] = _prf(tp, fp, totals[h][t])
        return out

    def rule_pred(t: float, hmax, sure) -> np.ndarray:
        ok = scores >= t
        if hmax is not None:
            ok &= hd <= hmax
        if sure is not None:
            ok |= scores >= sure
        return ok

    cal = ph == 0
    pos_cal, p_cal = pos[cal], sum(totals[0].values())

    def pick(family):
        best, best_key = None, None
        for t, hmax, sure in family:
            if sure is not None and sure <= t:
                continue
            pred = rule_pred(t, hmax, sure)[cal]
            tp = int((pred & pos_cal).sum())
            m = _prf(tp, int(pred.sum()) - tp, p_cal)
            key = (m["f1"], m["precision"], t)
            if best_key is None or key > best_key:
                best, best_key = (t, hmax, sure), key
        return best

    emb_only = pick([(t, None, None) for t in T_GRID])
    combined = pick([(t, hmax, sure) for t in T_GRID for hmax in H_GRID for sure in SURE_GRID])
    shipped = (DEFAULT_THRESHOLD, DEFAULT_MAX_HASH_DISTANCE, DEFAULT_SURE_THRESHOLD)
    hash_only = pick([(args.floor, hmax, None) for hmax in H_GRID if hmax is not None])

    def both(rule):
        pred = rule_pred(*rule)
        return {"rule": {"threshold": rule[0], "max_hash_distance": rule[1],
                         "sure_threshold": rule[2]},
                "calibration_half": metrics(pred, 0), "report_half": metrics(pred, 1)}

    result = {
        "task": "duplicate photos (same picture) vs other photos incl. same-listing photos",
        "model_id": model.model_id, "arch": model.bundle.arch, "data": str(args.data),
        "vectors": dict(ep.PROVENANCE),
        "photos": n0, "copies": len(copy_bytes), "sampled_originals": int(len(sample)),
        "transforms": {"jpeg60": "JPEG quality 60",
                       "resize50": "0.5x bilinear then back to full size, JPEG q90",
                       "crop90": "90% centre crop (not resized back), JPEG q90",
                       "exact": "byte-identical photos already in the data (same sha256)"},
        "byte_identical_groups": int(sum(1 for _, g in photos.groupby("sha256") if len(g) > 1)),
        "halves": {"by": "connected components of (same listing | same sha256)",
                   "photos": [int((half0 == h).sum()) for h in (0, 1)],
                   "positives": [dict(totals[h]) for h in (0, 1)]},
        "floor": args.floor, "candidate_pairs": int(len(a)),
        "selection": "on the calibration half: max F1 (ties: higher precision, then higher "
                     "threshold)",
        "copy_vs_original": copy_stats,
        "embedding_only": both(emb_only),
        "embedding_and_dhash": both(combined),
        "dhash_only_above_floor": both(hash_only),
        "shipped_default": both(shipped),
        "seed": args.seed, "limit": args.limit,
    }
    # highest-scoring false positives among originals (both halves): look at them
    fp_idx = np.where(~pos & (tset == "") & rule_pred(*combined))[0]
    fp_idx = fp_idx[np.argsort(-scores[fp_idx])][:40]
    result["top_false_positives"] = [
        {"a": ids[a[i]], "b": ids[b[i]], "score": round(float(scores[i]), 4),
         "hash_distance": int(hd[i]), "same_listing": bool(same_listing[i]),
         "accepted_by_shipped": bool(rule_pred(*shipped)[i])}
        for i in fp_idx
    ]
    result["seconds"] = round(time.time() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dupes.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "dupes.md").write_text(markdown(result))
    _fp_page(args.fp_html, result["top_false_positives"][:20], root, photos)
    print(markdown(result))
    return 0


def _prf(tp: int, fp: int, p: int) -> dict:
    prec = tp / (tp + fp) if tp + fp else 1.0
    rec = tp / p if p else float("nan")
    f1 = 2 * prec * rec / (prec + rec) if p and prec + rec else 0.0
    return {"tp": tp, "fp": fp, "positives": p, "precision": prec, "recall": rec, "f1": f1}


def _fp_page(path: Path, fps: list[dict], root: Path, photos) -> None:
    from mkt.runtime.html import dupes_page, write_page

    meta = photos.set_index("photo_id")
    groups = []
    for fp in fps:
        groups.append({
            "photos": [{"id": i, "path": f"images/{i}.jpg", "file": root / "images" / f"{i}.jpg",
                        "product_id": meta.loc[i, "product_id"],
                        "category": meta.loc[i, "category"]} for i in (fp["a"], fp["b"])],
            "pairs": [{"a": fp["a"], "b": fp["b"], "score": fp["score"],
                       "hash_distance": fp["hash_distance"]}]})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_page(path, dupes_page(groups, title="mkt dupes: top false positives",
                                subtitle="pairs labelled different pictures, highest cosine"))


def _fmt_rule(r: dict) -> str:
    s = f"cosine >= {r['threshold']:g}"
    if r["max_hash_distance"] is not None:
        s += f" and dHash <= {r['max_hash_distance']}"
    if r["sure_threshold"] is not None:
        s += f", or cosine >= {r['sure_threshold']:g}"
    return s


def markdown(r: dict) -> str:
    lines = [
        "# Duplicate photos (`mkt dupes`): calibration and evaluation",
        "",
        f"Model `{r['model_id']}` ({r['arch']}). {r['photos']} photos "
        f"({r['byte_identical_groups']} groups of byte-identical photos) + {r['copies']} copies "
        f"of {r['sampled_originals']} sampled photos (JPEG q60, 0.5x resize, 90% crop). "
        "Negatives: every other pair, incl. different photos of the same listing. Rule "
        "calibrated on half A (max F1); numbers below on half B (held out).",
        "",
        "| rule (calibrated on A) | | precision | recall | F1 | FP same listing |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, key in (("embedding only", "embedding_only"),
                      ("embedding + dHash", "embedding_and_dhash"),
                      ("dHash only (cosine >= floor)", "dhash_only_above_floor"),
                      ("**shipped default**", "shipped_default")):
        m = r[key]["report_half"]["all"]
        lines.append(f"| {name} | {_fmt_rule(r[key]['rule'])} | {m['precision']:.3f} | "
                     f"{m['recall']:.3f} | {m['f1']:.3f} | "
                     f"{m['false_positives_same_listing']} |")
    lines += ["", "Per transform, half B (universe: all originals + that transform's copies):",
              "", "| transform | rule | positives | precision | recall |",
              "| --- | --- | --- | --- | --- |"]
    for key, name in (("embedding_only", "embedding only"),
                      ("embedding_and_dhash", "embedding + dHash"),
                      ("shipped_default", "shipped default")):
        rep = r[key]["report_half"]
        for t in ("exact", "jpeg60", "resize50", "crop90"):
            m = rep[t]
            lines.append(f"| {t} | {name} | {m['positives']} | {m['precision']:.3f} | "
                         f"{m['recall']:.3f} |")
    lines += ["", "Copy vs its original (all sampled photos): cosine and dHash distance, "
              "10th / 50th / 90th percentile:", "", "| transform | cosine | dHash |",
              "| --- | --- | --- |"]
    for t, st in r["copy_vs_original"].items():
        lines.append(f"| {t} | {' / '.join(f'{x:.3f}' for x in st['cosine_p10_p50_p90'])} | "
                     f"{' / '.join(f'{x:g}' for x in st['dhash_p10_p50_p90'])} |")
    cal = r["shipped_default"]["calibration_half"]["all"]
    lines += ["", f"Shipped default on the calibration half: precision {cal['precision']:.3f}, "
              f"recall {cal['recall']:.3f}.",
              "", "Label noise: the labels only know byte-identical files. Among the "
              "'false positives' between original photos (listed in dupes.json, drawn in "
              "work/dupes_false_positives.html) are the same stock picture re-saved in two "
              "listings (e.g. cosine 0.999, dHash 0) and burst shots of one item within a "
              "listing (dHash 2-5). Precision is therefore a lower bound, and a precision "
              "target of 0.99 is not reachable on these labels at any threshold below 1.",
              "", f"Generated by `benchmarks/eval_dupes.py` in {r['seconds']:.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
