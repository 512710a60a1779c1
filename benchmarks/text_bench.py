"""Latency of the runtime text encoder (mkt.runtime.text.TextEncoder) on short queries.

    python benchmarks/text_bench.py --text-dir DIR [--threads N] [--n 200]

DIR holds text.int8.onnx (or text.fp32.onnx) + tokenizer.json (a bundle dir with a "text"
section works too). Reports p50/p90/p99 of one query end to end (tokenise + run + normalise),
warm, after 20 warm-up queries; plus a 128-token text.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

QUERIES = [
    "oak dining table", "mountain bike", "iphone 12", "baby pram", "cordless drill",
    "leather sofa", "ps4 with games", "kids bike with stabilisers", "garden furniture set",
    "washing machine 7kg", "office chair", "wedding dress size 12", "in oak", "lego",
    "samsung galaxy s21 unlocked", "double bed frame with mattress",
]


def main(argv=None) -> int:
    from mkt.runtime.text import TextEncoder

    ap = argparse.ArgumentParser()
    ap.add_argument("--text-dir", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    d = a.text_dir
    model = next(d / n for n in ("text.int8.onnx", "text.fp32.onnx") if (d / n).is_file())
    enc = TextEncoder(model, d / "tokenizer.json", threads=a.threads)
    for q in QUERIES + QUERIES:
        enc.encode([q])
    ts = []
    for i in range(a.n):
        q = QUERIES[i % len(QUERIES)]
        t = time.perf_counter()
        enc.encode([q])
        ts.append((time.perf_counter() - t) * 1000)
    ts.sort()
    long = " ".join(["solid oak dining table with six chairs"] * 40)
    lt = []
    for _ in range(20):
        t = time.perf_counter()
        enc.encode([long])
        lt.append((time.perf_counter() - t) * 1000)
    out = {
        "model": model.name, "model_mb": round(model.stat().st_size / 1e6, 1),
        "threads": enc.threads, "n": a.n,
        "short_query_ms": {"p50": round(statistics.median(ts), 2),
                           "p90": round(ts[int(0.9 * len(ts))], 2),
                           "p99": round(ts[int(0.99 * len(ts)) - 1], 2)},
        "max_tokens_text_ms_p50": round(statistics.median(lt), 2),
    }
    print(json.dumps(out, indent=2))
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
