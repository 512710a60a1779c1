"""Do catalogue neighbours' categories help ``classify``? (``mkt classify --votes``)

Runs a bundle through the runtime on the cleaned data's photos; the catalogue is an index of
the *train* split's photos (built here, through :class:`mkt.runtime.index.Index`), so no
query's own listing is in it. Grid over (k, tau, beta) on the validation split, then the
runtime's constants (:mod:`mkt.runtime.votes`) on val and test, beside the classifier alone.

    python benchmarks/neighbour_votes.py --data work/data --out reports/neighbour_votes.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from mkt.runtime.index import Index
    from mkt.runtime.model import Model
    from mkt.runtime.votes import VOTE_BETA, VOTE_K, VOTE_TAU, NeighbourVotes
    from mkt.training import metrics as M
    from mkt.training.evaluate_bundle import _photos, run_bundle

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--bundle", default=None)
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    t0 = time.time()
    from mkt.runtime.bundle import default_bundle_dir

    bundle = a.bundle or str(default_bundle_dir())
    model = Model(bundle, variant=a.precision)
    df, img, labels = _photos(a.data)
    lab = {c: i for i, c in enumerate(labels)}
    out = {s: run_bundle(bundle, [img / f"{p}.jpg" for p in df[df.split == s]["photo_id"]],
                         a.precision) for s in ("train", "val", "test")}
    rows = {s: df[df.split == s].reset_index(drop=True) for s in out}
    with tempfile.TemporaryDirectory() as td:
        idx = Index.create(Path(td) / "idx", model_id=model.model_id,
                           dim=out["train"]["embedding"].shape[1],
                           ids=rows["train"]["photo_id"].tolist(),
                           vectors=out["train"]["embedding"],
                           meta=[{"category": c, "product_id": p} for c, p in
                                 zip(rows["train"]["category"], rows["train"]["product_id"],
                                     strict=True)])
        idx.set_ef(128)

        def score(split: str, k: int, tau: float, beta: float | None) -> dict[str, float]:
            q, r = out[split], rows[split]
            y = r["category"].map(lab).to_numpy()
            listing = r["product_id"].factorize()[0]
            probs = q["probs"]
            if beta is not None:
                v = NeighbourVotes(idx, labels, k=k, tau=tau, beta=beta)
                probs = v.fuse(probs, v.distribution(q["embedding"]))
            lp = np.log(np.clip(probs, 1e-12, None))
            return {"photo_top1": M.topk_accuracy(lp, y, 1),
                    "listing_top1": M.listing_accuracy(lp, y, listing)}

        grid = [{"k": k, "tau": t, "beta": b, **score("val", k, t, b)}
                for k, t, b in itertools.product((10, 25, 50), (0.02, 0.05, 0.1),
                                                 (0.25, 0.5, 1.0))]
        chosen = {"k": VOTE_K, "tau": VOTE_TAU, "beta": VOTE_BETA}
        res = {
            "bundle": Path(bundle).name, "model_id": model.model_id, "precision": a.precision,
            "catalogue": f"{len(rows['train'])} train-split photos",
            "val_grid": grid, "chosen": chosen,
            "val": {"classifier": score("val", 0, 0, None),
                    "votes": score("val", VOTE_K, VOTE_TAU, VOTE_BETA)},
            "test": {"classifier": score("test", 0, 0, None),
                     "votes": score("test", VOTE_K, VOTE_TAU, VOTE_BETA)},
            "seconds": round(time.time() - t0, 1),
        }
        idx.close()
    print(json.dumps({k: res[k] for k in ("chosen", "val", "test")}, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
