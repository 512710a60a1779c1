"""mkt.serve: every endpoint through FastAPI's TestClient, incl. 400/413/415/422/503, /health,
/openapi.json, /docs."""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("multipart")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from mkt.serve import MULTIPART_OVERHEAD, create_app  # noqa: E402
from tests.conftest import build_index  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def built_index(tmp_path_factory, bundle_dir, dataset_dir):
    return build_index(tmp_path_factory, bundle_dir, dataset_dir)


@pytest.fixture(scope="module")
def client(bundle_dir, built_index):
    with TestClient(create_app(bundle_dir, built_index)) as c:
        yield c


@pytest.fixture(scope="module")
def photo(fixture_photos) -> bytes:
    return fixture_photos[0].read_bytes()


def up(data: bytes, name: str = "sofa.jpg", ctype: str = "image/jpeg") -> dict:
    return {"file": (name, data, ctype)}


def test_health(client, bundle_dir):
    r = client.get("/health")
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "ok" and len(h["labels"]) == 13 and h["embedding_dim"] > 0
    assert h["index"]["count"] == 26 and h["index"]["model_id"] == h["model_id"]


def test_classify(client, photo):
    r = client.post("/classify?k=4", files=up(photo))
    assert r.status_code == 200, r.text
    d = r.json()
    assert set(d) - {"uncertain"} == {"path", "category", "score", "top"}
    assert d["path"] == "sofa.jpg"
    assert len(d["top"]) == 4 and d["top"][0]["category"] == d["category"]
    labels = client.get("/health").json()["labels"]
    assert d["category"] in labels


def test_similar(client, photo, fixture_photos):
    r = client.post("/similar", params={"k": 3}, files=up(photo))
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["path"] == "sofa.jpg" and len(d["results"]) == 3
    top = d["results"][0]
    assert top["id"] == fixture_photos[0].stem and top["score"] > 0.99
    assert {"id", "score", "product_id", "title", "category"} <= set(top)
    assert all(v is not None for res in d["results"] for v in res.values())


def test_price(client, photo):
    r = client.post("/price?k=5", files=up(photo))
    assert r.status_code == 200, r.text
    d = r.json()
    assert set(d) == {"path", "price", "low", "high", "uncertain", "neighbours"}
    assert d["low"] <= d["price"] <= d["high"] and 1 <= len(d["neighbours"]) <= 5
    assert {"id", "price", "score"} <= set(d["neighbours"][0])
    r = client.post("/price", files=up(photo, ctype="application/octet-stream"))
    assert r.status_code == 200  # generic type: the bytes decide


def test_400_undecodable(client):
    for data in (b"this is not a photo", b"\xff\xd8\xff\xe0 truncated jpeg", b""):
        r = client.post("/classify", files=up(data))
        assert r.status_code == 400, (data, r.text)
        assert isinstance(r.json()["detail"], str) and "sofa.jpg" in r.json()["detail"]


def test_415(client, photo):
    r = client.post("/similar", files=up(b"hello", "a.txt", "text/plain"))
    assert r.status_code == 415 and "not an image" in r.json()["detail"]
    r = client.post("/price", content=photo, headers={"content-type": "image/jpeg"})
    assert r.status_code == 415 and "multipart" in r.json()["detail"]
    r = client.post("/classify", json={"file": "x"})
    assert r.status_code == 415


def test_413_from_content_length(client):
    big = b"\xff" * (10 * 1024 * 1024 + MULTIPART_OVERHEAD + 1)
    r = client.post("/classify", files=up(big))
    assert r.status_code == 413 and "too large" in r.json()["detail"]


