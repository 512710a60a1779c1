"""`mkt serve` as a real server (a subprocess on 127.0.0.1): its resources stay bounded under
a burst of large uploads (RSS read from /proc, /health fast, only declared answers), slow and
half-open connections are dropped by the timeouts, excess connections are closed, the log
stays small. Loopback only; each test bounded to a few seconds (~20 s in all)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

if not Path("/proc/self/status").is_file():
    pytest.skip("needs /proc (Linux)", allow_module_level=True)

HOST = "127.0.0.1"
MAX_INFLIGHT = 4
N_CLIENTS = 60
MAX_CONNECTIONS = 150
HEADER_TIMEOUT = 1.5
BODY_TIMEOUT = 4.0
#: RSS the server may grow by (over its idle RSS) during the upload burst: bounded by
#: MAX_INFLIGHT uploads (10 MB body + decoded pixels each), not by the number of clients.
RSS_GROWTH_BOUND_MB = 400
DECLARED = {200, 400, 408, 413, 415, 422, 503, 507}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture(scope="module")
def server(bundle_dir, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mkt.cli", "serve", "--host", HOST, "--port", str(port),
             "--bundle", str(bundle_dir), "--threads", "1",
             "--max-inflight", str(MAX_INFLIGHT), "--max-connections", str(MAX_CONNECTIONS),
             "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
             "--keep-alive", "2"],
            stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        yield proc, url, port, log
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def big_png() -> bytes:
    """An incompressible ~8.5 MB PNG (noise), a valid image just under the 10 MB limit."""
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (1680, 1680, 3), np.uint8)).save(
        buf, "PNG", compress_level=0)
    data = buf.getvalue()
    assert 8e6 < len(data) < 10 * 1024 * 1024
    return data


def test_upload_burst_bounded(server, big_png):
    """N_CLIENTS (60) concurrent ~8.5 MB uploads: RSS bounded, /health < 1 s, only declared answers,
    the excess turned away with 503 + Retry-After."""
    proc, url, port, log = server
    base = rss_mb(proc.pid)
    log0 = log.stat().st_size
    codes: list[int] = []
    retry_after: list[str | None] = []
    health_s: list[float] = []
    peak = [base]
    stop = threading.Event()
    barrier = threading.Barrier(N_CLIENTS)

    boundary = b"mktloadtestboundary"
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; '
            b'filename="noise.png"\r\nContent-Type: image/png\r\n\r\n' + big_png +
            b"\r\n--" + boundary + b"--\r\n")
    request = (b"POST /classify HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
               b"Content-Type: multipart/form-data; boundary=" + boundary +
               b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    def upload() -> None:
        # raw sockets: sendall/recv release the GIL, so the clients hardly load this process
        try:
            barrier.wait(10)
            with socket.create_connection((HOST, port), timeout=30) as s:
                s.sendall(request)
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
            head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            code = int(head[0].split()[1])
            codes.append(code)
            if code == 503:
                hdrs = dict(h.lower().split(": ", 1) for h in head[1:])
                retry_after.append(hdrs.get("retry-after"))
        except (OSError, ValueError, IndexError) as e:
            codes.append(-1)
            print("client error:", repr(e))

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(proc.pid))
            t = time.monotonic()
            r = httpx.get(url + "/health", timeout=5)
            health_s.append(time.monotonic() - t)
            assert r.status_code == 200
            time.sleep(0.05)

    w = threading.Thread(target=watch)
    w.start()
    threads = [threading.Thread(target=upload) for _ in range(N_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    w.join(10)
    growth = peak[0] - base
    print(f"rss idle {base:.0f} MB, peak {peak[0]:.0f} MB; /health max {max(health_s):.3f} s "
          f"over {len(health_s)}; codes { {c: codes.count(c) for c in set(codes)} }")
    assert len(codes) == N_CLIENTS and set(codes) <= DECLARED, codes
    assert codes.count(200) >= 1 and codes.count(503) > 0  # 4 typically (the slots)
    assert set(retry_after) == {"1"}
    assert growth < RSS_GROWTH_BOUND_MB, growth
    assert health_s and max(health_s) < 1.0, max(health_s)
    assert log.stat().st_size - log0 < 64 * 1024  # no access log by default


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_slow_and_half_open_connections_dropped(server):
    """Half-open connections (nothing sent) and slowloris ones (headers trickled) are closed
    after the header timeout; a slow upload body gets 408 after the body timeout."""
    proc, _, port, _ = server
    idle = [socket.create_connection((HOST, port)) for _ in range(10)]
    slow = [socket.create_connection((HOST, port)) for _ in range(10)]
    t0 = time.monotonic()
    for s in slow:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    time.sleep(0.7)
    for s in slow:
        s.sendall(b"X-a: b\r\n")  # still trickling
    for s in idle + slow:
        assert _closed_within(s, HEADER_TIMEOUT + 3 - (time.monotonic() - t0))
        s.close()
    assert time.monotonic() - t0 < HEADER_TIMEOUT + 3
    body = socket.create_connection((HOST, port))
    body.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                 b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n")
    body.settimeout(BODY_TIMEOUT + 3)
    answer = body.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    body.close()


def test_connection_flood_bounded(server):
    """Far more connections than --max-connections: the excess is closed at once, the
    server's open file descriptors stay bounded, /health still answers afterwards."""
    proc, url, port, _ = server
    fds0 = open_fds(proc.pid)
    socks = []
    for _ in range(3 * MAX_CONNECTIONS):
        try:
            socks.append(socket.create_connection((HOST, port), timeout=2))
        except OSError:
            break
    time.sleep(0.5)
    fds = open_fds(proc.pid)
    assert fds - fds0 <= MAX_CONNECTIONS + 2, (fds0, fds)
    for s in socks:
        s.close()
    t = time.monotonic()
    assert httpx.get(url + "/health", timeout=5).status_code == 200
    assert time.monotonic() - t < 1.0
