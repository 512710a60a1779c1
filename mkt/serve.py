"""HTTP API (FastAPI): classify, find similar listings and suggest a price for an uploaded photo.

    from mkt.serve import create_app
    app = create_app()                      # packaged bundle + catalogue index
    # uvicorn mkt.serve:app  /  mkt serve --port 8000

Endpoints (multipart upload, field ``file``; JSON out, same shapes as the CLI's ``--json``):

- ``POST /classify?k=3``  ``{"path", "category", "score", "top": [{"category", "score"}]}``
- ``POST /similar?k=10``  ``{"path", "results": [{"id", "score", "product_id", ...}]}``
- ``POST /price?k=25``    ``{"path", "price", "low", "high", "neighbours": [...]}``
- ``GET /health``         model id, labels, index size
- ``GET /docs``, ``GET /openapi.json``: FastAPI's interactive docs and schema. Swagger UI's
  script and stylesheet are served from ``/docs-static`` when the ``fastapi-offline`` package
  (part of the ``serve`` extra) is installed, so ``/docs`` works offline; without it they come
  from a CDN and the page says so.

Errors are JSON ``{"detail": "..."}``: 400 undecodable image, 413 upload over the limit (checked
from ``Content-Length`` and while reading, before the multipart parser spools anything), 415
not multipart / not an image content type, 422 bad parameters, 503 no index loaded. The model
and index are loaded once per process (at startup, in the lifespan) and shared by all requests;
onnxruntime sessions are thread-safe, index searches are serialised with a lock.

Needs the ``serve`` extra (``pip install 'mkt[serve]'``).
"""

from __future__ import annotations

import os
import threading
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse

from . import __version__
from .runtime.batch import PhotoError, SimilarResult, classify_photos, similar_photos
from .runtime.errors import ImageTooLargeError, MktIndexError
from .runtime.price import PriceSuggestion, suggest_price

#: Largest accepted photo upload (bytes). A phone photo is 2-5 MB.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024

#: Allowance for the multipart envelope (boundaries, part headers) on top of the photo.
MULTIPART_OVERHEAD = 64 * 1024

#: Part content types accepted besides ``image/*`` (clients that do not know the type send
#: these; the bytes are then checked by decoding them).
GENERIC_TYPES = frozenset({"", "application/octet-stream"})

UPLOAD_PATHS = frozenset({"/classify", "/similar", "/price"})


# -- what the endpoints answer (for the OpenAPI schema) ------------------------------------
# The answers are the runtime's result objects (their ``to_dict()``, as the CLI's --json):
# SimilarResult, PriceSuggestion. Only classify and health are described here.


@dataclass
class TopCategory:
    category: str
    score: float


@dataclass
class ClassifyAnswer:
    """Schema of a :class:`~mkt.runtime.model.Prediction`'s ``to_dict()`` (its ``top`` is a
    list of tuples in Python, objects in JSON)."""

    path: str
    category: str
    score: float
    top: list[TopCategory]
    uncertain: bool = False


@dataclass
class IndexInfo:
    count: int
    model_id: str
    generation: int


@dataclass
class Health:
    status: str
    version: str
    model_id: str
    arch: str
    labels: list[str]
    embedding_dim: int
    max_upload_bytes: int
    index: IndexInfo | None = None
    index_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class ErrorDetail:
    detail: str


def _answer(model: Any, what: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": model, "description": what}}


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorDetail, "description": what}
    for code, what in (
        (400, "The upload is not a readable image."),
        (413, "The upload is larger than the limit."),
        (415, "Not a multipart upload, or the file is not an image type."),
        (422, "Bad query parameters or no `file` field."),
    )
}
_NO_INDEX: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorDetail, "description": "No index loaded."}}


# -- upload guard (pure ASGI: runs before FastAPI parses the body) ------------------------


class UploadGuard:
    """For POSTs to the upload endpoints: 415 unless multipart/form-data, 413 when the body
    is over ``max_upload`` + :data:`MULTIPART_OVERHEAD` (from ``Content-Length`` at once, else
    while reading). The checked body is buffered (bounded by that) and replayed to the app."""

    def __init__(self, app: Any, max_upload: int, paths: frozenset[str] = UPLOAD_PATHS) -> None:
        self.app = app
        self.max_upload = int(max_upload)
        self.max_body = self.max_upload + MULTIPART_OVERHEAD
        self.paths = paths

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or \
                scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype != "multipart/form-data":
            await _reply(scope, receive, send, 415,
                         "expected a multipart/form-data upload with the photo in field "
                         f"'file' (got content type '{ctype or 'none'}')")
            return
        cl = headers.get("content-length")
        if cl is not None:
            try:
                n = int(cl)
            except ValueError:
                await _reply(scope, receive, send, 400, "malformed Content-Length header")
                return
            if n > self.max_body:
                await _reply(scope, receive, send, 413, _too_large(self.max_upload))
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            total += len(body)
            if total > self.max_body:
                await _reply(scope, receive, send, 413, _too_large(self.max_upload))
                return
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        data = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _too_large(limit: int) -> str:
    mb = limit / 1024 / 1024
    return f"upload too large (limit {mb:.1f} MB)" if mb >= 0.1 else \
        f"upload too large (limit {limit} bytes)"


