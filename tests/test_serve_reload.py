"""A running `mkt serve` (a real server process on a free port) follows `mkt index add`:
the new generation is served within seconds, and no request fails meanwhile."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import build_index, run

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_picks_up_a_new_generation(tmp_path_factory: pytest.TempPathFactory,
                                         tmp_path: Path, bundle_dir: Path, dataset_dir: Path,
                                         fixture_photos: list[Path]) -> None:
    from PIL import Image

    index = build_index(tmp_path_factory, bundle_dir, dataset_dir, "--precision", "fp32")
    new = tmp_path / "brand_new_listing.jpg"  # a photo the index has never seen
    Image.open(fixture_photos[1]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(new)
    query = fixture_photos[0].read_bytes()
    port = _free_port()
    env = dict(os.environ, MKT_PRECISION="fp32")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mkt.cli", "serve", "--port", str(port), "--index", str(index),
         "--bundle", str(bundle_dir), "--threads", "1", "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    statuses: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            while not stop.is_set():
                r = c.post("/similar", files={"file": ("q.jpg", query, "image/jpeg")})
                statuses.append(r.status_code)

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        gen0 = httpx.get(f"{base}/health").json()["index"]["generation"]
        t = threading.Thread(target=hammer)
        t.start()
        time.sleep(0.5)
        res = run("index", "add", str(index), str(new), "--bundle", str(bundle_dir),
                  "--precision", "fp32")
        assert res.exit_code == 0, res.stderr
        committed = time.monotonic()
        found_after = None
        with httpx.Client(base_url=base, timeout=30) as c:
            while time.monotonic() - committed < 10:
                r = c.post("/similar", params={"k": 1},
                           files={"file": ("n.jpg", new.read_bytes(), "image/jpeg")})
                assert r.status_code == 200, r.text
                if r.json()["results"][0]["id"] == new.stem:
                    found_after = time.monotonic() - committed
                    break
                time.sleep(0.2)
        stop.set()
        t.join(30)
        assert found_after is not None, "the new photo was not served within 10 s"
        health = httpx.get(f"{base}/health").json()["index"]
        assert health["generation"] > gen0 and health["count"] == 27
        assert statuses and set(statuses) == {200}, statuses
        print(f"new photo served {found_after:.2f} s after the commit; "
              f"{len(statuses)} requests meanwhile, all 200")
    finally:
        stop.set()
        proc.terminate()
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()

