"""HTTP API (FastAPI): classify, find similar listings and suggest a price for an uploaded photo.

    from mkt.serve import create_app
    app = create_app()                      # packaged bundle + catalogue index
    # uvicorn mkt.serve:app  /  mkt serve --port 8000

Endpoints (multipart upload, field ``file``; JSON out, same shapes as the CLI's ``--json``):

- ``POST /classify?k=3``  ``{"path", "category", "score", "top": [{"category", "score"}]}``
- ``POST /similar?k=10``  ``{"path", "results": [{"id", "score", "product_id", ...}]}``;
  ``&near=Leeds&within=30km``: results carry ``location``, ``distance_km`` (also on /search)
- ``POST /price?k=25``    ``{"path", "price", "low", "high", "neighbours": [...]}``
- ``GET /health``         model id, labels, index size
- ``GET /docs``, ``GET /openapi.json``: FastAPI's interactive docs and schema. Swagger UI's
  script and stylesheet are served from ``/docs-static`` when the ``fastapi-offline`` package
  (part of the ``serve`` extra) is installed, so ``/docs`` works offline; without it they come
  from a CDN and the page says so.

Errors are JSON ``{"detail": "..."}``: 400 empty or undecodable image or several files in
field ``file``, 408 upload body not received in time, 413 upload over the limit (checked from
``Content-Length`` and while streaming), 415 not multipart / not an image content type, 422
bad parameters, 503 busy (``Retry-After``) or no index loaded, 507 no space left to spool the
upload. The model and index are loaded once per process (at startup, in the lifespan) and
shared by all requests; onnxruntime sessions are thread-safe, index searches are serialised
with a lock; inference runs in worker threads, ``/health`` on the event loop.

Resource limits (uploads in flight, connections, header/body/keep-alive timeouts, spooled
uploads, rate-limited logs) and their settings: docs/reliability.md, :class:`UploadGuard`,
:func:`run_server`.

Needs the ``serve`` extra (``pip install 'mkt[serve]'``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastapi import Body, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .runtime.batch import PhotoError, SimilarResult, classify_photos, similar_photos
from .runtime.errors import BundleError, ImageTooLargeError, MktError, MktIndexError
from .runtime.price import PriceSuggestion, suggest_price
from .runtime.search import TextSearchResult

#: Largest accepted photo upload (bytes). A phone photo is 2-5 MB.
MAX_UPLOAD_BYTES = 10 * 1024 * 1024

#: Allowance for the multipart envelope (boundaries, part headers) on top of the photo.
MULTIPART_OVERHEAD = 64 * 1024

#: Part content types accepted besides ``image/*`` (clients that do not know the type send
#: these; the bytes are then checked by decoding them).
GENERIC_TYPES = frozenset({"", "application/octet-stream"})

UPLOAD_PATHS = frozenset({"/classify", "/similar", "/price"})

# -- resource limits (docs/reliability.md; `mkt serve` options / MKT_SERVE_* env vars) ------

#: Uploads read or processed at once; more get 503 + ``Retry-After`` at once.
MAX_INFLIGHT = 8

#: Seconds a client has to send a whole upload body (else 408, connection closed).
BODY_TIMEOUT = 30.0
#: seconds between two looks for a newer local index generation (one small file read)
RELOAD_CHECK_S = 1.0

#: Seconds a client has to send a request's headers (else the connection is closed).
HEADER_TIMEOUT = 10.0

#: Seconds an idle keep-alive connection stays open (uvicorn ``timeout_keep_alive``).
KEEP_ALIVE_TIMEOUT = 5

#: Open connections: at this many, uvicorn answers 503 (``limit_concurrency``); beyond it a
#: new connection is closed at once (file descriptors stay bounded). An idle connection
#: costs a few kB; what costs memory, an upload, is bounded by :data:`MAX_INFLIGHT`.
MAX_CONNECTIONS = 1000

#: Largest request head (request line + headers) h11 buffers (``h11_max_incomplete_event_size``).
MAX_HEADER_BYTES = 16 * 1024

#: Listen backlog (uvicorn ``backlog``).
BACKLOG = 256

#: Upload bytes kept in memory per request; the rest of a body is spooled to ``$TMPDIR``.
SPOOL_MEMORY = 256 * 1024

#: Chunk size the spooled body is handed to the multipart parser in.
REPLAY_CHUNK = 64 * 1024

#: An upload turned away early (503 busy, 413 by ``Content-Length``, 415) is read and dropped
#: up to this many times the largest accepted body, so the client sees the answer.
DRAIN_FACTOR = 2

#: ``Retry-After`` (seconds) on a 503 when busy.
RETRY_AFTER = 1

#: Log lines per second per logger (access and server logs) before lines are dropped.
LOG_LINES_PER_SECOND = 20


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
        (408, "The upload was not received in time (slow client)."),
        (415, "Not a multipart upload, or the file is not an image type."),
        (422, "Bad query parameters or no `file` field."),
        (503, "Busy (too many uploads in flight; see `Retry-After`), no index loaded "
              "(/similar, /price), or `title` asked of a bundle without a text encoder."),
        (507, "The server is out of temporary space for uploads."),
    )
}
_ERRORS[503]["headers"] = {"Retry-After": {
    "description": "Seconds to wait before retrying (when busy).",
    "schema": {"type": "integer", "minimum": 1}}}
_ERRORS[400]["description"] = ("The upload is empty or not a readable image, or it has "
                               "more than one file in field `file`.")
_NO_INDEX: dict[int | str, dict[str, Any]] = {}


# -- upload guard (pure ASGI: runs before FastAPI parses the body) ------------------------


class UploadGuard:
    """For POSTs to the upload endpoints, before FastAPI parses anything:

    - 503 (``Retry-After``) at once when ``max_inflight`` uploads are already being read or
      processed: the excess is turned away instead of queueing (memory stays bounded);
    - 415 unless multipart/form-data;
    - 413 when the body is over ``max_upload`` + :data:`MULTIPART_OVERHEAD` (from
      ``Content-Length`` at once, else while reading);
    - 408 when the whole body has not arrived within ``body_timeout`` seconds (slow clients);
    - 507 when the spool cannot be written (``$TMPDIR`` full).

    The body is streamed into a spool (:data:`SPOOL_MEMORY` bytes in memory, the rest in a
    temporary file), checked while streaming, and replayed to the app in chunks."""

    def __init__(self, app: Any, max_upload: int, paths: frozenset[str] = UPLOAD_PATHS, *,
                 max_inflight: int = MAX_INFLIGHT, body_timeout: float = BODY_TIMEOUT) -> None:
        self.app = app
        self.max_upload = int(max_upload)
        self.max_body = self.max_upload + MULTIPART_OVERHEAD
        self.paths = paths
        self.max_inflight = max(1, int(max_inflight))
        self.body_timeout = float(body_timeout)
        self.inflight = 0  # one event loop: a plain counter is enough

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or \
                scope.get("path") not in self.paths:
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.max_inflight:
            await self._drain(receive)
            await _reply(scope, receive, send, 503,
                         f"busy: {self.max_inflight} uploads are being processed, retry in "
                         f"{RETRY_AFTER} s", {"retry-after": str(RETRY_AFTER)})
            return
        self.inflight += 1
        try:
            await self._guarded(scope, receive, send)
        finally:
            self.inflight -= 1

    async def _drain(self, receive: Any) -> None:
        """Read and drop the request body (at most ``DRAIN_FACTOR`` x the largest accepted,
        within the body timeout) before an early answer: a client still sending would
        otherwise see its connection reset instead of the answer. Costs no memory."""
        total = 0
        try:
            async with _timeout_at(asyncio.get_running_loop().time() + self.body_timeout):
                while total <= DRAIN_FACTOR * self.max_body:
                    msg = await receive()
                    if msg["type"] != "http.request" or not msg.get("more_body", False):
                        return
                    total += len(msg.get("body", b""))
        except asyncio.TimeoutError:
            return

    async def _guarded(self, scope: dict, receive: Any, send: Any) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype != "multipart/form-data":
            await self._drain(receive)
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
                if n <= DRAIN_FACTOR * self.max_body:
                    await self._drain(receive)
                await _reply(scope, receive, send, 413, _too_large(self.max_upload))
                return
        spool = spool_file()
        try:
            problem: tuple[int, str] | None = None
            try:
                async with _timeout_at(asyncio.get_running_loop().time() + self.body_timeout):
                    problem = await self._spool(receive, spool)
            except asyncio.TimeoutError:
                await _reply(scope, receive, send, 408,
                             f"upload not received within {self.body_timeout:g} s",
                             {"connection": "close"})
                return
            if problem is not None:
                if problem[0]:
                    await _reply(scope, receive, send, *problem)
                return
            spool.seek(0)
            done = False

            async def replay() -> dict:
                nonlocal done
                if done:
                    return await receive()
                chunk = spool.read(REPLAY_CHUNK)
                more = len(chunk) == REPLAY_CHUNK
                if not more:
                    done = True
                return {"type": "http.request", "body": chunk, "more_body": more}

            await self.app(scope, replay, send)
        finally:
            spool.close()


    async def _spool(self, receive: Any, spool: Any) -> tuple[int, str] | None:
        """Stream the body into ``spool``: None when all there, else the answer to give
        (``(0, "")``: the client is gone, no answer)."""
        total = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return 0, ""
            body = msg.get("body", b"")
            total += len(body)
            if total > self.max_body:
                return 413, _too_large(self.max_upload)
            if body:
                try:
                    spool.write(body)
                except OSError as e:
                    return _storage_error(e)
            if not msg.get("more_body", False):
                return None


class _TimeoutAtCompat:
    """``asyncio.timeout_at`` for Python 3.10: cancels the task at ``when`` (loop time) and
    turns that cancellation into :class:`asyncio.TimeoutError`."""

    def __init__(self, when: float) -> None:
        self.when = when
        self.fired = False
        self.handle: Any = None

    async def __aenter__(self) -> _TimeoutAtCompat:
        task = asyncio.current_task()
        assert task is not None

        def fire() -> None:
            self.fired = True
            task.cancel()

        self.handle = asyncio.get_running_loop().call_at(self.when, fire)
        return self

    async def __aexit__(self, et: Any, e: Any, tb: Any) -> bool:
        self.handle.cancel()
        if self.fired and et is asyncio.CancelledError:
            raise asyncio.TimeoutError
        return False


#: One deadline over a whole loop of ``receive()`` (cheaper than ``wait_for`` per chunk).
_timeout_at: Any = getattr(asyncio, "timeout_at", _TimeoutAtCompat)


def spool_file() -> Any:
    """Where an upload's body waits for the parser (module-level so tests can replace it)."""
    return tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)


