"""onnxruntime session start-up of the shipped model, by optimisation level, side by side.

    python benchmarks/ort_startup.py [--rounds 5] [--threads 2] [--variant int8]

Rows (interleaved round robin, so each sees the same machine load): the session as mkt opened
it before (``ORT_ENABLE_ALL`` from the ONNX file), ``EXTENDED``, ``BASIC``, ``DISABLE_ALL``,
and the graph optimised once and saved (what :mod:`mkt.runtime.session` caches) loaded with
optimisation off. For each: session creation, first run, and a steady batch-1 run (ms,
medians), and whether the outputs are identical to ``ENABLE_ALL``'s. Writes
``benchmarks/results/ort_startup.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    from mkt.runtime.bench import cpu_info
    from mkt.runtime.bundle import load_bundle
    from mkt.runtime.images import load_letterboxed

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variant", default="int8")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    b = load_bundle(None)
    src = str(b.model_path(args.variant))
    photo = sorted((REPO / "mkt" / "assets" / "examples").glob("*.jpg"))[0]
    x = load_letterboxed(photo, b.input_size)[None]
    L = ort.GraphOptimizationLevel
    tmp = Path(tempfile.mkdtemp(prefix="mkt-ort-"))
    saved = tmp / "optimised.onnx"

    def opts(level: object) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 4
        return so

    so = opts(L.ORT_ENABLE_ALL)
    so.optimized_model_filepath = str(saved)
    ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    rows = {"ENABLE_ALL (before)": (src, L.ORT_ENABLE_ALL),
            "ENABLE_EXTENDED": (src, L.ORT_ENABLE_EXTENDED),
            "ENABLE_BASIC": (src, L.ORT_ENABLE_BASIC),
            "DISABLE_ALL": (src, L.ORT_DISABLE_ALL),
            "saved optimised graph, DISABLE_ALL (mkt now)": (str(saved), L.ORT_DISABLE_ALL)}
    t: dict[str, dict[str, list[float]]] = {k: {"create": [], "first": [], "run": []}
                                            for k in rows}
    ref = None
    same: dict[str, bool] = {}
    for _ in range(max(1, args.rounds)):
        for name, (path, level) in rows.items():
            t0 = time.perf_counter()
            s = ort.InferenceSession(path, opts(level), providers=["CPUExecutionProvider"])
            t1 = time.perf_counter()
            out = s.run(None, {b.input_name: x})
            t2 = time.perf_counter()
            runs = []
            for _ in range(5):
                t3 = time.perf_counter()
                s.run(None, {b.input_name: x})
                runs.append(time.perf_counter() - t3)
            t[name]["create"].append((t1 - t0) * 1000)
            t[name]["first"].append((t2 - t1) * 1000)
            t[name]["run"].append(float(np.median(runs)) * 1000)
            if ref is None:
                ref = out
            same[name] = same.get(name, True) and all(
                np.array_equal(a, r) for a, r in zip(out, ref, strict=True))
    res = {"machine": cpu_info(), "onnxruntime": ort.__version__, "model": Path(src).name,
           "threads": args.threads, "rounds": args.rounds,
           "rows": {k: {m: round(float(np.median(v)), 1) for m, v in d.items()}
                    | {"identical_outputs": same[k]} for k, d in t.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ort_startup.json").write_text(json.dumps(res, indent=1) + "\n")
    md = [f"# onnxruntime start-up, {res['model']} ({res['onnxruntime']}, {args.threads} "
          f"threads, {args.rounds} rounds interleaved, load average "
          f"{res['machine'].get('loadavg')})", "",
          "| session | create ms | first run ms | batch-1 run ms | outputs identical |",
          "|---|---:|---:|---:|---|"]
    for k, r in res["rows"].items():
        md.append(f"| {k} | {r['create']} | {r['first']} | {r['run']} | "
                  f"{'yes' if r['identical_outputs'] else 'no'} |")
    (args.out / "ort_startup.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
