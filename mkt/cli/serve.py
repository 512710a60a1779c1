"""``mkt serve``: the HTTP API (:mod:`mkt.serve`, FastAPI + uvicorn: the ``serve`` extra).
Always listed; without the extra it fails with exit 2 and the line that says what to
install."""

from __future__ import annotations

from typing import Annotated

import typer

from .errors import fail, require_extra, warn_line
from .options import BundleOpt, IndexOpt, ThreadsOpt, command

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(app: typer.Typer) -> None:
    command(app, "serve")(serve_command)


def serve_command(
    host: Annotated[str, typer.Option("--host", metavar="ADDR",
                                      help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, metavar="N",
                                      help="TCP port.")] = 8000,
    bundle: BundleOpt = None,
    index: IndexOpt = None,
    threads: ThreadsOpt = None,
    max_upload_mb: Annotated[float, typer.Option(
        "--max-upload-mb", min=0.01, metavar="MB", help="Largest accepted upload.")] = 10.0,
    log_level: Annotated[str, typer.Option("--log-level", metavar="LEVEL",
                                           help="uvicorn log level.")] = "info",
) -> None:
    """Serve the model over HTTP (FastAPI; needs the `serve` extra).

    POST /classify, /similar, /price with the photo as multipart field `file`; GET /health;
    interactive docs at /docs.
    """
    require_extra("serve", "serve", "fastapi", "uvicorn", "multipart")
    import uvicorn

    from ..serve import create_app

    check_port(host, port)
    if host not in LOOPBACK:
        warn_line(f"listening on {host}: reachable from other machines; there is no "
                  "authentication, put it behind a proxy")
    app = create_app(bundle=bundle, index=index, threads=threads,
                     max_upload_bytes=int(max_upload_mb * 1024 * 1024), eager=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def check_port(host: str, port: int) -> None:
    """Fail with one line and exit 2 when ``host:port`` cannot be listened on (in use, no such
    address), before loading anything: uvicorn would print its log lines and exit 3."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        fail(f"cannot listen on {host}: {getattr(e, 'strerror', None) or e}")
    family, stype, proto, _, addr = infos[0]
    with socket.socket(family, stype, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                fail(f"port {port} on {host} is in use (pick another with --port N)")
            fail(f"cannot listen on {host} port {port}: {e.strerror or e}")
