"""Database URLs and their credentials: the one place a password is read, added and removed.

Why a module of its own: listings live in SQL databases (SQLAlchemy URLs such as
``postgresql+psycopg://user@host/db`` or ``sqlite:///listings.db``) and a shared index can
live in PostgreSQL + pgvector. Both need the same rules, and the rule that matters most is that
a password never reaches the command line in clear, the output, a log or a file mkt writes:

- the password comes from ``MKT_DB_PASSWORD`` or a ``--credentials FILE.yaml`` (host, port,
  user, password, database), never from the URL on the command line (a URL with a password is
  accepted, for embedding apps, but :func:`redact` is what gets recorded and printed);
- :func:`redact` gives the URL with the password removed, for indexes, manifests and messages;
- :func:`scrub` removes the password from any text (driver error messages quote URLs).

Only SQLAlchemy's URL parser is used here (extra ``sql``); nothing connects.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import MktError

PASSWORD_ENV = "MKT_DB_PASSWORD"
_SCHEMES = ("postgresql", "postgres", "sqlite", "mysql", "mariadb")
_CRED_KEYS = {"host", "port", "user", "username", "password", "database", "dbname"}


class DatabaseError(MktError):
    """A database could not be reached, refused the credentials, or lacks a table/column."""


def is_db_url(source: Any) -> bool:
    """True when SOURCE is a database URL rather than a path (``scheme://`` or ``scheme+drv://``)."""
    s = str(source)
    head, sep, _ = s.partition("://")
    return bool(sep) and head.split("+", 1)[0].lower() in _SCHEMES


def _url_module() -> Any:
    try:
        from sqlalchemy.engine import make_url
    except ImportError:
        raise MktError("database sources need the 'sql' extra: pip install 'mkt[sql]'") from None
    return make_url


def read_credentials(path: str | os.PathLike) -> dict[str, Any]:
    """A credentials YAML file as a dict (host, port, user, password, database); one-line
    errors that never quote the file's content."""
    p = Path(path)
    try:
        import yaml
    except ImportError:
        raise MktError("--credentials needs PyYAML: pip install 'mkt[sql]'") from None
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise MktError(f"{p}: cannot read credentials ({e.strerror or e})") from None
    except (yaml.YAMLError, UnicodeDecodeError):
        raise MktError(f"{p}: not a YAML mapping of host/port/user/password/database") from None
    if not isinstance(data, Mapping):
        raise MktError(f"{p}: not a YAML mapping of host/port/user/password/database")
    unknown = sorted(str(k) for k in data if k not in _CRED_KEYS)
    if unknown:
        raise MktError(f"{p}: unknown credentials keys {unknown} (allowed: {sorted(_CRED_KEYS)})")
    return dict(data)


def resolve_url(url: str, credentials: str | os.PathLike | None = None,
                env: Mapping[str, str] | None = None) -> str:
    """The URL to connect with: URL fields overridden by the credentials file, the password
    from the file or else from ``MKT_DB_PASSWORD``. Never print the result: use :func:`redact`."""
    make_url = _url_module()
    env = os.environ if env is None else env
    try:
        u = make_url(str(url))
    except Exception:
        raise MktError(f"not a database URL: {redact(str(url))}") from None
    if credentials is not None:
        c = read_credentials(credentials)
        fields: dict[str, Any] = {}
        if c.get("host") is not None:
            fields["host"] = str(c["host"])
        if c.get("port") is not None:
            try:
                fields["port"] = int(c["port"])
            except (TypeError, ValueError):
                raise MktError(f"{credentials}: port must be a number") from None
        user = c.get("user", c.get("username"))
        if user is not None:
            fields["username"] = str(user)
        db = c.get("database", c.get("dbname"))
        if db is not None:
            fields["database"] = str(db)
        if c.get("password") is not None:
            fields["password"] = str(c["password"])
        u = u.set(**fields)
    if u.password is None and env.get(PASSWORD_ENV):
        u = u.set(password=env[PASSWORD_ENV])
    return u.render_as_string(hide_password=False)


def password_of(url: str) -> str | None:
    """The password in a resolved URL (for :func:`scrub`), or None."""
    try:
        return _url_module()(str(url)).password
    except MktError:
        raise
    except Exception:
        return None


def redact(url: str) -> str:
    """The URL with its password removed (not masked): what indexes record and messages show."""
    try:
        u = _url_module()(str(url))
        return u._replace(password=None).render_as_string(hide_password=False)
    except MktError:
        raise
    except Exception:
        # Unparseable: drop anything between '://' and '@' that could hold user:password.
        s = str(url)
        head, sep, rest = s.partition("://")
        if sep and "@" in rest.split("/", 1)[0]:
            return f"{head}://***@{rest.split('@', 1)[1]}"
        return s


def libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as libpq/psycopg takes it (``postgresql+psycopg://`` ->
    ``postgresql://``), password kept: for drivers that connect without SQLAlchemy."""
    u = _url_module()(str(url))
    if u.get_backend_name() not in ("postgresql", "postgres"):
        raise MktError(f"not a PostgreSQL URL: {redact(url)}")
    return u.set(drivername="postgresql").render_as_string(hide_password=False)


def scrub(text: str, *secrets: str | None) -> str:
    """TEXT with every secret (passwords) replaced by ``***``; one line."""
    out = " ".join(str(text).split())
    for s in secrets:
        if s:
            out = out.replace(s, "***")
    return out


__all__ = [
    "PASSWORD_ENV",
    "DatabaseError",
    "is_db_url",
    "libpq_url",
    "password_of",
    "read_credentials",
    "redact",
    "resolve_url",
    "scrub",
]
