"""sha256 of files, remembered while the file is unchanged: the one home of that memo.

Why: every command verifies the whole bundle (55 MB: both models, the text encoder) before it
trusts it, and hashing 55 MB cost 0.13 s of a 0.77 s ``mkt classify``. A file whose identity
and change stamps are the same as when it was last hashed has the same bytes, so its hash is
kept in ``$MKT_CACHE_DIR/sha256.json`` (default ``~/.cache/mkt``) keyed by the resolved path
and ``(device, inode, size, mtime_ns, ctime_ns)``. Any write to the file changes its ctime
(which no user-level call can set back), a copy or replacement changes the inode, so a changed
byte is still refused ("sha256 mismatch"); what is no longer re-read on every run is a file
that silently rotted on disk without any write. ``MKT_HASH_CACHE=0`` turns the memo off (every
call hashes the bytes), for a full check. A cache that cannot be read or written never fails
a call: the hash is then computed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CACHE_FILE = "sha256.json"
#: Entries kept; the oldest go first (a user with many bundles and indexes still stays small).
MAX_ENTRIES = 512

_memo: dict[str, tuple[list[int], str]] = {}  # this process's view, read once
_loaded = False


def cache_dir() -> Path:
    """``$MKT_CACHE_DIR`` or ``~/.cache/mkt``: where mkt keeps per-machine derived files."""
    env = os.environ.get("MKT_CACHE_DIR")
    if env:
        return Path(env)
    try:
        return Path.home() / ".cache" / "mkt"
    except RuntimeError:  # no home directory (a service user): a per-machine temp folder
        import tempfile

        return Path(tempfile.gettempdir()) / "mkt-cache"


def enabled() -> bool:
    return os.environ.get("MKT_HASH_CACHE", "1").strip().lower() not in ("0", "no", "off")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, streamed (always reads the file)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    try:
        data = json.loads((cache_dir() / CACHE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(data, dict):
        for k, v in data.items():
            if (isinstance(v, list) and len(v) == 2 and isinstance(v[0], list)
                    and isinstance(v[1], str)):
                _memo[k] = (v[0], v[1])


def _save() -> None:
    from .fsutil import atomic_write_text

    items = list(_memo.items())[-MAX_ENTRIES:]
    try:
        d = cache_dir()
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / CACHE_FILE, json.dumps({k: [s, h] for k, (s, h) in items}))
    except OSError:
        pass  # read-only home, full disk: the hash is simply computed next time


def sha256_cached(path: str | os.PathLike) -> str:
    """sha256 of ``path``: from the memo when the file's stamps are unchanged since it was
    hashed, else computed (and remembered). Raises ``OSError`` as ``open`` would."""
    p = Path(path)
    if not enabled():
        return sha256_file(p)
    key = str(p.resolve())
    _load()
    st = os.stat(p)
    hit = _memo.get(key)
    if hit is not None and hit[0] == _stamp(st):
        return hit[1]
    digest = sha256_file(p)
    st2 = os.stat(p)
    if _stamp(st2) == _stamp(st):  # not written while we read it
        _memo.pop(key, None)
        _memo[key] = (_stamp(st2), digest)
        _save()
    return digest


__all__ = ["cache_dir", "enabled", "sha256_cached", "sha256_file"]