def test_413_small_limit(bundle_dir, built_index, photo):
    app = create_app(bundle_dir, built_index, max_upload_bytes=len(photo) - 1)
    with TestClient(app) as c:
        r = c.post("/classify", files=up(photo))  # under the body allowance, over the file limit
        assert r.status_code == 413 and "too large" in r.json()["detail"]
        r = c.post("/classify", files=up(photo[: len(photo) // 2]))
        assert r.status_code == 400  # under the limit: decoded, and it is truncated


def test_413_streamed_without_content_length(bundle_dir, built_index, photo):
    app = create_app(bundle_dir, built_index, max_upload_bytes=1000)
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"x.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + photo + \
        f"\r\n--{boundary}--\r\n".encode()

    def chunks():
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    with TestClient(app) as c:
        r = c.post("/classify", content=chunks(),
                   headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 413


def test_422_params_and_missing_field(client, photo):
    r = client.post("/classify?k=0", files=up(photo))
    assert r.status_code == 422 and "k" in r.json()["detail"]
    r = client.post("/similar", files={"photo": ("a.jpg", photo, "image/jpeg")})
    assert r.status_code == 422 and "file" in r.json()["detail"]


def test_503_without_index(bundle_dir, photo):
    app = create_app(bundle_dir)
    with TestClient(app) as c:
        st = app.state.mkt
        st.index, st.index_error = None, "no packaged index"
        assert c.get("/health").json()["index_error"] == "no packaged index"
        assert c.post("/similar", files=up(photo)).status_code == 503
        assert c.post("/price", files=up(photo)).status_code == 503
        assert c.post("/classify", files=up(photo)).status_code == 200


def test_explicit_bad_index_fails_at_startup(bundle_dir, tmp_path):
    from mkt.runtime.errors import MktIndexError

    with pytest.raises(MktIndexError):
        create_app(bundle_dir, tmp_path / "no_index", eager=True)


def test_openapi_and_docs(client):
    r = client.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert {"/classify", "/similar", "/price", "/health"} <= set(spec["paths"])
    for p in ("/classify", "/similar", "/price"):
        op = spec["paths"][p]["post"]
        assert "multipart/form-data" in op["requestBody"]["content"]
        assert {"200", "400", "413", "415"} <= set(op["responses"])
        for code in ("400", "413", "415"):
            ref = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorDetail")
    for p in ("/similar", "/price"):
        assert "503" in spec["paths"][p]["post"]["responses"]
    # the answers are documented from the runtime's result dataclasses
    schemas = spec["components"]["schemas"]

    def fields(path, method="post"):
        ref = spec["paths"][path][method]["responses"]["200"]["content"]["application/json"][
            "schema"]["$ref"]
        return set(schemas[ref.rsplit("/", 1)[1]]["properties"])

    assert {"path", "category", "score", "top"} <= fields("/classify")
    assert fields("/similar") == {"path", "uncertain", "results"}
    assert {"path", "price", "low", "high", "neighbours"} <= fields("/price")
    assert {"status", "model_id", "labels"} <= fields("/health", "get")
    assert set(schemas["SimilarHit"]["properties"]) == {"id", "score", "product_id", "title",
                                                         "price", "category", "location",
                                                         "distance_km"}
    assert {"id", "price", "score"} <= set(schemas["PriceNeighbour"]["properties"])
    assert client.get("/docs").status_code == 200
    assert client.get("/nope").status_code == 404


def test_model_loaded_once(bundle_dir, built_index, photo, monkeypatch):
    import mkt.runtime.model as rm

    calls = []
    real = rm.Model.__init__

    def counting(self, *a, **k):
        calls.append(1)
        real(self, *a, **k)

    monkeypatch.setattr(rm.Model, "__init__", counting)
    with TestClient(create_app(bundle_dir, built_index)) as c:
        for _ in range(3):
            assert c.post("/classify", files=up(photo)).status_code == 200
    assert len(calls) == 1


def test_docs_work_offline(client, monkeypatch):
    """/docs loads Swagger UI from this server when fastapi-offline is installed (no CDN);
    without it the page says that it needs the CDN."""
    import mkt.serve as ms

    page = client.get("/docs").text
    if ms._docs_assets() is not None:
        assert "cdn" not in page.lower()
        js = client.get(f"{ms.DOCS_STATIC}/swagger-ui-bundle.js")
        assert js.status_code == 200 and len(js.content) > 100_000
        assert client.get(f"{ms.DOCS_STATIC}/swagger-ui.css").status_code == 200
    else:
        assert "fastapi-offline" in page
    monkeypatch.setattr(ms, "_docs_assets", lambda: None)
    with TestClient(create_app(model=client.app.state.mkt.model,
                               index_obj=client.app.state.mkt.index)) as c:
        page = c.get("/docs").text
    assert "CDN" in page and "fastapi-offline" in page and "/openapi.json" in page


def test_serve_busy_port_is_one_line_exit_2(bundle_dir):
    """A port in use: one `mkt: error:` line and exit 2, before any model is loaded."""
    import socket

    from tests.conftest import run

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = run("serve", "--port", port, "--bundle", bundle_dir)
    assert res.exit_code == 2
    assert res.stderr.strip() == f"mkt: error: port {port} on 127.0.0.1 is in use (pick " \
        "another with --port N)"
    assert res.stdout == ""


# -- Reliability II: one file per field, full $TMPDIR, busy ----------------------------------


def test_400_several_files_in_field(client, photo):
    """Several files in field `file`: 400 saying so (it used to classify the last one)."""
    files = [("file", ("a.jpg", photo, "image/jpeg")), ("file", ("b.jpg", photo, "image/jpeg"))]
    r = client.post("/classify", files=files)
    assert r.status_code == 400 and "2 files in field 'file'" in r.json()["detail"]


def test_507_when_tmpdir_is_full(client, photo, monkeypatch):
    """No space left for the upload spool (ours or the multipart parser's): 507, not 400."""
    import errno

    import starlette.formparsers as fp

    import mkt.serve as ms

    class Full:
        def __init__(self, *a, **k):
            pass

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    with monkeypatch.context() as m:
        m.setattr(ms, "spool_file", Full)
        r = client.post("/classify", files=up(photo))
        assert r.status_code == 507 and "temporary space" in r.json()["detail"]
    with monkeypatch.context() as m:  # the parser's own spool (FastAPI says "400 parsing")
        m.setattr(fp, "SpooledTemporaryFile", Full)
        r = client.post("/classify", files=up(photo))
        assert r.status_code == 507 and "temporary space" in r.json()["detail"]
    assert client.post("/classify", files=up(photo)).status_code == 200


def test_503_busy_with_retry_after(photo):
    """Uploads beyond `max_inflight` are turned away at once: 503 + Retry-After."""
    from mkt.serve import UploadGuard

    seen = []

    async def app(scope, receive, send):
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guard = UploadGuard(app, 10_000_000, max_inflight=2)
    c = TestClient(guard)  # not entered: no lifespan
    assert c.post("/classify", files=up(photo)).status_code == 204
    guard.inflight = 2  # two uploads being processed
    r = c.post("/classify", files=up(photo))
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "busy" in r.json()["detail"]
    assert c.get("/health").status_code == 204  # not an upload: not limited
    assert seen == ["/classify", "/health"]


def test_rate_limited_log():
    import logging

    from mkt.serve import RateLimitFilter

    f = RateLimitFilter(per_second=5)
    rec = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, "x", None, None)
    assert sum(f.filter(rec) for _ in range(1000)) <= 10  # <= 5 a second (a 2-s window)


def test_classify_with_votes(client, photo):
    """votes=true: the catalogue's categories join the answer (the photo is in the fixture
    index, so its listing's category gains); with a title: 400."""
    cat = client.post("/similar", params={"k": 1}, files=up(photo)).json()["results"][0][
        "category"]
    plain = client.post("/classify?k=13", files=up(photo)).json()
    voted = client.post("/classify?k=13&votes=true", files=up(photo))
    assert voted.status_code == 200, voted.text
    s = {d["category"]: d["score"] for d in plain["top"]}
    sv = {d["category"]: d["score"] for d in voted.json()["top"]}
    assert sv[cat] > s[cat] or s[cat] > 0.999
    assert sv != s
    r = client.post("/classify?votes=true", files=up(photo), data={"title": "a sofa"})
    assert r.status_code == 400 and "cannot be combined" in r.text
