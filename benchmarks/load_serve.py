"""Loopback load test of `mkt serve`.

    python benchmarks/load_serve.py [--requests 200] [--threads 4] [--seconds 60]

Starts ``mkt serve`` (uvicorn) on 127.0.0.1 on a free port in a subprocess, waits for
``/health``, then sends a bounded number of uploads (``--requests``, and never longer than
``--seconds``) from a few concurrent threads with httpx, round-robin over POST /classify,
/similar and /price with real listing photos. Reports throughput, latency percentiles per
endpoint and the error count (anything but HTTP 200 is an error; target 0). Also checks that
the server answers bad requests properly (413, 415, 400) while under load. Loopback only.

Writes ``benchmarks/results/serve_load.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
ENDPOINTS = ("/classify", "/similar", "/price")
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def pick_photos(n: int) -> list[Path]:
    shared = REPO.parent / "shared" / "data" / "marketplace" / "images"
    pool = sorted(shared.glob("*.jpg")) if shared.is_dir() else []
    if not pool:
        pool = sorted((REPO / "tests" / "fixtures" / "photos").glob("*.jpg"))
    rng = np.random.default_rng(0)
    idx = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
    return [pool[i] for i in sorted(idx)]


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q)) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--index", type=Path, default=None)
    ap.add_argument("--photos", type=int, default=40)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)

    import httpx

    port = free_port()
    base = f"http://{HOST}:{port}"
    cmd = [sys.executable, "-m", "mkt.cli", "serve", "--host", HOST, "--port", str(port),
           "--log-level", "warning"]
    if args.bundle:
        cmd += ["--bundle", str(args.bundle)]
    if args.index:
        cmd += ["--index", str(args.index)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t_boot = time.time()
    server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(server.stdout), daemon=True).start()
    try:
        health = None
        with httpx.Client(timeout=5.0) as c:
            while time.time() - t_boot < 120:
                if server.poll() is not None:
                    raise SystemExit(f"server exited ({server.returncode}): {''.join(log)}")
                try:
                    r = c.get(f"{base}/health")
                    if r.status_code == 200:
                        health = r.json()
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
        if health is None:
            raise SystemExit(f"server not healthy after 120 s: {''.join(log)}")
        startup = time.time() - t_boot
        photos = [(p.name, p.read_bytes()) for p in pick_photos(args.photos)]

        lock = threading.Lock()
        counter = iter(range(args.requests))
        records: list[dict] = []
        deadline = time.time() + args.seconds

        def worker() -> None:
            with httpx.Client(base_url=base, timeout=60.0) as c:
                while time.time() < deadline:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    ep = ENDPOINTS[i % len(ENDPOINTS)]
                    name, data = photos[i % len(photos)]
                    t0 = time.perf_counter()
                    try:
                        r = c.post(ep, files={"file": (name, data, "image/jpeg")})
                        status = r.status_code
                        ok = status == 200 and isinstance(r.json(), dict)
                        err = None if ok else r.text[:200]
                    except Exception as e:  # noqa: BLE001 - everything is an error here
                        status, ok, err = None, False, f"{type(e).__name__}: {e}"
                    dt = time.perf_counter() - t0
                    with lock:
                        records.append({"endpoint": ep, "seconds": dt, "status": status,
                                        "ok": ok, "error": err})

        # one warm-up request per endpoint (not counted)
        with httpx.Client(base_url=base, timeout=60.0) as c:
            for ep in ENDPOINTS:
                c.post(ep, files={"file": photos[0] + ("image/jpeg",)})
        t_load = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(args.threads)]
        for t in threads:
            t.start()
        # negative checks while under load
        checks = {}
        with httpx.Client(base_url=base, timeout=60.0) as c:
            big = b"\xff" * (int(health.get("max_upload_bytes", 10 << 20)) + (1 << 20))
            checks["413_too_large"] = c.post("/classify", files={
                "file": ("big.jpg", big, "image/jpeg")}).status_code
            checks["415_text"] = c.post("/classify", files={
                "file": ("a.txt", b"hello", "text/plain")}).status_code
            checks["400_garbage"] = c.post("/classify", files={
                "file": ("a.jpg", b"garbage", "image/jpeg")}).status_code
        for t in threads:
            t.join()
        wall = time.perf_counter() - t_load
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    lat = [r["seconds"] * 1000 for r in records]
    per = {}
    for ep in ENDPOINTS:
        xs = [r["seconds"] * 1000 for r in records if r["endpoint"] == ep]
        per[ep] = {"requests": len(xs), "p50_ms": pct(xs, 50), "p95_ms": pct(xs, 95),
                   "max_ms": max(xs) if xs else float("nan")}
    errors = [r for r in records if not r["ok"]]
    result = {
        "server": "mkt serve (uvicorn, 1 process) on " + HOST,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "model_id": health["model_id"], "arch": health["arch"],
        "index_count": (health.get("index") or {}).get("count"),
        "startup_seconds": round(startup, 2),
        "client_threads": args.threads, "requests_planned": args.requests,
        "time_limit_seconds": args.seconds,
        "requests_done": len(records), "wall_seconds": round(wall, 2),
        "throughput_rps": len(records) / wall if wall > 0 else float("nan"),
        "latency_ms": {"p50": pct(lat, 50), "p95": pct(lat, 95), "p99": pct(lat, 99),
                       "max": max(lat) if lat else float("nan")},
        "per_endpoint": per,
        "errors": len(errors), "error_examples": errors[:5],
        "negative_checks": checks,
        "negative_checks_ok": checks == {"413_too_large": 413, "415_text": 415,
                                         "400_garbage": 400},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("requests_done", "wall_seconds", "throughput_rps",
                                             "latency_ms", "errors", "negative_checks")},
                     indent=2))
    return 0 if not errors and result["negative_checks_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
