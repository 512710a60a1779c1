"""Bundle writing: manifest, sha256 of every file, atomic directory swap, and a verifier.

A bundle is a directory (docs/design.md): ``model.int8.onnx`` [, ``model.fp32.onnx``],
``parity.json`` and ``manifest.json``, whose ``files`` maps every other file to its sha256.
Everything is written into a temporary sibling directory first and renamed into place at the
end, so a failed export never leaves a half bundle where a good one (or nothing) was.

This module imports only the standard library (no torch, no onnx), so :func:`verify_bundle`
works anywhere; :func:`model_id_from_state_dict` takes tensors but needs no import of torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
INT8_FILE = "model.int8.onnx"
FP32_FILE = "model.fp32.onnx"
PARITY_FILE = "parity.json"


class BundleVerifyError(ValueError):
    """A bundle whose manifest is missing/malformed or whose files do not match their sha256."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def model_id_from_state_dict(state_dict: Mapping[str, Any]) -> str:
    """First 16 hex of a sha256 over the weights, so equal weights give equal ids.

    Keys are taken in sorted order; for each, the hash gets the key (utf-8), the dtype and shape
    as text, then the tensor's raw bytes (C-contiguous, CPU). Buffers (BatchNorm running stats,
    ``num_batches_tracked``) are included: they are part of what the model computes.
    """
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(key.encode("utf-8"))
        h.update(f"|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def versions() -> dict[str, str]:
    """Versions of what made the bundle (torch/onnx imported lazily; 'absent' if missing)."""
    from importlib import metadata

    out: dict[str, str] = {}
    for name, dist in (("torch", "torch"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"),
                       ("mkt", "mkt")):
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def file_hashes(bundle_dir: Path) -> dict[str, str]:
    """sha256 of every plain file in the bundle except ``manifest.json``, sorted by name."""
    return {p.name: sha256_file(p) for p in sorted(Path(bundle_dir).iterdir())
            if p.is_file() and p.name != MANIFEST}


def write_json(path: Path, obj: Any) -> None:
    """Write JSON (indent 2, trailing newline) and fsync it."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Fill ``manifest["files"]`` from what is in ``bundle_dir`` and write ``manifest.json``.

    Call it last: every other file must already be in place.
    """
    m = dict(manifest)
    m["files"] = file_hashes(bundle_dir)
    write_json(Path(bundle_dir) / MANIFEST, m)
    return m


def verify_bundle(bundle_dir: str | os.PathLike) -> dict[str, Any]:
    """Check a bundle: manifest readable, schema 1, every file in ``files`` present with its
    sha256, every model named in ``models`` listed in ``files``, no unlisted extra file.

    Returns the manifest; raises :class:`BundleVerifyError` with one line naming the problem.
    """
    d = Path(bundle_dir)
    mpath = d / MANIFEST
    try:
        m = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleVerifyError(f"{mpath}: cannot read manifest ({e})") from None
    if not isinstance(m, dict) or m.get("schema_version") != SCHEMA_VERSION:
        raise BundleVerifyError(f"{mpath}: not a schema_version {SCHEMA_VERSION} manifest")
    files = m.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleVerifyError(f"{mpath}: manifest has no 'files'")
    for name, want in files.items():
        p = d / name
        if Path(name).is_absolute() or ".." in Path(name).parts or name == MANIFEST:
            raise BundleVerifyError(f"{mpath}: bad file name in manifest: {name!r}")
        if not p.is_file():
            raise BundleVerifyError(f"{p}: listed in manifest but missing")
        got = sha256_file(p)
        if got != str(want).lower():
            raise BundleVerifyError(
                f"{p}: sha256 mismatch (manifest {str(want)[:12]}..., file {got[:12]}...)")
    for variant, name in (m.get("models") or {}).items():
        if name not in files:
            raise BundleVerifyError(f"{mpath}: model {variant!r} ({name}) not in 'files'")
    extra = sorted(p.name for p in d.iterdir() if p.name != MANIFEST and p.name not in files)
    if extra:
        raise BundleVerifyError(f"{d}: files not in the manifest: {', '.join(extra)}")
    return m


@contextlib.contextmanager
def atomic_bundle_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``out``; on success it replaces ``out``.

    On any exception the temporary directory is removed and ``out`` is untouched. An existing
    ``out`` is replaced only if it looks like a bundle (has ``manifest.json``) or is empty, so
    a typo cannot delete an unrelated directory.
    """
    out = Path(out).resolve()
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out}: exists and is not a directory")
        if any(out.iterdir()) and not (out / MANIFEST).is_file():
            raise FileExistsError(f"{out}: exists, is not empty and is not a bundle; "
                                  "choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = [
    "FP32_FILE", "INT8_FILE", "MANIFEST", "PARITY_FILE", "SCHEMA_VERSION", "BundleVerifyError",
    "atomic_bundle_dir", "file_hashes", "model_id_from_state_dict", "sha256_file", "versions",
    "verify_bundle", "write_json", "write_manifest",
]
