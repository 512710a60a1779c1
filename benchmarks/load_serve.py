"""Loopback load test of `mkt serve`.

    python benchmarks/load_serve.py [--requests 200] [--threads 4] [--seconds 60]

Starts ``mkt serve`` (uvicorn) on 127.0.0.1 on a free port in a subprocess, waits for
``/health``, then sends a bounded number of uploads (``--requests``, and never longer than
``--seconds``) from a few concurrent threads with httpx, round-robin over POST /classify,
/similar and /price with real listing photos. Reports throughput, latency percentiles per
endpoint and the error count (anything but HTTP 200 is an error; target 0). Also checks that
the server answers bad requests properly (413, 415, 400) while under load. Loopback only.

Then the resource limits (issue "Reliability II", docs/reliability.md): ``--burst`` (200)
concurrent ~8.5 MB uploads at once (raw sockets), sampling the server's RSS from
``/proc/PID/status`` and timing ``GET /health`` meanwhile, counting the answers (only
declared ones: 200 / 503 + Retry-After); ``--slow`` (100) slowloris connections (headers
trickled) and as many half-open ones (nothing sent), timing how long until the server drops
them; ``--flood`` (1,100) connections at once, counting the server's open file descriptors.

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


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def big_upload_request() -> bytes:
    """A raw HTTP request: POST /classify with an incompressible ~8.5 MB PNG."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (1680, 1680, 3), np.uint8)).save(
        buf, "PNG", compress_level=0)
    b = b"loadserveboundary"
    body = (b"--" + b + b'\r\nContent-Disposition: form-data; name="file"; '
            b'filename="noise.png"\r\nContent-Type: image/png\r\n\r\n' + buf.getvalue() +
            b"\r\n--" + b + b"--\r\n")
    return (b"POST /classify HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: multipart/form-data; boundary=" + b + b"\r\nContent-Length: " +
            str(len(body)).encode() + b"\r\n\r\n" + body)


def burst(port: int, pid: int, n: int) -> dict:
    """``n`` concurrent large uploads; server RSS and /health latency meanwhile."""
    import httpx

    request = big_upload_request()
    codes: list[int | str] = []
    retry_after: set[str | None] = set()
    health: list[float] = []
    health_codes: list[int] = []
    base = rss_mb(pid)
    peak = [base]
    stop = threading.Event()
    barrier = threading.Barrier(n)

    def upload() -> None:
        try:
            barrier.wait(30)
            with socket.create_connection((HOST, port), timeout=120) as s:
                s.sendall(request)
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
            head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            code = int(head[0].split()[1])
            codes.append(code)
            if code == 503:
                hdrs = dict(h.lower().split(": ", 1) for h in head[1:] if ": " in h)
                retry_after.add(hdrs.get("retry-after"))
        except Exception as e:  # noqa: BLE001 - counted
            codes.append(type(e).__name__)

    def watch() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mb(pid))
                t = time.perf_counter()
                try:
                    health_codes.append(c.get(f"http://{HOST}:{port}/health").status_code)
                except httpx.HTTPError:
                    health_codes.append(-1)
                health.append(time.perf_counter() - t)
                time.sleep(0.05)

    w = threading.Thread(target=watch)
    w.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=upload) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stop.set()
    w.join()
    return {"uploads": n, "upload_mb": round(len(request) / 1e6, 2), "wall_s": round(wall, 2),
            "answers": {c: [str(x) for x in codes].count(c) for c in sorted(set(map(str, codes)))},
            "retry_after": sorted(x or "" for x in retry_after),
            "rss_idle_mb": round(base, 1), "rss_peak_mb": round(peak[0], 1),
            "health_requests": len(health), "health_codes": sorted(set(health_codes)),
            "health_max_s": round(max(health), 3) if health else None,
            "health_p50_s": round(pct(health, 50), 3) if health else None}


def _closed_after(s: socket.socket, limit: float) -> float | None:
    t = time.perf_counter()
    s.settimeout(limit)
    try:
        while s.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        return None
    return time.perf_counter() - t


def slow_clients(port: int, n: int) -> dict:
    """``n`` slowloris connections (a header line a second) and ``n`` half-open ones."""
    slow = [socket.create_connection((HOST, port)) for _ in range(n)]
    idle = [socket.create_connection((HOST, port)) for _ in range(n)]
    t0 = time.perf_counter()
    for s in slow:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    open_slow = list(slow)
    closed_at: list[float] = []
    while open_slow and time.perf_counter() - t0 < 120:
        time.sleep(1.0)
        still = []
        for s in open_slow:
            try:
                s.sendall(b"X-Slow: 1\r\n")
                still.append(s)
            except OSError:
                closed_at.append(time.perf_counter() - t0)
        open_slow = still
    idle_closed = [_closed_after(s, max(1.0, 120 - (time.perf_counter() - t0))) for s in idle]
    for s in slow + idle:
        s.close()
    return {"slowloris": n, "slowloris_still_open_after_120s": len(open_slow),
            "slowloris_dropped_after_s_max": round(max(closed_at), 1) if closed_at else None,
            "half_open": n, "half_open_still_open": sum(c is None for c in idle_closed),
            "half_open_dropped_after_s_max": round(time.perf_counter() - t0, 1)}


def flood(port: int, pid: int, n: int) -> dict:
    """``n`` connections at once: how many the server keeps open (its fds)."""
    import httpx

    fds0 = len(os.listdir(f"/proc/{pid}/fd"))
    socks, refused = [], 0
    for _ in range(n):
        try:
            socks.append(socket.create_connection((HOST, port), timeout=5))
        except OSError:
            refused += 1
    time.sleep(1.0)
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    t = time.perf_counter()
    try:
        code = httpx.get(f"http://{HOST}:{port}/health", timeout=30).status_code
    except httpx.HTTPError as e:
        code = type(e).__name__
    during = time.perf_counter() - t
    for s in socks:
        s.close()
    time.sleep(1.0)
    t = time.perf_counter()
    after = httpx.get(f"http://{HOST}:{port}/health", timeout=30).status_code
    return {"connections": n, "refused": refused, "server_fds_idle": fds0,
            "server_fds_during": fds, "health_during": code,
            "health_during_s": round(during, 3), "health_after": after,
            "health_after_s": round(time.perf_counter() - t, 3)}


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
    ap.add_argument("--burst", type=int, default=200, help="concurrent large uploads (0: skip)")
    ap.add_argument("--slow", type=int, default=100, help="slowloris connections (0: skip)")
    ap.add_argument("--flood", type=int, default=1100, help="connections at once (0: skip)")
    ap.add_argument("--serve-args", default="",
                    help="extra `mkt serve` options, e.g. '--max-inflight 4'")
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
    cmd += args.serve_args.split()
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
        limits = {}
        if args.burst:
            limits["burst"] = burst(port, server.pid, args.burst)
        if args.slow:
            limits["slow"] = slow_clients(port, args.slow)
        if args.flood:
            limits["flood"] = flood(port, server.pid, args.flood)
        log_bytes = sum(len(x) for x in log)
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
        "limits": limits, "server_log_bytes": log_bytes,
        "negative_checks_ok": checks == {"413_too_large": 413, "415_text": 415,
                                         "400_garbage": 400},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("requests_done", "wall_seconds", "throughput_rps",
                                             "latency_ms", "errors", "negative_checks",
                                             "limits", "server_log_bytes")},
                     indent=2))
    return 0 if not errors and result["negative_checks_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
