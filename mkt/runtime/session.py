"""The one way mkt opens an onnxruntime CPU session.

Same options everywhere (full graph optimisation, sequential execution, intra-op threads as
asked, one inter-op thread) and onnxruntime's own logging kept off stderr, so a model that
fails to load gives mkt's one-line error, not a coloured log line and a C++ message.

Why an optimised-model cache: onnxruntime spends most of a session's creation (70-100 ms of a
CLI call for the int8 model, more for the text encoder) fusing the QDQ graph into its int8
kernels. That work depends only on the model bytes, the onnxruntime version and the CPU, so
the first session on a machine saves the optimised graph under ``$MKT_CACHE_DIR/ort``
(default ``~/.cache/mkt/ort``) and later ones load it with optimisation off (15-30 ms): the
same kernels, identical outputs (``tests/test_session_cache.py``). The file is keyed by the
source model's sha256, onnxruntime's version and the CPU's model and instruction sets (the
optimised graph may use CPU-specific layouts), and it is only used while its own sha256
matches the one recorded when it was written. ``MKT_ORT_CACHE=0`` turns it off; a cache
that cannot be written or loaded never fails a call (the model is then optimised in memory).
``MKT_ORT_SPIN=0``: onnxruntime's worker threads sleep instead of spinning between operators.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from .errors import BundleError

#: Bumped when what is cached changes meaning.
_CACHE_FORMAT = 1


def default_threads() -> int:
    """Intra-op threads: ``$MKT_THREADS``, else all cores up to 4 (more rarely helps a CNN)."""
    env = os.environ.get("MKT_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(4, os.cpu_count() or 1))


def ort_cache_enabled() -> bool:
    return os.environ.get("MKT_ORT_CACHE", "1").strip().lower() not in ("0", "no", "off")


def _options(ort: Any, threads: int | None, level: Any) -> Any:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.intra_op_num_threads = int(threads or default_threads())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 4
    if os.environ.get("MKT_ORT_SPIN", "1").strip().lower() in ("0", "no", "off"):
        # worker threads sleep instead of spinning between operators: measured 1.3-2x faster
        # on a 2-core machine shared with other jobs (spinning threads take the cores the
        # others, and our own decode threads, need); not yet measured on a quiet one
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def _cache_paths(ort: Any, src: Path) -> tuple[Path, Path]:
    """(optimised model, its record) in the cache for ``src`` on this CPU and onnxruntime."""
    from .hashcache import cache_dir, sha256_cached
    from .precision import cpu_features

    cpu = cpu_features()
    ident = {"format": _CACHE_FORMAT, "model": sha256_cached(src), "onnxruntime": ort.__version__,
             "cpu": cpu["model"], "flags": cpu["flags"], "machine": cpu["machine"]}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
    d = cache_dir() / "ort"
    return d / f"{src.stem}-{key}.onnx", d / f"{src.stem}-{key}.json"


def _cached_session(ort: Any, src: Path, threads: int | None) -> Any | None:
    """A session of the cached optimised graph of ``src``, or None (no valid cache)."""
    from .hashcache import sha256_cached

    opt, rec = _cache_paths(ort, src)
    try:
        want = json.loads(rec.read_text(encoding="utf-8")).get("sha256")
        if not opt.is_file() or want != sha256_cached(opt):
            return None
        so = _options(ort, threads, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        return ort.InferenceSession(str(opt), sess_options=so,
                                    providers=["CPUExecutionProvider"])
    except Exception:  # missing, unreadable, stale or refused by onnxruntime: optimise again
        return None


def _session_saving_cache(ort: Any, src: Path, threads: int | None) -> Any:
    """Optimise ``src`` (full level) and, on the way, save the optimised graph to the cache."""
    from .fsutil import atomic_write_text
    from .hashcache import sha256_file

    so = _options(ort, threads, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    tmp: Path | None = None
    try:
        opt, rec = _cache_paths(ort, src)
        opt.parent.mkdir(parents=True, exist_ok=True)
        tmp = opt.with_name(f".{opt.name}.{os.getpid()}.tmp")
        so.optimized_model_filepath = str(tmp)
    except OSError:
        tmp = None
    try:
        sess = ort.InferenceSession(str(src), sess_options=so,
                                    providers=["CPUExecutionProvider"])
        if tmp is not None and tmp.is_file():
            try:
                atomic_write_text(rec, json.dumps({"sha256": sha256_file(tmp),
                                                   "source": str(src)}) + "\n")
                os.replace(tmp, opt)
            except OSError:
                pass
    finally:
        if tmp is not None:
            try:
                tmp.unlink()
            except OSError:
                pass
    return sess


def cpu_session(path: str | os.PathLike, threads: int | None = None, *,
                error: type[BundleError] = BundleError, what: str = "model",
                cache: bool | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU; ``error`` (one line) if it cannot load.

    ``cache``: use the optimised-model cache (module docstring); default ``$MKT_ORT_CACHE``
    (on). The session computes the same outputs either way."""
    import onnxruntime as ort  # heavy: imported when a session is actually opened

    ort.set_default_logger_severity(4)  # fatal only: failures reach the user as MktError
    src = Path(path)
    use_cache = ort_cache_enabled() if cache is None else bool(cache)
    try:
        if use_cache and src.is_file():
            sess = _cached_session(ort, src, threads)
            if sess is not None:
                return sess
            return _session_saving_cache(ort, src, threads)
        so = _options(ort, threads, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        return ort.InferenceSession(str(src), sess_options=so,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
        reason = " ".join(str(e).split())[:300]
        raise error(f"{path}: onnxruntime cannot load the {what} ({reason})") from None


# -- the optional OpenVINO backend ------------------------------------------------------------

BACKENDS = ("onnxruntime", "openvino")


def resolve_backend(backend: str | None) -> str:
    """``None``: ``$MKT_BACKEND`` or ``onnxruntime``. :class:`BundleError` for an unknown name
    or for ``openvino`` when it is not installed (one line, with the extra to install)."""
    name = (backend or os.environ.get("MKT_BACKEND") or "onnxruntime").strip().lower()
    if name not in BACKENDS:
        raise BundleError(f"unknown backend {name!r}; use {' or '.join(BACKENDS)}")
    if name == "openvino":
        try:
            import openvino  # noqa: F401
        except ImportError:
            raise BundleError("--backend openvino needs OpenVINO: pip install 'mkt[openvino]'"
                              ) from None
    return name


class _Arg:
    """What onnxruntime's ``NodeArg`` tells the runtime: name, type string, shape."""

    def __init__(self, name: str, type: str, shape: list[Any]) -> None:
        self.name, self.type, self.shape = name, type, shape


_OV_TYPES = {"u8": "tensor(uint8)", "f32": "tensor(float)", "i64": "tensor(int64)",
             "i32": "tensor(int32)", "f16": "tensor(float16)"}


class OpenVINOSession:
    """An OpenVINO compiled model behind onnxruntime's session interface (``get_inputs``,
    ``get_outputs``, ``run``), so :class:`~mkt.runtime.model.Model` runs either engine
    unchanged. It reads the bundle's own ONNX file (the int8 QDQ graph too: OpenVINO turns
    the QDQ pairs into its int8 kernels). Compiled graphs are cached under
    ``$MKT_CACHE_DIR/openvino`` (OpenVINO's ``CACHE_DIR``): compiling takes seconds, loading a
    compiled one a fraction of that. One infer request, used under a lock (an OpenVINO
    request is not thread-safe; onnxruntime sessions are)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, *,
                 cache: bool | None = None) -> None:
        """``cache``: use the compiled-graph cache (default: unless ``MKT_ORT_CACHE=0``);
        ``False`` compiles cold, as a benchmark of the compile time wants."""
        import openvino as ov

        from .hashcache import cache_dir

        core = ov.Core()
        if ort_cache_enabled() if cache is None else cache:
            try:
                d = cache_dir() / "openvino"
                d.mkdir(parents=True, exist_ok=True)
                core.set_property({"CACHE_DIR": str(d)})
            except (OSError, RuntimeError):
                pass
        self._cm = core.compile_model(
            str(Path(path)), "CPU",
            {"INFERENCE_NUM_THREADS": int(threads or default_threads()),
             "PERFORMANCE_HINT": "LATENCY",
             # OpenVINO runs "fp32" graphs in bf16 on CPUs with AVX512_BF16 or AMX unless told
             # otherwise (seen: logits off by 0.18, a top-1 changed); mkt's fp32 means fp32
             "INFERENCE_PRECISION_HINT": "f32"})
        self._req = self._cm.create_infer_request()
        self._lock = threading.Lock()
        self._outs = {o.get_any_name(): o for o in self._cm.outputs}

    @staticmethod
    def _arg(port: Any) -> _Arg:
        shape = [d.get_length() if d.is_static else "N" for d in port.get_partial_shape()]
        return _Arg(port.get_any_name(), _OV_TYPES.get(port.get_element_type().get_type_name(),
                                                       "unknown"), shape)

    def get_inputs(self) -> list[_Arg]:
        return [self._arg(p) for p in self._cm.inputs]

    def get_outputs(self) -> list[_Arg]:
        return [self._arg(p) for p in self._cm.outputs]

    def run(self, names: list[str] | None, feeds: dict[str, Any]) -> list[Any]:
        import numpy as np

        want = list(names) if names else list(self._outs)
        with self._lock:
            r = self._req.infer(feeds)
            # copies: the request reuses its output buffers on the next call
            return [np.array(r[self._outs[n]]) for n in want]


def openvino_session(path: str | os.PathLike, threads: int | None = None, *,
                     error: type[BundleError] = BundleError, what: str = "model") -> Any:
    """:class:`OpenVINOSession` of ``path``; ``error`` (one line) if OpenVINO cannot load it."""
    try:
        return OpenVINOSession(path, threads)
    except Exception as e:  # OpenVINO raises RuntimeError with a multi-line C++ message
        reason = " ".join(str(e).split())[:300]
        raise error(f"{path}: OpenVINO cannot load the {what} ({reason})") from None


def model_session(path: str | os.PathLike, threads: int | None = None,
                  backend: str | None = None) -> Any:
    """The session a :class:`~mkt.runtime.model.Model` runs: onnxruntime (default) or
    OpenVINO (``backend="openvino"`` or ``$MKT_BACKEND``)."""
    if resolve_backend(backend) == "openvino":
        return openvino_session(path, threads)
    return cpu_session(path, threads)


__all__ = ["BACKENDS", "OpenVINOSession", "cpu_session", "default_threads", "model_session",
           "openvino_session", "ort_cache_enabled", "resolve_backend"]
