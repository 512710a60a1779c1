"""Which precision of a bundle to run on this CPU: int8 or fp32 (torch-free).

int8 is not always the faster one: onnxruntime's x86 int8 kernels depend on the CPU's
instructions (AVX2 only: VPMADDUBSW; AVX512-VNNI / AVX-VNNI: VPDPBUSD; AMX), and some int8
formats (U8U8) are slower than fp32 on AVX2. So "auto" times both once, on a synthetic uint8
batch, and remembers the answer per CPU (model name + flags) and per model file (sha256) in a
small JSON under ``$MKT_CACHE_DIR`` or ``~/.cache/mkt``. A cache that cannot be read or written
never fails the call: the timing is then simply redone next time.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from .hashcache import sha256_file

PRECISIONS = ("int8", "fp32")
CACHE_FILE = "precision.json"
_FLAGS = {
    "avx2": ("avx2",),
    "avx512f": ("avx512f",),
    "avx512_vnni": ("avx512_vnni", "avx512vnni"),
    "avx_vnni": ("avx_vnni", "avxvnni"),
    "amx": ("amx_int8", "amx_tile"),
}


def cpu_features(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> dict[str, Any]:
    """``{"model": str, "flags": {avx2, avx512f, avx512_vnni, avx_vnni, amx: bool}, "vnni": bool,
    "machine": str, "source": "cpuinfo" | "platform"}``. Reads /proc/cpuinfo where there is one;
    elsewhere only the model name from ``platform`` and every flag False (unknown)."""
    model = platform.processor() or platform.machine() or "unknown"
    flags: set[str] = set()
    source = "platform"
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and source == "platform":
            model, source = val.strip(), "cpuinfo"
        elif key in ("flags", "features") and not flags:
            flags = set(val.split())
            source = "cpuinfo"
        if flags and source == "cpuinfo" and model and key == "":
            break
    have = {name: any(f in flags for f in alts) for name, alts in _FLAGS.items()}
    return {"model": model, "flags": have, "vnni": have["avx512_vnni"] or have["avx_vnni"],
            "machine": platform.machine(), "source": source}


def default_cache_dir() -> Path:
    env = os.environ.get("MKT_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "mkt"


def _resolve(bundle_dir: str | os.PathLike, models: dict[str, Any]) -> dict[str, Path]:
    base = Path(bundle_dir)
    out = {}
    for k, p in models.items():
        p = Path(p)
        out[k] = p if p.is_absolute() else base / p
    return out


def _model_hashes(bundle_dir: Path, paths: dict[str, Path]) -> dict[str, str]:
    """sha256 of each model file; the manifest's ``files`` entry when it names the file."""
    files: dict[str, str] = {}
    try:
        files = json.loads((bundle_dir / "manifest.json").read_text()).get("files") or {}
    except (OSError, ValueError, AttributeError):
        files = {}
    out = {}
    for k, p in paths.items():
        try:
            rel = p.resolve().relative_to(bundle_dir.resolve()).as_posix()
        except (ValueError, OSError):
            rel = None
        out[k] = files.get(rel) if rel in files else sha256_file(p)
    return out


def _time_model(path: Path, threads: int | None, batches: tuple[int, ...] = (1, 8),
                runs: int = 4) -> dict[str, float]:
    """ms per photo at each batch size: median of ``runs`` after 2 warm runs."""
    import numpy as np

    from .session import cpu_session

    sess = cpu_session(path, threads)
    inp = sess.get_inputs()[0]
    dims = [d if isinstance(d, int) and d > 0 else 224 for d in inp.shape[1:]] or [224, 224, 3]
    rng = np.random.default_rng(0)
    out = {}
    for b in batches:
        x = rng.integers(0, 256, size=[b, *dims], dtype=np.uint8)
        for _ in range(2):
            sess.run(None, {inp.name: x})
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run(None, {inp.name: x})
            ts.append(time.perf_counter() - t0)
        out[f"b{b}"] = 1000 * float(np.median(ts)) / b
    return out


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".precision-", suffix=".json", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def choose_precision(bundle_dir: str | os.PathLike, models: dict[str, Any],
                     requested: str = "auto", cache_dir: str | os.PathLike | None = None,
                     *, threads: int | None = None) -> tuple[str, dict[str, Any]]:
    """Pick the precision to run: ``(choice, evidence)``.

    ``models``: precision -> model file (absolute, or relative to ``bundle_dir``), e.g. a
    manifest's ``models``. ``requested``: ``"int8"`` / ``"fp32"`` force that model (ValueError if
    the bundle has none), ``"auto"`` picks the faster by ms/photo at batch 1 and 8 (sum of the
    two), measured once per CPU and model files and cached in ``cache_dir`` (default
    :func:`default_cache_dir`). Evidence: ``{"requested", "choice", "reason", "cached", "ms":
    {precision: {"b1", "b8"}}, "cpu", "key", "cache_file", ["cache_error"]}``.
    """
    req = str(requested).lower().strip()
    if req not in ("auto", *PRECISIONS):
        raise ValueError(f"unknown precision {requested!r}: choose auto, int8 or fp32")
    known = {k: v for k, v in models.items() if k in PRECISIONS}
    if not known:
        raise ValueError(f"{bundle_dir}: the bundle lists no int8 or fp32 model "
                         f"(models: {', '.join(models) or 'none'})")
    ev: dict[str, Any] = {"requested": req, "cached": False, "ms": {}, "cache_file": None}
    if req != "auto":
        if req not in known:
            raise ValueError(f"{bundle_dir}: precision {req!r} requested but the bundle has only "
                             f"{', '.join(sorted(known))}")
        ev.update(choice=req, reason="forced")
        return req, ev
    if len(known) == 1:
        (only,) = known
        ev.update(choice=only, reason="only model in the bundle")
        return only, ev

    bdir = Path(bundle_dir)
    paths = _resolve(bdir, known)
    cpu = cpu_features()
    hashes = _model_hashes(bdir, paths)
    import onnxruntime as ort

    ident = {"cpu": cpu["model"], "flags": cpu["flags"], "models": hashes,
             "onnxruntime": ort.__version__, "threads": threads}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]
    ev.update(cpu=cpu, key=key)
    cfile = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cfile = cfile / CACHE_FILE
    ev["cache_file"] = str(cfile)
    entry = _read_cache(cfile).get(key)
    if isinstance(entry, dict) and entry.get("choice") in known \
            and isinstance(entry.get("ms"), dict):
        ev.update(choice=entry["choice"], ms=entry["ms"], cached=True,
                  reason=entry.get("reason", "measured"), measured_at=entry.get("measured_at"))
        return entry["choice"], ev

    ms = {k: _time_model(p, threads) for k, p in paths.items()}
    score = {k: sum(v.values()) for k, v in ms.items()}
    # int8 wins ties: same speed, smaller and the bundle's default
    choice = min(sorted(score, key=lambda k: PRECISIONS.index(k)), key=lambda k: score[k])
    reason = (f"measured: {choice} {score[choice]:.2f} vs "
              + ", ".join(f"{k} {v:.2f}" for k, v in score.items() if k != choice)
              + " ms/photo (batch 1 + batch 8)")
    ev.update(choice=choice, ms=ms, reason=reason)
    try:
        data = _read_cache(cfile)
        data[key] = {"choice": choice, "ms": ms, "reason": reason, "ident": ident,
                     "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_cache(cfile, data)
    except OSError as e:
        ev["cache_error"] = f"{type(e).__name__}: {e}"
    return choice, ev


__all__ = ["PRECISIONS", "choose_precision", "cpu_features", "default_cache_dir"]
