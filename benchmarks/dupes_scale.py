"""`mkt dupes` on many look-alike photos: time and peak memory of the whole flow.

    python benchmarks/dupes_scale.py [--photos 4000] [--pairs-only] [--out FILE]

Writes ``--photos`` JPEGs made from one real listing photo (each re-encoded at a random JPEG
quality 70-95, shifted by up to 3 pixels and brightened by up to +-4%: all near-copies of one
picture, the worst case for an all-pairs search), then times
:func:`mkt.runtime.dupes.find_dupes` with the packaged model (embedding, dHash, neighbour
search, rule, grouping) and reads the process's peak RSS (``ru_maxrss``). ``--pairs-only``
skips the model: the same number of look-alike embeddings straight into
:func:`~mkt.runtime.dupes.find_duplicates`. Target (issue "Reliability II"): 4,000 photos in
under 60 s and 500 MB. Writes ``benchmarks/results/dupes_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_photos(folder: Path, n: int, seed: int = 0) -> None:
    from PIL import Image, ImageEnhance

    src = sorted((REPO / "tests" / "fixtures" / "photos").glob("*.jpg"))[0]
    im = Image.open(src).convert("RGB")
    w, h = im.size
    rng = np.random.default_rng(seed)
    for i in range(n):
        dx, dy = rng.integers(0, 4, 2)
        j = im.crop((int(dx), int(dy), w - 3 + int(dx), h - 3 + int(dy)))
        j = ImageEnhance.Brightness(j).enhance(float(rng.uniform(0.96, 1.04)))
        j.save(folder / f"copy_{i:05d}.jpg", "JPEG", quality=int(rng.integers(70, 96)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=4000)
    ap.add_argument("--pairs-only", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" /
                    "dupes_scale.json")
    args = ap.parse_args()

    from mkt.runtime import dupes as D

    rss0 = peak_rss_mb()
    out: dict = {"photos": args.photos, "machine": platform.machine(),
                 "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0],
                 "neighbours": D.HNSW_NEIGHBOURS, "exact_knn_limit": D.EXACT_KNN_LIMIT}
    if args.pairs_only:
        rng = np.random.default_rng(0)
        base = rng.standard_normal(256).astype(np.float32)
        vecs = base + 0.02 * rng.standard_normal((args.photos, 256)).astype(np.float32)
        t = time.perf_counter()
        groups = D.find_duplicates(vecs, hashes=[np.zeros(8, np.uint8)] * args.photos)
        out.update(mode="pairs-only", seconds=round(time.perf_counter() - t, 2),
                   groups=len(groups), largest=len(groups[0].members) if groups else 0,
                   pairs=sum(len(g.pairs) for g in groups))
    else:
        from mkt.runtime.model import Model

        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "photos"
            folder.mkdir()
            t = time.perf_counter()
            make_photos(folder, args.photos)
            out["make_photos_s"] = round(time.perf_counter() - t, 2)
            model = Model(None)
            rss0 = peak_rss_mb()
            t = time.perf_counter()
            rep = D.find_dupes(model, [folder])
            out.update(mode="find_dupes", seconds=round(time.perf_counter() - t, 2),
                       checked=rep.checked, groups=len(rep.groups),
                       largest=rep.groups[0].size if rep.groups else 0,
                       pairs=sum(len(g.pairs) for g in rep.groups))
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    out["rss_before_mb"] = round(rss0, 1)
    print(json.dumps(out, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
