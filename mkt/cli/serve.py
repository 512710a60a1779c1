"""``mkt serve``: the HTTP API (:mod:`mkt.serve`, FastAPI + uvicorn: the ``serve`` extra).
Always listed; without the extra it fails with exit 2 and the line that says what to
install."""

from __future__ import annotations

from typing import Annotated

import typer

from .errors import fail, require_extra, warn_line
from .options import AnyIndexOpt, BundleOpt, CredentialsOpt, PrecisionOpt, ThreadsOpt, command

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(app: typer.Typer) -> None:
    command(app, "serve")(serve_command)


def serve_command(
    host: Annotated[str, typer.Option("--host", metavar="ADDR",
                                      help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, metavar="N",
                                      help="TCP port.")] = 8000,
    bundle: BundleOpt = None,
    index: AnyIndexOpt = None,
    credentials: CredentialsOpt = None,
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = None,
    max_upload_mb: Annotated[float, typer.Option(
        "--max-upload-mb", min=0.01, metavar="MB", help="Largest accepted upload.")] = 10.0,
    log_level: Annotated[str, typer.Option("--log-level", metavar="LEVEL",
                                           help="uvicorn log level.")] = "info",
    max_inflight: Annotated[int, typer.Option(
        "--max-inflight", min=1, max=1024, metavar="N", envvar="MKT_SERVE_MAX_INFLIGHT",
        help="Uploads read or processed at once; more get 503 with Retry-After.")] = 8,
    max_connections: Annotated[int, typer.Option(
        "--max-connections", min=2, max=100_000, metavar="N",
        envvar="MKT_SERVE_MAX_CONNECTIONS",
        help="Open connections: at N requests get 503, beyond N new ones are closed.")] = 1000,
    body_timeout: Annotated[float, typer.Option(
        "--body-timeout", min=0.1, metavar="S", envvar="MKT_SERVE_BODY_TIMEOUT",
        help="Seconds to send a whole upload (else 408).")] = 30.0,
    header_timeout: Annotated[float, typer.Option(
        "--header-timeout", min=0.1, metavar="S", envvar="MKT_SERVE_HEADER_TIMEOUT",
        help="Seconds to send a request's headers (else the connection is closed).")] = 10.0,
    keep_alive: Annotated[int, typer.Option(
        "--keep-alive", min=1, metavar="S", envvar="MKT_SERVE_KEEP_ALIVE",
        help="Seconds an idle keep-alive connection stays open.")] = 5,
    access_log: Annotated[bool, typer.Option(
        "--access-log/--no-access-log", envvar="MKT_SERVE_ACCESS_LOG",
        help="Log every request (rate-limited to 20 lines/s).")] = False,
) -> None:
    """Serve the model over HTTP (FastAPI; needs the `serve` extra).

    POST /classify, /similar, /price with the photo as multipart field `file`; GET /health;
    interactive docs at /docs. Limits (connections, uploads in flight, timeouts) are
    documented in docs/reliability.md.
    """
    require_extra("serve", "serve", "fastapi", "uvicorn", "multipart")
    from ..serve import create_app, run_server

    check_port(host, port)
    if host not in LOOPBACK:
        warn_line(f"listening on {host}: reachable from other machines; there is no "
                  "authentication, put it behind a proxy")
    app = create_app(bundle=bundle, index=index, threads=threads,
                     max_upload_bytes=int(max_upload_mb * 1024 * 1024), eager=True,
                     max_inflight=max_inflight, body_timeout=body_timeout,
                     precision=precision, credentials=credentials)
    run_server(app, host, port, max_connections=max_connections,
               header_timeout=header_timeout, keep_alive=keep_alive, log_level=log_level,
               access_log=access_log)


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
