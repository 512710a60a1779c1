"""Interleaved timing of fp32 vs int8 models (robust on a shared host).

    python benchmarks/int8_timing.py [--tag proxy] [--threads 2] [--rounds 12] NAME ...

NAME: ``fp32`` or a try name from benchmarks/int8_tries.py (its model file in the work dir).
Every round runs each model once per batch size, in turn, so a busy neighbour slows all of
them alike; reports min and median ms/photo over rounds and the speed-up vs fp32 of each.
Writes benchmarks/results/int8_timing_<tag>.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import int8_common as C  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="+")
    ap.add_argument("--tag", default="proxy")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=12)
    a = ap.parse_args()
    _, par = C.photo_sets()
    paths = {n: C.WORK / (f"{a.tag}.fp32.onnx" if n == "fp32" else f"{a.tag}-{n}.onnx")
             for n in a.names}
    sess = {n: C.session(p, a.threads) for n, p in paths.items()}
    res: dict[str, dict[int, list[float]]] = {n: {1: [], 32: []} for n in a.names}
    for b, reps in ((1, 10), (32, 1)):
        x = np.ascontiguousarray(par[:b])
        for s in sess.values():
            for _ in range(2):
                s.run(None, {"image": x})
        for _ in range(a.rounds if b == 1 else max(3, a.rounds // 2)):
            for n, s in sess.items():
                t0 = time.perf_counter()
                for _ in range(reps):
                    s.run(None, {"image": x})
                res[n][b].append(1000 * (time.perf_counter() - t0) / reps / b)
    from mkt.runtime.precision import cpu_features

    cpu = cpu_features()
    lines = [f"# int8 timing on `{a.tag}`", "",
             f"CPU {cpu['model']} ({', '.join(k for k, v in cpu['flags'].items() if v)}), "
             f"{a.threads} onnxruntime threads, shared with a training run; "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Rounds interleave the "
             "models; min is the least disturbed run.", "",
             "| model | b1 min | b1 median | b32 min | b32 median | speed-up b1 (min, median) "
             "| speed-up b32 (min, median) |", "|---|---|---|---|---|---|---|"]
    f = res.get("fp32")
    for n, r in res.items():
        m = {b: (min(v), float(np.median(v))) for b, v in r.items()}
        sp = {b: (f"{min(f[b]) / m[b][0]:.2f}x, {np.median(f[b]) / m[b][1]:.2f}x" if f else "-")
              for b in (1, 32)}
        lines.append(f"| {n} | {m[1][0]:.2f} | {m[1][1]:.2f} | {m[32][0]:.2f} | {m[32][1]:.2f} "
                     f"| {sp[1]} | {sp[32]} |")
    out = HERE / "results" / f"int8_timing_{a.tag}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