def _storage_error(e: OSError) -> tuple[int, str]:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return 507, "server out of temporary space, retry later"
    return 503, f"server cannot store the upload ({e.strerror or type(e).__name__})"


def _is_storage_error(exc: BaseException | None) -> OSError | None:
    """The OSError (disk full, ...) behind an exception, if any."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS,
                                                      errno.EIO):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _too_large(limit: int) -> str:
    mb = limit / 1024 / 1024
    return f"upload too large (limit {mb:.1f} MB)" if mb >= 0.1 else \
        f"upload too large (limit {limit} bytes)"


async def _reply(scope: dict, receive: Any, send: Any, status: int, detail: str,
                 headers: dict[str, str] | None = None) -> None:
    await JSONResponse({"detail": detail}, status_code=status, headers=headers)(
        scope, receive, send)


# -- app ----------------------------------------------------------------------------------


class _State:
    """What the app loads once: the model, the index (or why there is none), a lock."""

    def __init__(self) -> None:
        self.model: Any = None
        self.index: Any = None
        self.index_error: str | None = None
        self.lock = threading.Lock()
        self.search_lock = threading.Lock()
        self.reload_lock = threading.Lock()
        self.checked = 0.0  # time.monotonic() of the last look for a newer index generation


def create_app(
    bundle: str | os.PathLike | None = None,
    index: str | os.PathLike | None = None,
    *,
    model: Any = None,
    index_obj: Any = None,
    threads: int | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    eager: bool = False,
    max_inflight: int = MAX_INFLIGHT,
    body_timeout: float = BODY_TIMEOUT,
    precision: str | None = None,
    credentials: str | os.PathLike | None = None,
) -> FastAPI:
    """Build the FastAPI app.

    ``bundle`` / ``index``: directories (default: the packaged ones). ``model`` /
    ``index_obj``: already-loaded :class:`~mkt.runtime.model.Model` / ``Index`` to share.
    An explicitly given index that cannot be opened is an error; a missing *default* index
    only disables /similar and /price (503). ``eager``: load now (raising
    :class:`MktError`) instead of at startup, so a command line can fail before serving.
    ``max_inflight`` / ``body_timeout``: see :class:`UploadGuard` (docs/reliability.md).
    ``precision``: ``auto`` (default: the faster of int8/fp32 on this CPU), ``int8``, ``fp32``.
    ``index`` may be a ``postgresql://`` URL (a shared pgvector index; ``credentials``: its
    YAML file, else ``MKT_DB_PASSWORD``). A local index is followed: a generation committed
    by ``mkt index add/remove`` is served within :data:`RELOAD_CHECK_S` seconds.
    """
    st = _State()
    st.model = model
    st.index = index_obj

    def load() -> None:
        with st.lock:
            if st.model is None:
                from .runtime.model import Model

                st.model = Model(bundle, threads=threads, variant=precision)
            if st.index is None and st.index_error is None:
                from .runtime.dburl import is_db_url
                from .runtime.index import Index

                try:
                    if index is not None and is_db_url(index):
                        from .runtime.pgindex import PgIndex

                        st.index = PgIndex.open(str(index), credentials=credentials,
                                                model_id=st.model.model_id)
                    else:
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
    app.add_middleware(UploadGuard, max_upload=int(max_upload_bytes),
                       max_inflight=int(max_inflight), body_timeout=float(body_timeout))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query"))
            parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI turns any error while parsing the form into "400 error parsing the body",
        # a full $TMPDIR included (the parser spools file parts there): that one is ours.
        oserr = _is_storage_error(exc.__cause__)
        if oserr is not None:
            code, detail = _storage_error(oserr)
            return JSONResponse({"detail": detail}, status_code=code)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        oserr = _is_storage_error(exc)
        if oserr is not None:
            code, detail = _storage_error(oserr)
            return JSONResponse({"detail": detail}, status_code=code)
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

    def run_flow(flow: Any, file: UploadFile, indexed: bool, kw: dict[str, Any]) -> Any:
        args = (_Locked(need_index()),) if indexed else ()
        name, data = read_upload(file)
        try:
            (r,) = list(flow(ready().model, *args, [data], names=[name], **kw))
        except (BundleError, MktIndexError) as e:  # e.g. `title` on a bundle without text
            raise HTTPException(503, str(e)) from None
        except MktError as e:  # e.g. an empty title
            raise HTTPException(400, str(e)) from None
        if isinstance(r, PhotoError):
            raise HTTPException(413 if isinstance(r.exc, ImageTooLargeError) else 400, r.error)
        return r.to_dict()

    async def answer(flow: Any, request: Request, file: UploadFile, *, indexed: bool = False,
                     **kw: Any) -> JSONResponse:
        """Run a runtime flow (``classify_photos``, ``similar_photos``, ``suggest_price``) on
        the one uploaded photo (in a worker thread): its result's JSON, or 400 (413 when too
        large) with the one-line reason. ``indexed``: the flow searches the index (503
        without one). More than one file in field ``file``: 400 (not: the last one)."""
        form = await request.form()  # already parsed for ``file``: cached, not read again
        if len(form.getlist("file")) > 1:
            raise HTTPException(400, f"{len(form.getlist('file'))} files in field 'file': "
                                "send one photo per request")
        return JSONResponse(await run_in_threadpool(run_flow, flow, file, indexed, kw))

    def need_index() -> Any:
        s = ready()
        if s.index is None:
            raise HTTPException(503, f"no index loaded: {s.index_error or 'not configured'}")
        follow_index(s)
        return s.index

    def follow_index(s: _State) -> None:
        """At most every RELOAD_CHECK_S, one request looks at index.json (one small read) and,
        if a writer committed a new generation, opens it and swaps it in; the others go on
        with the index they hold meanwhile (never blocked, never an error)."""
        now = time.monotonic()
        if now - s.checked < RELOAD_CHECK_S or not hasattr(s.index, "latest"):
            return
        if not s.reload_lock.acquire(blocking=False):
            return
        try:
            s.checked = now
            fresh = s.index.latest()
            if fresh is not s.index:
                s.index = fresh  # the old one is closed by GC once its searches are done
        except MktError as e:  # a broken new generation: keep serving the one we have
            logging.getLogger("mkt.serve").warning("index reload failed, serving generation %s: %s",
                        s.index.generation, e)
        finally:
            s.reload_lock.release()

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

        def __getattr__(self, name: str) -> Any:  # other read-only queries (text, listings)
            attr = getattr(self.idx, name)
            if not callable(attr):
                return attr

            def locked(*a: Any, **kw: Any) -> Any:
                with st.search_lock:
                    return attr(*a, **kw)

            return locked

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    @app.get("/health", response_model=None, responses=_answer(Health, "What is loaded."),
             summary="Liveness + what is loaded")
    async def health() -> JSONResponse:
        # async: answered on the event loop, never queued behind uploads in the thread pool
        s = st if st.model is not None else await run_in_threadpool(ready)
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
    async def classify(
        request: Request,
        file: UploadFile = File(..., description="The photo (JPEG, PNG, WebP, ...)."),
        k: int = Query(3, ge=1, le=50, description="How many categories."),
        title: str | None = Form(None, min_length=1, max_length=10_000,
                                 description="The seller's title: the category from photo "
                                             "and title together."),
        votes: bool = Query(False, description="The categories of the 25 nearest catalogue "
                                               "photos vote too (needs the index; not with "
                                               "a title)."),
    ) -> JSONResponse:
        if not votes:
            return await answer(classify_photos, request, file, k=k, title=title)

        def voted(model: Any, idx: Any, photos: Any, **kw: Any) -> Any:
            from .runtime.votes import NeighbourVotes

            return classify_photos(model, photos, votes=NeighbourVotes(idx, model.labels), **kw)

        return await answer(voted, request, file, indexed=True, k=k, title=title)

    @app.post("/similar", response_model=None,
              responses={**_answer(SimilarResult, "Most similar photos, best first."),
                         **_ERRORS, **_NO_INDEX},
              summary="Most similar catalogue photos")
    async def similar(
        request: Request,
        file: UploadFile = File(..., description="The photo (JPEG, PNG, WebP, ...)."),
        k: int = Query(10, ge=1, le=100, description="How many results."),
        near: str | None = Query(None, min_length=1, max_length=200, description=_NEAR_DOC),
        within: str | None = Query(None, min_length=1, max_length=40,
                                   description=_WITHIN_DOC),
    ) -> JSONResponse:
        place, within_km = _near(near, within)
        return await answer(similar_photos, request, file, indexed=True, k=k, near=place,
                            within_km=within_km)

    @app.post("/price", response_model=None,
              responses={**_answer(PriceSuggestion, "Suggested price and range."),
                         **_ERRORS, **_NO_INDEX},
              summary="Suggested price from the nearest listings")
    async def price(
        request: Request,
        file: UploadFile = File(..., description="The photo (JPEG, PNG, WebP, ...)."),
        k: int | None = Query(None, ge=1, le=200,
                              description="How many listings vote (default: the tuned one)."),
        title: str | None = Form(None, min_length=1, max_length=10_000,
                                 description="The seller's title: neighbours by photo and "
                                             "title together."),
    ) -> JSONResponse:
        return await answer(suggest_price, request, file, indexed=True, k=k, title=title)

    def run_search(query: str, k: int, near: Any = None,
                   within_km: float | None = None) -> dict[str, Any]:
        from .runtime.search import search_each, search_text

        idx = _Locked(need_index())
        try:
            if near is None:
                (r,) = search_text(idx, ready().model.text_encoder(), [query], k)
            else:
                (r,) = search_each(idx, ready().model.text_encoder(), [query], k, near=near,
                                   within_km=within_km)
                if not isinstance(r, TextSearchResult):
                    raise HTTPException(400, r.error)
        except (BundleError, MktIndexError) as e:  # no text encoder, or an old index
            raise HTTPException(503, str(e)) from None
        except MktError as e:  # an empty query
            raise HTTPException(400, str(e)) from None
        return r.to_dict()

    @app.post("/search", response_model=None,
              responses={**_answer(TextSearchResult, "Listings best first."),
                         400: {"model": ErrorDetail, "description": "Empty query."},
                         422: _ERRORS[422], 503: _ERRORS[503]},
              summary="Listings for a text query (words, meaning and photos fused)")
    async def search(
        query: str = Body(..., embed=True, min_length=1, max_length=10_000,
                          description="What the buyer types, e.g. \"kids bike\"."),
        k: int = Body(10, embed=True, ge=1, le=100, description="How many listings."),
        near: str | None = Body(None, embed=True, min_length=1, max_length=200,
                                description=_NEAR_DOC),
        within: str | None = Body(None, embed=True, min_length=1, max_length=40,
                                  description=_WITHIN_DOC),
    ) -> JSONResponse:
        place, within_km = _near(near, within)
        return JSONResponse(await run_in_threadpool(run_search, query, k, place, within_km))

    return app


_NEAR_DOC = ('Rank by distance too: "Leeds", "Leeds, West Yorkshire" or "53.80,-1.55"; '
             "results carry location and distance_km, ordered by score * exp(-km / 50).")
_WITHIN_DOC = "With near: only listings at most this far, e.g. 30km or 20mi."


def _near(near: str | None, within: str | None) -> tuple[Any, float | None]:
    """``near``/``within`` parsed (:mod:`mkt.runtime.location`); 400 with the one-line
    reason (an unknown place names the closest known ones)."""
    if near is None:
        if within is not None:
            raise HTTPException(400, "within needs near")
        return None, None
    from .runtime.location import parse_near, parse_within

    try:
        return parse_near(near), parse_within(within)
    except MktError as e:
        raise HTTPException(400, str(e).replace("--near", "near").replace("--within", "within")
                            ) from None


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


# -- the server: uvicorn with bounded connections, timeouts and logs -------------------------


class RateLimitFilter(logging.Filter):
    """Lets at most ``per_second`` records a second through; says how many it dropped."""

    def __init__(self, per_second: int = LOG_LINES_PER_SECOND) -> None:
        super().__init__()
        self.per_second = max(1, int(per_second))
        self.window = 0
        self.count = 0
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = int(time.monotonic())
        if now != self.window:
            if self.dropped:
                record.msg = f"({self.dropped} log lines dropped) {record.msg}"
            self.window, self.count, self.dropped = now, 0, 0
        self.count += 1
        if self.count > self.per_second:
            self.dropped += 1
            return False
        return True


def guarded_protocol(header_timeout: float = HEADER_TIMEOUT,
                     max_connections: int = MAX_CONNECTIONS) -> type:
    """uvicorn's h11 protocol, plus: a connection must send a request head within
    ``header_timeout`` seconds (at the start and between keep-alive requests; slowloris and
    half-open connections are closed), and a connection beyond ``max_connections`` open ones
    is closed at once (file descriptors stay bounded)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_timer: Any = None
            if len(self.connections) > max_connections:
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(header_timeout, self._head_timeout)

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            waiting_for_client = self.cycle is None or self.cycle.response_complete
            if waiting_for_client and self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if getattr(self, "_head_timer", None) is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

    return GuardedH11Protocol