async def _reply(scope: dict, receive: Any, send: Any, status: int, detail: str) -> None:
    await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)


# -- app ----------------------------------------------------------------------------------


class _State:
    """What the app loads once: the model, the index (or why there is none), a lock."""

    def __init__(self) -> None:
        self.model: Any = None
        self.index: Any = None
        self.index_error: str | None = None
        self.lock = threading.Lock()
        self.search_lock = threading.Lock()


def create_app(
    bundle: str | os.PathLike | None = None,
    index: str | os.PathLike | None = None,
    *,
    model: Any = None,
    index_obj: Any = None,
    threads: int | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    eager: bool = False,
) -> FastAPI:
    """Build the FastAPI app.

    ``bundle`` / ``index``: directories (default: the packaged ones). ``model`` /
    ``index_obj``: already-loaded :class:`~mkt.runtime.model.Model` / ``Index`` to share.
    An explicitly given index that cannot be opened is an error; a missing *default* index
    only disables /similar and /price (503). ``eager``: load now (raising
    :class:`MktError`) instead of at startup, so a command line can fail before serving.
    """
    st = _State()
    st.model = model
    st.index = index_obj

    def load() -> None:
        with st.lock:
            if st.model is None:
                from .runtime.model import Model

                st.model = Model(bundle, threads=threads)
            if st.index is None and st.index_error is None:
                from .runtime.index import Index

                try:
                    st.index = Index.open(index, model_id=st.model.model_id)
                except MktIndexError as e:
                    if index is not None:
                        raise
                    st.index_error = str(e)

    if eager:
        load()

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202 - FastAPI's own protocol
        load()
        yield

    app = FastAPI(
        title="mkt",
        version=__version__,
        description="Classify second-hand marketplace photos into 13 categories, find similar "
        "listings and suggest a price. Upload a photo as multipart field `file`.",
        lifespan=lifespan,
        docs_url=None,
    )
    app.state.mkt = st
    _add_docs(app)
    app.add_middleware(UploadGuard, max_upload=int(max_upload_bytes))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query"))
            parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": f"internal error ({type(exc).__name__})"}, status_code=500
        )

    def ready() -> _State:
        if st.model is None:
            load()
        return st

    def read_upload(file: UploadFile) -> tuple[str, bytes]:
        """Checks: returns (name, bytes) of an image upload within the limit."""
        name = file.filename or "upload"
        ctype = (file.content_type or "").split(";", 1)[0].strip().lower()
        if not (ctype.startswith("image/") or ctype in GENERIC_TYPES):
            raise HTTPException(415, f"{name}: content type '{ctype}' is not an image type")
        data = file.file.read(int(max_upload_bytes) + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"{name}: {_too_large(int(max_upload_bytes))}")
        if not data:
            raise HTTPException(400, f"{name}: empty upload")
        return name, data

    def answer(flow: Any, file: UploadFile, *, indexed: bool = False, **kw: Any) -> JSONResponse:
        """Run a runtime flow (``classify_photos``, ``similar_photos``, ``suggest_price``) on
        the one uploaded photo: its result's JSON, or 400 (413 when too large) with the
        one-line reason. ``indexed``: the flow searches the index (503 without one)."""
        args = (_Locked(need_index()),) if indexed else ()
        name, data = read_upload(file)
        (r,) = list(flow(ready().model, *args, [data], names=[name], **kw))
        if isinstance(r, PhotoError):
            raise HTTPException(413 if isinstance(r.exc, ImageTooLargeError) else 400, r.error)
        return JSONResponse(r.to_dict())

    def need_index() -> Any:
        s = ready()
        if s.index is None:
            raise HTTPException(503, f"no index loaded: {s.index_error or 'not configured'}")
        return s.index

    class _Locked:
        """The index, searched under the lock (hnswlib searches are serialised)."""

        def __init__(self, idx: Any) -> None:
            self.idx = idx
            self.count = idx.count

        def search(self, vecs: Any, k: int) -> Any:
            with st.search_lock:
                return self.idx.search(vecs, k)

        def get(self, photo_id: str) -> Any:
            with st.search_lock:
                return self.idx.get(photo_id)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    @app.get("/health", response_model=None, responses=_answer(Health, "What is loaded."),
             summary="Liveness + what is loaded")
    def health() -> JSONResponse:
        s = ready()
        m = s.model
        h = Health("ok", __version__, m.model_id, m.bundle.arch, list(m.labels),
                   m.embedding_dim, int(max_upload_bytes))
        if s.index is not None:
            h.index = IndexInfo(s.index.count, s.index.model_id, s.index.generation)
        else:
            h.index_error = s.index_error or "not configured"
        return JSONResponse(h.to_dict())

    @app.post("/classify", response_model=None,
              responses={**_answer(ClassifyAnswer, "Top-k categories."), **_ERRORS},
              summary="Top-k categories of a photo")
    def classify(
        file: UploadFile = File(..., description="The photo (JPEG, PNG, WebP, ...)."),
        k: int = Query(3, ge=1, le=50, description="How many categories."),
    ) -> JSONResponse:
        return answer(classify_photos, file, k=k)

    @app.post("/similar", response_model=None,
              responses={**_answer(SimilarResult, "Most similar photos, best first."),
                         **_ERRORS, **_NO_INDEX},
              summary="Most similar catalogue photos")
    def similar(
        file: UploadFile = File(..., description="The photo (JPEG, PNG, WebP, ...)."),
        k: int = Query(10, ge=1, le=100, description="How many results."),
    ) -> JSONResponse:
        return answer(similar_photos, file, indexed=True, k=k)

    @app.post("/price", response_model=None,
              responses={**_answer(PriceSuggestion, "Suggested price and range."),
                         **_ERRORS, **_NO_INDEX},
              summary="Suggested price from the nearest listings")
    def price(
        file: UploadFile = File(..., description="The photo (JPEG, PNG, WebP, ...)."),
        k: int | None = Query(None, ge=1, le=200,
                              description="How many listings vote (default: the tuned one)."),
    ) -> JSONResponse:
        return answer(suggest_price, file, indexed=True, k=k)

    return app


