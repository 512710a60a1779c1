"""`mkt embed` throughput: photos/s of the local engine and of Ray Data on this machine, and
the cost per photo per core (what docs/scale.md scales up).

    python benchmarks/embed_throughput.py --data DATASET_DIR [--photos 400] [--cpus 2]

Writes a Parquet list of the first ``--photos`` photos of ``DATASET_DIR/images``, then times
``run_embed_job`` (decode + letterbox + the bundle's model, Parquet shards written) with
the local engine (one process, ``--cpus`` onnxruntime threads) and with Ray Data
(``ray.init(num_cpus=--cpus)``, default actor pool: one CPU stays free for the read/write
tasks). Ray's start-up is timed apart. Results (with the load average: on a shared CPU the
numbers are a lower bound) go to ``benchmarks/results/embed_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="dataset folder (images/)")
    ap.add_argument("--photos", type=int, default=400)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path,
                    default=REPO / "benchmarks" / "results" / "embed_throughput.json")
    args = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    from mkt.runtime.bench import cpu_info
    from mkt.runtime.embed_job import run_embed_job
    from mkt.runtime.model import Model

    photos = sorted((args.data / "images").glob("*.jpg"))[: args.photos]
    res: dict = {"photos": len(photos), "cpus": args.cpus, "precision": args.precision,
                 "batch_size": args.batch_size, "cpu": cpu_info(),
                 "command": "python benchmarks/embed_throughput.py " + " ".join(sys.argv[1:])}
    with tempfile.TemporaryDirectory() as tmp:
        lst = Path(tmp) / "list.parquet"
        pq.write_table(pa.table({"path": [str(p.resolve()) for p in photos]}), lst)
        model = Model(None, threads=args.cpus, variant=args.precision)
        model.run(model.load([photos[0]]))  # warm
        load0 = os.getloadavg()[0]
        t = time.perf_counter()
        rep = run_embed_job(model, lst, Path(tmp) / "local", batch_size=args.batch_size)
        dt = time.perf_counter() - t
        res["local"] = {"seconds": round(dt, 2), "photos_per_s": round(rep.count / dt, 1),
                        "ms_per_photo_per_core": round(1000 * dt * args.cpus / rep.count, 1),
                        "load_avg": [load0, os.getloadavg()[0]]}
        print("local", res["local"], flush=True)

        import ray

        t = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        start = time.perf_counter() - t
        load0 = os.getloadavg()[0]
        t = time.perf_counter()
        one = Model(None, threads=1, variant=args.precision)
        rep = run_embed_job(one, lst, Path(tmp) / "ray", engine="ray",
                            batch_size=args.batch_size)
        dt = time.perf_counter() - t
        ray.shutdown()
        actors = max(1, args.cpus - 1)
        res["ray"] = {"seconds": round(dt, 2), "ray_start_s": round(start, 2),
                      "actors": actors, "threads_per_actor": 1,
                      "photos_per_s": round(rep.count / dt, 1),
                      "ms_per_photo_per_actor_core": round(1000 * dt * actors / rep.count, 1),
                      "load_avg": [load0, os.getloadavg()[0]]}
        print("ray", res["ray"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
