"""Model bundles, the one home of their format: schema, write, read, verify.

A bundle is a directory with ``manifest.json`` and the files it lists (docs/design.md): the
ONNX model(s), ``parity.json``, optionally the text encoder and its tokenizer. The exporter
writes it with :func:`atomic_bundle_dir` + :func:`write_manifest`; the runtime reads it with
:func:`load_bundle`, which verifies the sha256 of every listed file so a corrupt download or a
hand-edited model is refused with one clear line instead of giving silently wrong answers.
Standard library only (no torch, no onnx): the exporter, the runtime and the tests share it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError
from .fsutil import atomic_write_text
from .hashcache import sha256_cached, sha256_file
from .preprocess import Preprocess

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
INT8_FILE = "model.int8.onnx"
FP32_FILE = "model.fp32.onnx"
PARITY_FILE = "parity.json"
#: Largest manifest read (a real one is a few KB; a hostile one must not eat memory).
MAX_MANIFEST_BYTES = 4 << 20


def packaged_asset(name: str) -> Path:
    """Path of ``mkt/assets/<name>`` inside the installed package (may not exist)."""
    from importlib import resources

    try:
        base = resources.files("mkt") / "assets" / name
        return Path(str(base))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - odd packaging
        return Path(__file__).resolve().parent.parent / "assets" / name


def default_bundle_dir() -> Path:
    """The bundle shipped in the package: ``mkt/assets/bundle/``."""
    return packaged_asset("bundle")


@dataclass(frozen=True)
class Bundle:
    """A verified model bundle. Build with :func:`load_bundle`."""

    path: Path
    manifest: dict[str, Any] = field(repr=False)
    labels: tuple[str, ...]
    preprocess: Preprocess
    input_name: str
    model_id: str
    embedding_dim: int
    logits_name: str
    embedding_name: str
    models: dict[str, str]
    default_variant: str
    #: name of the cross-modal output (photo in the text encoder's space), if the graph has one
    text_embedding_name: str | None = None

    @property
    def input_size(self) -> int:
        return self.preprocess.size

    @property
    def arch(self) -> str:
        return str(self.manifest.get("arch", "?"))

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def calibration(self) -> dict[str, Any]:
        """Temperature and uncertainty thresholds fitted on val (empty for older bundles)."""
        c = self.manifest.get("calibration")
        return dict(c) if isinstance(c, dict) else {}

    def model_path(self, variant: str | None = None) -> Path:
        """Path of the ONNX file for ``variant`` (``int8``/``fp32``; default: the manifest's)."""
        v = variant or self.default_variant
        if v not in self.models:
            have = ", ".join(sorted(self.models)) or "none"
            raise BundleError(f"{self.path}: bundle has no '{v}' model (has: {have})")
        p = self.path / self.models[v]
        if not p.is_file():
            raise BundleError(f"{p}: model file missing from bundle")
        return p

    def summary(self) -> dict[str, Any]:
        """Plain dict for `mkt info` / JSON output."""
        m = self.manifest
        files = {}
        for name in sorted(self.models.values()):
            p = self.path / name
            if p.is_file():
                files[name] = p.stat().st_size
        return {
            "path": str(self.path),
            "model_id": self.model_id,
            "arch": self.arch,
            "input_size": self.input_size,
            "embedding_dim": self.embedding_dim,
            "num_classes": self.num_classes,
            "labels": list(self.labels),
            "models": dict(self.models),
            "default": self.default_variant,
            "model_bytes": files,
            "text": bool(m.get("text")),
            "calibration": self.calibration,
            "versions": m.get("versions", {}),
            "metrics": (m.get("training") or {}).get("metrics", {}),
        }


def _req(m: dict[str, Any], key: str, where: Path) -> Any:
    if key not in m:
        raise BundleError(f"{where}: manifest has no '{key}'")
    return m[key]


def _safe_name(name: Any, where: Path) -> str:
    """A file name listed in a manifest must stay inside the bundle directory."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() \
            or ".." in Path(name).parts or "/" in name or "\\" in name or name == MANIFEST:
        raise BundleError(f"{where}: bad file name in manifest: {name!r}")
    return name


def read_manifest(bundle_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``manifest.json`` (size-capped) and check it is a schema-``SCHEMA_VERSION`` object."""
    mpath = Path(bundle_dir) / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{mpath}: manifest.json not found; not a bundle directory")
    try:
        if mpath.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{mpath}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
        m = json.loads(mpath.read_text(encoding="utf-8"))
    except BundleError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BundleError(f"{mpath}: cannot read manifest ({type(e).__name__})") from None
    if not isinstance(m, dict):
        raise BundleError(f"{mpath}: manifest is not a JSON object")
    sv = m.get("schema_version")
    if sv != SCHEMA_VERSION:
        raise BundleError(f"{mpath}: unsupported schema_version {sv!r} (want {SCHEMA_VERSION})")
    return m


def verify_files(bundle_dir: str | os.PathLike, m: dict[str, Any], *,
                 strict: bool = False) -> None:
    """Every file in ``m["files"]`` is present with its sha256; ``strict``: and nothing else
    is in the directory (what the exporter checks of what it wrote)."""
    d = Path(bundle_dir)
    mpath = d / MANIFEST
    files = m.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{mpath}: manifest 'files' is missing or empty")
    for name, want in files.items():
        fp = d / _safe_name(name, mpath)
        if not fp.is_file():
            raise BundleError(f"{fp}: listed in manifest but missing")
        # remembered while the file's stamps are unchanged (mkt.runtime.hashcache): a changed
        # byte is still refused, without re-reading 55 MB on every command; strict (what the
        # exporter checks of what it wrote) always reads the bytes
        got = sha256_file(fp) if strict else sha256_cached(fp)
        if got != str(want).lower():
            raise BundleError(
                f"{fp}: sha256 mismatch (manifest {str(want)[:12]}..., file {got[:12]}...); "
                "bundle corrupt or modified"
            )
    if strict:
        extra = sorted(p.name for p in d.iterdir() if p.name != MANIFEST and p.name not in files)
        if extra:
            raise BundleError(f"{d}: files not in the manifest: {', '.join(extra)}")


def load_bundle(path: str | os.PathLike | None = None, *, verify: bool = True) -> Bundle:
    """Load and verify a bundle directory (default: the packaged ``mkt/assets/bundle``).

    Refuses (``BundleError``) a missing directory, a malformed manifest, an input contract the
    runtime cannot honour, and any file whose sha256 differs from ``manifest["files"]``.
    """
    d = Path(path) if path is not None else default_bundle_dir()
    mpath = d / MANIFEST
    if not d.is_dir():
        hint = "" if path is not None else " (no packaged bundle; pass --bundle DIR)"
        raise BundleError(f"{d}: bundle directory not found{hint}")
    m = read_manifest(d)
    pre = Preprocess.from_manifest(m, str(mpath))
    try:
        inp = _req(m, "input", mpath)
        labels = tuple(str(x) for x in _req(m, "labels", mpath))
        input_name = str(inp.get("name", "image"))
        outputs = m.get("outputs") or {}
        models = {str(k): _safe_name(v, mpath) for k, v in _req(m, "models", mpath).items()}
        default = str(m.get("default") or next(iter(models), ""))
        files = _req(m, "files", mpath)
        model_id = str(_req(m, "model_id", mpath))
        dim = int(_req(m, "embedding_dim", mpath))
        text_out = outputs.get("text_embedding")
    except BundleError:
        raise
    except (AttributeError, TypeError, ValueError) as e:
        raise BundleError(f"{mpath}: malformed manifest ({e})") from None
    if not labels or len(labels) > 10_000:
        raise BundleError(f"{mpath}: manifest has {len(labels)} labels")
    if not 1 <= dim <= 65_536:
        raise BundleError(f"{mpath}: embedding_dim {dim} out of range")
    if not isinstance(files, dict):
        raise BundleError(f"{mpath}: manifest 'files' is not an object")

    # Only models actually present count (an int8-only bundle lists fp32 in `models` or not).
    present = {k: v for k, v in models.items() if v in files or (d / v).is_file()}
    if not present:
        raise BundleError(f"{mpath}: no model file listed in the manifest is present")
    if default not in present:
        default = sorted(present)[0]
    if verify:
        verify_files(d, m)
        for v, name in present.items():
            if name not in files:
                raise BundleError(f"{mpath}: model '{v}' ({name}) has no sha256 in 'files'")

    return Bundle(
        path=d.resolve(),
        manifest=m,
        labels=labels,
        preprocess=pre,
        input_name=input_name,
        model_id=model_id,
        embedding_dim=dim,
        logits_name=str(outputs.get("logits", "logits")),
        embedding_name=str(outputs.get("embedding", "embedding")),
        models=present,
        default_variant=default,
        text_embedding_name=str(text_out) if text_out else None,
    )


# --------------------------------------------------------------------------- writing


def file_hashes(bundle_dir: str | os.PathLike) -> dict[str, str]:
    """sha256 of every plain file in the bundle except ``manifest.json``, sorted by name."""
    return {p.name: sha256_file(p) for p in sorted(Path(bundle_dir).iterdir())
            if p.is_file() and p.name != MANIFEST}


def write_manifest(bundle_dir: str | os.PathLike, manifest: dict[str, Any]) -> dict[str, Any]:
    """Fill ``manifest["files"]`` from what is in ``bundle_dir`` and write ``manifest.json``
    atomically. Call it last: every other file must already be in place."""
    m = dict(manifest)
    m.setdefault("schema_version", SCHEMA_VERSION)
    m["files"] = file_hashes(bundle_dir)
    atomic_write_text(Path(bundle_dir) / MANIFEST,
                      json.dumps(m, indent=2, sort_keys=False, allow_nan=False) + "\n")
    return m


def verify_bundle(bundle_dir: str | os.PathLike) -> dict[str, Any]:
    """The exporter's check of what it wrote: readable manifest, every listed file with its
    sha256, every model listed, and no unlisted file. Returns the manifest."""
    d = Path(bundle_dir)
    m = read_manifest(d)
    verify_files(d, m, strict=True)
    for variant, name in (m.get("models") or {}).items():
        if name not in m["files"]:
            raise BundleError(f"{d / MANIFEST}: model {variant!r} ({name}) not in 'files'")
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


def library_versions(names: tuple[str, ...] = ("mkt", "onnxruntime", "numpy", "hnswlib",
                                                "Pillow", "onnx", "torch")) -> dict[str, str]:
    """Installed versions of what made (or runs) a bundle; ``absent`` when not installed."""
    from importlib import metadata

    out: dict[str, str] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


__all__ = [
    "FP32_FILE", "INT8_FILE", "MANIFEST", "PARITY_FILE", "SCHEMA_VERSION", "Bundle",
    "atomic_bundle_dir", "default_bundle_dir", "file_hashes", "library_versions", "load_bundle",
    "packaged_asset", "read_manifest", "sha256_file", "verify_bundle", "verify_files",
    "write_manifest",
]