def uvicorn_options(*, max_connections: int = MAX_CONNECTIONS,
                    header_timeout: float = HEADER_TIMEOUT,
                    keep_alive: int = KEEP_ALIVE_TIMEOUT) -> dict[str, Any]:
    """``uvicorn.run`` / ``uvicorn.Config`` options with the limits of docs/reliability.md:
    ``limit_concurrency`` (503 at ``max_connections`` open connections or requests; capped
    below the file-descriptor limit), ``timeout_keep_alive``, ``h11_max_incomplete_event_size``,
    ``backlog``, and the request-head timeout and connection cap of
    :func:`guarded_protocol`."""
    soft = _raise_fd_limit()
    if soft is not None:  # leave room for the model, the index, log and spool files
        max_connections = max(2, min(int(max_connections), soft - 64))
    return {"http": guarded_protocol(header_timeout, max_connections),
            "limit_concurrency": int(max_connections), "timeout_keep_alive": int(keep_alive),
            "h11_max_incomplete_event_size": MAX_HEADER_BYTES, "backlog": BACKLOG,
            "timeout_graceful_shutdown": 5}


def run_server(app: Any, host: str = "127.0.0.1", port: int = 8000, *,
               max_connections: int = MAX_CONNECTIONS,
               header_timeout: float = HEADER_TIMEOUT,
               keep_alive: int = KEEP_ALIVE_TIMEOUT,
               log_level: str = "info", access_log: bool = False) -> None:
    """Serve ``app`` with uvicorn and :func:`uvicorn_options`; the access log off unless
    asked for, every server log rate-limited (:class:`RateLimitFilter`)."""
    import uvicorn

    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(RateLimitFilter())
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log,
                **uvicorn_options(max_connections=max_connections,
                                  header_timeout=header_timeout, keep_alive=keep_alive))


def _raise_fd_limit() -> int | None:
    """Soft file-descriptor limit up to the hard one (connections need one each); returns
    the soft limit now in force (None: unknown)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE,
                               (hard if hard != resource.RLIM_INFINITY else 65536, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return None if soft == resource.RLIM_INFINITY else int(soft)
    except (ImportError, ValueError, OSError):
        return None


def _env_app() -> FastAPI:
    """``uvicorn mkt.serve:app``: bundle/index from ``MKT_BUNDLE`` / ``MKT_INDEX`` if set."""
    b = os.environ.get("MKT_BUNDLE")
    i = os.environ.get("MKT_INDEX")
    return create_app(Path(b) if b else None, Path(i) if i else None)


def __getattr__(name: str) -> Any:
    if name == "app":  # built on first access only: importing mkt.serve loads nothing
        return _env_app()
    raise AttributeError(f"module 'mkt.serve' has no attribute {name!r}")


__all__ = ["MAX_UPLOAD_BYTES", "RateLimitFilter", "UploadGuard", "create_app", "guarded_protocol",
           "run_server", "uvicorn_options"]