DOCS_STATIC = "/docs-static"


def _docs_assets() -> Path | None:
    """The folder of Swagger UI's files shipped by ``fastapi-offline``, or None."""
    try:
        import importlib.resources as resources

        d = Path(str(resources.files("fastapi_offline") / "static"))
    except (ImportError, TypeError, OSError):
        return None
    return d if (d / "swagger-ui-bundle.js").is_file() else None


def _add_docs(app: FastAPI) -> None:
    """``GET /docs``: Swagger UI from local files when they are installed (works offline),
    else FastAPI's CDN page with a visible note saying why it may stay blank."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse

    assets = _docs_assets()
    if assets is not None:
        from fastapi.staticfiles import StaticFiles

        app.mount(DOCS_STATIC, StaticFiles(directory=str(assets)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        kw: dict[str, str] = {}
        if assets is not None:
            kw = {"swagger_js_url": f"{root}{DOCS_STATIC}/swagger-ui-bundle.js",
                  "swagger_css_url": f"{root}{DOCS_STATIC}/swagger-ui.css",
                  "swagger_favicon_url": f"{root}{DOCS_STATIC}/favicon.png"}
        page = get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}",
                                   title="mkt - API docs", **kw)
        if assets is not None:
            return page
        note = ("<p style=\"font-family:sans-serif;margin:1em\">Swagger UI loads its script "
                "from a CDN: without internet this page stays blank. Install "
                "<code>fastapi-offline</code> (part of <code>pip install 'mkt[serve]'</code>) "
                f"to serve it locally, or read the schema at <a href=\"{root}/openapi.json\">"
                "/openapi.json</a>.</p>")
        body = bytes(page.body).decode().replace("<body>", "<body>" + note, 1)
        return HTMLResponse(body)


def _env_app() -> FastAPI:
    """``uvicorn mkt.serve:app``: bundle/index from ``MKT_BUNDLE`` / ``MKT_INDEX`` if set."""
    b = os.environ.get("MKT_BUNDLE")
    i = os.environ.get("MKT_INDEX")
    return create_app(Path(b) if b else None, Path(i) if i else None)


def __getattr__(name: str) -> Any:
    if name == "app":  # built on first access only: importing mkt.serve loads nothing
        return _env_app()
    raise AttributeError(f"module 'mkt.serve' has no attribute {name!r}")


__all__ = ["MAX_UPLOAD_BYTES", "UploadGuard", "create_app"]
