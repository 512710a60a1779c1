"""Database URLs: the password is taken from the environment or a credentials file, never
shown, and a real PostgreSQL refuses a wrong one."""

from __future__ import annotations

import pytest

pytest.importorskip("sqlalchemy")

from mkt.runtime.dburl import (  # noqa: E402
    is_db_url,
    libpq_url,
    redact,
    resolve_url,
    scrub,
)
from mkt.runtime.errors import MktError  # noqa: E402


def test_is_db_url() -> None:
    assert is_db_url("postgresql+psycopg://u@h/db")
    assert is_db_url("sqlite:///x.db")
    assert not is_db_url("photos/")
    assert not is_db_url("http://example.com/x.jpg")


def test_password_from_env_and_file(tmp_path) -> None:
    url = "postgresql+psycopg://mkt@/listings?host=/tmp/s"
    full = resolve_url(url, env={"MKT_DB_PASSWORD": "sekrit"})
    assert "sekrit" in full and "sekrit" not in redact(full)
    assert redact(full) == redact(url) and "mkt@" in redact(full)
    cred = tmp_path / "c.yaml"
    cred.write_text("user: bob\npassword: fromfile\ndatabase: other\nport: 5433\nhost: db\n")
    full = resolve_url("postgresql+psycopg://x@localhost/db", cred, env={})
    assert full == "postgresql+psycopg://bob:fromfile@db:5433/other"
    assert "fromfile" not in redact(full)
    assert scrub(f"could not connect to {full}\nbad", "fromfile").count("***") == 1
    assert libpq_url(full).startswith("postgresql://bob:fromfile@")


def test_bad_credentials_file(tmp_path) -> None:
    cred = tmp_path / "c.yaml"
    cred.write_text("pasword: typo\n")
    with pytest.raises(MktError, match="unknown credentials keys"):
        resolve_url("postgresql://x@h/db", cred, env={})
    cred.write_text("- a list\n")
    with pytest.raises(MktError, match="not a YAML mapping"):
        resolve_url("postgresql://x@h/db", cred, env={})


def test_real_server_needs_the_password(postgres) -> None:
    import psycopg

    good = libpq_url(resolve_url(postgres.url, env={"MKT_DB_PASSWORD": postgres.password}))
    with psycopg.connect(good) as conn:
        assert conn.execute("select current_user").fetchone()[0] == "mkt"
    bad = libpq_url(resolve_url(postgres.url, env={"MKT_DB_PASSWORD": "wrong"}))
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(bad)
