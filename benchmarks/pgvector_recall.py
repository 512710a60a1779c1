"""The shipped catalogue index (11,328 real photo embeddings) in pgvector vs hnswlib:
recall@10 against exact search, latency per query, push time.

    python benchmarks/pgvector_recall.py [--queries 300] [--url postgresql://...?index=NAME]

Without ``--url`` a throw-away PostgreSQL with pgvector is started with pgserver (the
``dev`` extra), as the tests do. Queries: ``--queries`` indexed photos (their own vector:
each finds itself, like ``mkt similar`` on a catalogue photo). Exact top-10: numpy over all
vectors. pgvector: HNSW (m=16, ef_construction=64, pgvector's defaults) at ef_search 40
(pgvector's default), 64 (mkt's) and 128; hnswlib: the shipped index (M=16,
ef_construction=200) at the same ef. Writes ``benchmarks/results/pgvector_recall.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def measure(idx, vecs: np.ndarray, truth: list[set[str]], ef: int) -> dict:
    idx.set_ef(ef)
    lat, hits = [], 0
    for v, t in zip(vecs, truth, strict=True):
        s = time.perf_counter()
        got = idx.search(v[None], 10)[0]
        lat.append(time.perf_counter() - s)
        hits += len({h.id for h in got} & t)
    return {"recall@10": round(hits / (10 * len(truth)), 4),
            "p50_ms": round(1000 * float(np.median(lat)), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--url", help="postgresql:// URL (password from MKT_DB_PASSWORD)")
    ap.add_argument("--out", type=Path,
                    default=REPO / "benchmarks" / "results" / "pgvector_recall.json")
    args = ap.parse_args()

    from mkt.runtime.index import Index
    from mkt.runtime.pgindex import push_index

    local = Index.open(None)
    ids, _, vecs = local.photo_vectors()
    rng = np.random.default_rng(0)
    qi = rng.choice(len(ids), args.queries, replace=False)
    q = vecs[qi]
    sims = q @ vecs.T
    truth = [{ids[j] for j in np.argsort(-s, kind="stable")[:10]} for s in sims]
    tmp = None
    url = args.url
    if url is None:
        import pgserver

        tmp = tempfile.TemporaryDirectory()
        srv = pgserver.get_server(tmp.name, cleanup_mode="stop")
        srv.psql("CREATE EXTENSION IF NOT EXISTS vector;")
        url = srv.get_uri().replace("postgresql://", "postgresql+psycopg://") + "&index=bench"
    t = time.perf_counter()
    pg = push_index(local, url)
    push_s = time.perf_counter() - t
    res: dict = {"photos": len(ids), "queries": args.queries, "push_s": round(push_s, 1),
                 "load_avg": os.getloadavg()[0], "pgvector": {}, "hnswlib": {},
                 "command": "python benchmarks/pgvector_recall.py " + " ".join(sys.argv[1:])}
    for ef in (40, 64, 128):
        res["pgvector"][str(ef)] = measure(pg, q, truth, ef)
        res["hnswlib"][str(ef)] = measure(local, q, truth, ef)
        print(ef, res["pgvector"][str(ef)], res["hnswlib"][str(ef)], flush=True)
    pg.close()
    if tmp is not None:
        srv.cleanup()
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
