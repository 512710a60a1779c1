"""Shared pytest fixtures. Keep generic: other test modules add their own fixtures here.

- ``fixtures_dir`` / ``fixture_photos`` / ``dataset_dir``: the committed sample photos and the
  tiny dataset folder (original CSV format) under ``tests/fixtures``.
- ``bundle_dir``: the packaged bundle ``mkt/assets/bundle`` if it exists, else a tiny
  random-weight bundle built once per session (needs ``onnx``; skipped without it).
- ``make_bundle``: build a tiny random bundle with a given seed (another ``model_id``).

Plain helpers (import them: ``from tests.conftest import run, jlines, build_index``):

- ``run(*args)``: ``mkt`` in-process (typer's CliRunner); asserts there is never a traceback
  and nothing but ``SystemExit`` escapes. ``res.stdout`` / ``res.stderr`` apart.
- ``jlines(text)``: the JSON objects of ``--json`` output, one a line.
- ``build_index(tmp_path_factory, bundle, dataset, *extra)``: ``mkt index build`` into a fresh
  folder; returns the index dir.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def fixture_photos() -> list[Path]:
    """The committed sample photos (real 224x224 letterboxed marketplace photos)."""
    photos = sorted((FIXTURES / "photos").glob("*.jpg"))
    assert photos, "tests/fixtures/photos is empty"
    return photos


@pytest.fixture(scope="session")
def dataset_dir() -> Path:
    """A tiny dataset folder: Products.csv, Images.csv (original format), images/."""
    return FIXTURES / "dataset"


@pytest.fixture(scope="session")
def make_bundle(tmp_path_factory: pytest.TempPathFactory):
    """Factory: ``make_bundle(seed=0) -> Path`` of a tiny random bundle (cached per seed)."""
    pytest.importorskip("onnx")
    from tests.helpers_bundle import build_dev_bundle

    cache: dict[int, Path] = {}

    def make(seed: int = 0) -> Path:
        if seed not in cache:
            cache[seed] = build_dev_bundle(tmp_path_factory.mktemp(f"bundle{seed}"), seed=seed)
        return cache[seed]

    return make


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged bundle if present, else a tiny random one (same I/O contract)."""
    packaged = REPO / "mkt" / "assets" / "bundle"
    if (packaged / "manifest.json").is_file():
        return packaged
    pytest.importorskip("onnx")
    from tests.helpers_bundle import build_dev_bundle

    return build_dev_bundle(tmp_path_factory.mktemp("bundle"))


# -- plain helpers shared by the CLI tests ---------------------------------------------------


def _runner() -> Any:
    from typer.testing import CliRunner

    return CliRunner()


def run(*args: Any) -> Any:
    """``mkt ARGS`` in-process; never a traceback, nothing but SystemExit escapes."""
    from mkt.cli import app

    res = _runner().invoke(app, [str(a) for a in args])
    both = res.stdout + res.stderr
    assert "Traceback" not in both, both
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res


def jlines(text: str) -> list[dict]:
    """The JSON objects of ``--json`` output, one a line."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def build_index(tmp_path_factory: Any, bundle: Path, dataset: Path, *extra: Any) -> Path:
    """``mkt index build DATASET --out <fresh dir> --bundle BUNDLE``; returns the index dir."""
    out = tmp_path_factory.mktemp("index") / "index"
    res = run("index", "build", dataset, "--out", out, "--bundle", bundle, *extra)
    assert res.exit_code == 0, res.output
    return out


# -- a real PostgreSQL (+pgvector), started by the tests themselves --------------------------


class Postgres:
    """A running PostgreSQL server (pgserver's binaries, pgvector included) on a unix socket.

    ``admin_uri``: superuser over trust auth (for fixtures only). ``url``: a SQLAlchemy URL
    for the role ``mkt`` *without* its password; the role needs ``password`` (scram-sha-256),
    so a wrong or missing password really fails. ``database``: owned by ``mkt``, with the
    ``vector`` extension created.
    """

    user = "mkt"
    password = "pw-Zq81-never-printed"  # grepped for in every output by the credential tests
    database = "listings"

    def __init__(self, server: Any, pgdata: Path):
        self.server = server
        self.pgdata = pgdata
        self.socket_dir = str(pgdata)
        self.admin_uri = server.get_uri()
        self.url = f"postgresql+psycopg://{self.user}@/{self.database}?host={self.socket_dir}"

    def psql(self, sql: str, database: str | None = None) -> str:
        """Run SQL as the superuser (``database``: default the listings database)."""
        import psycopg

        uri = self.admin_uri.replace("/postgres?", f"/{database or self.database}?")
        with psycopg.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(sql)
            return str(cur.fetchall()) if cur.description else ""

    def fresh_database(self, name: str) -> str:
        """A new empty database owned by ``mkt`` (with pgvector); returns its URL (no password)."""
        self.server.psql(f'CREATE DATABASE "{name}" OWNER {self.user};')
        self.psql("CREATE EXTENSION IF NOT EXISTS vector;", database=name)
        return f"postgresql+psycopg://{self.user}@/{name}?host={self.socket_dir}"


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real PostgreSQL server for the session (pgserver from PyPI; stopped at the end)."""
    pgserver = pytest.importorskip("pgserver")
    pytest.importorskip("psycopg")
    pgdata = tmp_path_factory.mktemp("pg")
    srv = pgserver.get_server(pgdata, cleanup_mode="stop")
    pg = Postgres(srv, pgdata)
    srv.psql(f"CREATE ROLE {pg.user} LOGIN PASSWORD '{pg.password}';")
    srv.psql(f"CREATE DATABASE {pg.database} OWNER {pg.user};")
    pg.psql("CREATE EXTENSION IF NOT EXISTS vector;")
    # The mkt role must authenticate with its password; the superuser keeps trust.
    hba = pgdata / "pg_hba.conf"
    hba.write_text(f"local all {pg.user} scram-sha-256\n" + hba.read_text())
    srv.psql("SELECT pg_reload_conf();")
    yield pg
    srv.cleanup()
