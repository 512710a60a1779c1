"""hnswlib at 1M vectors: which M / ef_construction / ef give recall@10 >= 0.95 at p50 <= 2 ms
(one query, one thread), with build time and memory.

    nice python benchmarks/hnsw_1m.py --n 200000 --grid          # choose the parameters
    nice python benchmarks/hnsw_1m.py --n 1000000 --M 32 --ef-construction 200

Vectors: the shipped index's 11,328 real photo embeddings (dim 256) plus synthetic ones
**with the real embeddings' structure**: k-means (64 centroids) on the real embeddings, then
each synthetic vector = a centroid drawn with its cluster's frequency + a Gaussian residual
with the covariance of the real within-cluster residuals (full 256x256, so the spectrum, i.e.
the intrinsic dimension that decides HNSW recall, is the real one), L2-normalised like the
model's output. Unlike the "perturbed copies" of the earlier 1M row (tight clusters of
near-duplicates where the top 10 is almost a coin toss), nearest neighbours here are as
spread as between real listings. Queries: 500 fresh draws (not in the index). Ground truth:
exact cosine top-10 (numpy, chunked).

Each configuration records: build seconds (num_threads as given, default 2), index bytes
(hnswlib's saved file: vectors + graph), process peak RSS, and for each ef the recall@10 and
p50/p95 latency of single queries on one thread. Results merge into
``benchmarks/results/hnsw_1m.json`` under ``"n=<N> M=<M> efc=<EFC>"`` with the load average
(the CPU may be shared: latencies are an upper bound).
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
OUT = REPO / "benchmarks" / "results" / "hnsw_1m.json"


def real_embeddings() -> np.ndarray:
    from mkt.runtime.index import Index

    with Index.open(None) as idx:
        _, _, vecs = idx.photo_vectors()
    return np.asarray(vecs, np.float32)


def _norm(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


class RealLike:
    """A sampler of vectors shaped like the real embeddings (clusters + residual spectrum)."""

    def __init__(self, real: np.ndarray, k: int = 64, seed: int = 0):
        rng = np.random.default_rng(seed)
        x = real.astype(np.float64)
        c = x[rng.choice(len(x), k, replace=False)]
        for _ in range(25):  # plain Lloyd's k-means (cosine vectors: euclidean is fine)
            d = (x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None]
            a = d.argmin(1)
            for j in range(k):
                if (a == j).any():
                    c[j] = x[a == j].mean(0)
        self.centroids, self.assign = c, a
        self.weights = np.bincount(a, minlength=k) / len(a)
        resid = x - c[a]
        cov = np.cov(resid, rowvar=False)
        w, v = np.linalg.eigh(cov)
        w = np.clip(w, 0, None)
        self.spectrum = w[::-1]
        self.proj = v * np.sqrt(w)  # z @ proj.T ~ N(0, cov)
        self.seed = seed

    def sample(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.centroids.shape[1]), np.float32)
        for s in range(0, n, 100_000):
            m = min(100_000, n - s)
            cl = rng.choice(len(self.weights), m, p=self.weights)
            z = rng.standard_normal((m, self.proj.shape[0]))
            out[s:s + m] = self.centroids[cl] + z @ self.proj.T
        return _norm(out)

    def participation_ratio(self) -> float:
        """Effective dimension of the residuals: (sum w)^2 / sum w^2."""
        w = self.spectrum
        return float(w.sum() ** 2 / (w * w).sum())


def exact_top(data: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.zeros((len(queries), k), np.int64)
    for s in range(0, len(data), 200_000):
        sims = queries @ data[s:s + 200_000].T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        ps = np.take_along_axis(sims, part, 1)
        cs = np.concatenate([best_s, ps], 1)
        ci = np.concatenate([best_i, part + s], 1)
        o = np.argsort(-cs, 1)[:, :k]
        best_s, best_i = np.take_along_axis(cs, o, 1), np.take_along_axis(ci, o, 1)
    return best_i


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(data: np.ndarray, queries: np.ndarray, truth: np.ndarray, M: int, efc: int,
            efs: list[int], threads: int) -> dict:
    import hnswlib

    n, dim = data.shape
    h = hnswlib.Index(space="cosine", dim=dim)
    h.init_index(max_elements=n, M=M, ef_construction=efc, random_seed=100)
    t = time.perf_counter()
    h.add_items(data, np.arange(n), num_threads=threads)
    build = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "i.hnsw")
        h.save_index(p)
        size = os.path.getsize(p)
    h.set_num_threads(1)
    res = {"M": M, "ef_construction": efc, "build_s": round(build, 1),
           "build_threads": threads, "index_bytes": size,
           "bytes_per_vector": round(size / n, 1), "load_avg_after_build": os.getloadavg()[0],
           "ef": {}}
    for ef in efs:
        h.set_ef(max(ef, 10))
        h.knn_query(queries[:20], k=10)  # warm
        lat, hits = [], 0
        for i, q in enumerate(queries):
            t = time.perf_counter()
            labels, _ = h.knn_query(q[None], k=10)
            lat.append(time.perf_counter() - t)
            hits += len(set(labels[0].tolist()) & set(truth[i].tolist()))
        lat_ms = np.array(lat) * 1e3
        res["ef"][str(ef)] = {"recall@10": round(hits / (10 * len(queries)), 4),
                              "p50_ms": round(float(np.percentile(lat_ms, 50)), 3),
                              "p95_ms": round(float(np.percentile(lat_ms, 95)), 3)}
        print(f"  M={M} efc={efc} ef={ef}: {res['ef'][str(ef)]}", flush=True)
    res["peak_rss_mb"] = round(peak_rss_mb(), 0)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors in the index")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--grid", action="store_true",
                    help="M in 16,32,48 x ef_construction in 200,400")
    ap.add_argument("--M", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--ef", default="64,128,256,512")
    ap.add_argument("--threads", type=int, default=2, help="build threads")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    real = real_embeddings()
    sampler = RealLike(real)
    t = time.perf_counter()
    n_syn = max(args.n - len(real), 0)
    data = np.concatenate([real[: args.n], sampler.sample(n_syn, seed=1)])
    queries = sampler.sample(args.queries, seed=2)
    truth = exact_top(data, queries)
    print(f"{len(data)} vectors ({len(real[: args.n])} real), truth in "
          f"{time.perf_counter() - t:.0f} s; residual effective dim "
          f"{sampler.participation_ratio():.1f}", flush=True)
    efs = [int(x) for x in args.ef.split(",")]
    configs = ([(m, e) for m in (16, 32, 48) for e in (200, 400)] if args.grid
               else [(args.M, args.ef_construction)])
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["_about"] = {
        "vectors": "shipped index's real embeddings + synthetic with their cluster "
                   "structure and residual spectrum (see benchmarks/hnsw_1m.py)",
        "residual_effective_dim": round(sampler.participation_ratio(), 1),
        "machine": platform.machine(), "cpus": os.cpu_count(),
        "command": "nice python benchmarks/hnsw_1m.py " + " ".join(sys.argv[1:])}
    for m, efc in configs:
        load0 = os.getloadavg()[0]
        r = run_one(data, queries, truth, m, efc, efs, args.threads)
        r.update(n=len(data), queries=len(queries), load_avg_before=load0,
                 date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        results[f"n={len(data)} M={m} efc={efc}"] = r
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
