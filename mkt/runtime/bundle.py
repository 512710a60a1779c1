"""Model bundles: a directory with ``manifest.json`` and the ONNX model(s) it names.

The format is fixed by docs/design.md. Loading verifies the sha256 of every file listed in
``manifest["files"]`` so a corrupt download or a hand-edited model is refused with one clear
line instead of producing silently wrong predictions.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


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
    input_size: int
    input_name: str
    model_id: str
    embedding_dim: int
    logits_name: str
    embedding_name: str
    models: dict[str, str]
    default_variant: str

    @property
    def arch(self) -> str:
        return str(self.manifest.get("arch", "?"))

    @property
    def num_classes(self) -> int:
        return len(self.labels)

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
            "versions": m.get("versions", {}),
            "metrics": (m.get("training") or {}).get("metrics", {}),
        }


def _req(m: dict[str, Any], key: str, where: Path) -> Any:
    if key not in m:
        raise BundleError(f"{where}: manifest has no '{key}'")
    return m[key]


def load_bundle(path: str | os.PathLike | None = None, *, verify: bool = True) -> Bundle:
    """Load and verify a bundle directory (default: the packaged ``mkt/assets/bundle``).

    Refuses (``BundleError``) a missing directory, a malformed manifest, a wrong input
    contract, and any file whose sha256 differs from ``manifest["files"]``.
    """
    d = Path(path) if path is not None else default_bundle_dir()
    mpath = d / MANIFEST
    if not d.is_dir():
        hint = "" if path is not None else " (no packaged bundle; pass --bundle DIR)"
        raise BundleError(f"{d}: bundle directory not found{hint}")
    if not mpath.is_file():
        raise BundleError(f"{mpath}: manifest.json not found; not a bundle directory")
    try:
        m = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{mpath}: cannot read manifest ({e})") from None
    if not isinstance(m, dict):
        raise BundleError(f"{mpath}: manifest is not a JSON object")
    sv = m.get("schema_version")
    if sv != SCHEMA_VERSION:
        raise BundleError(f"{mpath}: unsupported schema_version {sv!r} (want {SCHEMA_VERSION})")

    try:
        inp = _req(m, "input", mpath)
        labels = tuple(str(x) for x in _req(m, "labels", mpath))
        size = int(inp.get("size", 224))
        input_name = str(inp.get("name", "image"))
        if inp.get("dtype", "uint8") != "uint8" or inp.get("layout", "NHWC") != "NHWC":
            raise BundleError(
                f"{mpath}: unsupported input {inp.get('dtype')}/{inp.get('layout')} "
                "(runtime feeds uint8 NHWC)"
            )
        if inp.get("resize", "letterbox") != "letterbox":
            raise BundleError(f"{mpath}: unsupported resize {inp.get('resize')!r}")
        # The runtime letterboxes on black with bilinear resampling and feeds raw uint8 (the
        # graph normalises): refuse a manifest that asks for anything else.
        if list(inp.get("pad", [0, 0, 0])) != [0, 0, 0]:
            raise BundleError(f"{mpath}: unsupported pad colour {inp.get('pad')!r}")
        if inp.get("interpolation", "bilinear") != "bilinear":
            raise BundleError(
                f"{mpath}: unsupported interpolation {inp.get('interpolation')!r}"
            )
        if (m.get("preprocessing") or {}).get("in_graph", True) is not True:
            raise BundleError(f"{mpath}: preprocessing must be in the graph (in_graph: true)")
        outputs = m.get("outputs") or {}
        models = {str(k): str(v) for k, v in _req(m, "models", mpath).items()}
        default = str(m.get("default") or next(iter(models), ""))
        files = _req(m, "files", mpath)
        model_id = str(_req(m, "model_id", mpath))
        dim = int(_req(m, "embedding_dim", mpath))
    except BundleError:
        raise
    except (AttributeError, TypeError, ValueError) as e:
        raise BundleError(f"{mpath}: malformed manifest ({e})") from None
    if not labels:
        raise BundleError(f"{mpath}: manifest has no labels")
    if not isinstance(files, dict):
        raise BundleError(f"{mpath}: manifest 'files' is not an object")

    # Only models actually present count (an int8-only bundle lists fp32 in `models` or not).
    present = {k: v for k, v in models.items() if v in files or (d / v).is_file()}
    if not present:
        raise BundleError(f"{mpath}: no model file listed in the manifest is present")
    if default not in present:
        default = sorted(present)[0]

    if verify:
        for name, want in files.items():
            fp = d / name
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise BundleError(f"{mpath}: bad file name in manifest: {name!r}")
            if not fp.is_file():
                raise BundleError(f"{fp}: listed in manifest but missing")
            got = sha256_file(fp)
            if got != str(want).lower():
                raise BundleError(
                    f"{fp}: sha256 mismatch (manifest {str(want)[:12]}..., file {got[:12]}...); "
                    "bundle corrupt or modified"
                )
        for v, name in present.items():
            if name not in files:
                raise BundleError(f"{mpath}: model '{v}' ({name}) has no sha256 in 'files'")

    return Bundle(
        path=d.resolve(),
        manifest=m,
        labels=labels,
        input_size=size,
        input_name=input_name,
        model_id=model_id,
        embedding_dim=dim,
        logits_name=str(outputs.get("logits", "logits")),
        embedding_name=str(outputs.get("embedding", "embedding")),
        models=present,
        default_variant=default,
    )


__all__ = ["Bundle", "default_bundle_dir", "load_bundle", "packaged_asset", "sha256_file"]
