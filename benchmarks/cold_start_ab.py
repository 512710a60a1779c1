"""Cold ``mkt classify`` before and after a change, interleaved in one run.

    python benchmarks/cold_start_ab.py --before 83e20eb [--runs 10] [--typer-before DIR]

The ``before`` tree is ``git archive REF`` unpacked in a temp folder and put first on
``PYTHONPATH`` (same interpreter, same installed libraries); ``--typer-before DIR``: a folder
holding the typer package that tree used (e.g. a site-packages with typer 0.29), put first
too. Each round runs ``python -m mkt.cli classify PHOTO --json`` once per side, alternating,
after one untimed run each (page cache, .pyc files, mkt's start-up caches). Wall time and CPU
time (user + sys of the child, which a busy machine moves far less than wall time) are
reported as medians with their ratio. Writes ``benchmarks/results/cold_start_ab.json``/``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        cwd=tempfile.gettempdir()).returncode
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return wall, cpu, rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="git ref of the 'before' tree")
    ap.add_argument("--typer-before", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    photo = sorted((REPO / "mkt" / "assets" / "examples").glob("*.jpg"))[0]
    tmp = Path(tempfile.mkdtemp(prefix="mkt-before-"))
    data = subprocess.run(["git", "-C", str(REPO), "archive", args.before, "mkt"],
                          capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tf:
        tf.extractall(tmp, filter="data")
    cmd = [sys.executable, "-m", "mkt.cli", "classify", str(photo), "--json", "--threads",
           str(args.threads)]
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    before_path = [str(tmp)] + ([str(args.typer_before)] if args.typer_before else [])
    sides = {"before": {**base, "PYTHONPATH": os.pathsep.join(before_path)},
             "after": {**base, "PYTHONPATH": str(REPO)}}
    res: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in sides}
    for env in sides.values():
        run(cmd, env)
    for _ in range(max(1, args.runs)):
        for k, env in sides.items():
            wall, cpu, rc = run(cmd, env)
            if rc != 0:
                raise SystemExit(f"{k}: exit {rc}")
            res[k]["wall"].append(wall)
            res[k]["cpu"].append(cpu)
    med = {k: {m: round(float(np.median(v)), 3) for m, v in d.items()} for k, d in res.items()}
    out = {"before": args.before, "runs": args.runs, "threads": args.threads,
           "loadavg": [round(x, 2) for x in os.getloadavg()], "median_s": med,
           "ratio_wall": round(med["before"]["wall"] / med["after"]["wall"], 2),
           "ratio_cpu": round(med["before"]["cpu"] / med["after"]["cpu"], 2),
           "runs_s": {k: {m: [round(x, 3) for x in v] for m, v in d.items()}
                      for k, d in res.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cold_start_ab.json").write_text(json.dumps(out, indent=1) + "\n")
    md = (f"# cold `mkt classify`, {args.before} vs this tree ({args.runs} runs each, "
          f"interleaved, {args.threads} threads, load average at end {out['loadavg']})\n\n"
          "| tree | wall median s | CPU (user+sys) median s |\n|---|---:|---:|\n"
          + "".join(f"| {k} | {v['wall']} | {v['cpu']} |\n" for k, v in med.items())
          + f"| before / after | {out['ratio_wall']}x | {out['ratio_cpu']}x |\n")
    (args.out / "cold_start_ab.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
