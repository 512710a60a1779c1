"""The one way mkt opens an onnxruntime CPU session.

Same options everywhere (full graph optimisation, sequential execution, intra-op threads as
asked, one inter-op thread) and onnxruntime's own logging kept off stderr, so a model that
fails to load gives mkt's one-line error, not a coloured log line and a C++ message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import BundleError


def default_threads() -> int:
    """Intra-op threads: ``$MKT_THREADS``, else all cores up to 4 (more rarely helps a CNN)."""
    env = os.environ.get("MKT_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(4, os.cpu_count() or 1))


def cpu_session(path: str | os.PathLike, threads: int | None = None, *,
                error: type[BundleError] = BundleError, what: str = "model") -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU; ``error`` (one line) if it cannot load."""
    import onnxruntime as ort  # heavy: imported when a session is actually opened

    ort.set_default_logger_severity(4)  # fatal only: failures reach the user as MktError
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = int(threads or default_threads())
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 4
    try:
        return ort.InferenceSession(str(Path(path)), sess_options=so,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
        reason = " ".join(str(e).split())[:300]
        raise error(f"{path}: onnxruntime cannot load the {what} ({reason})") from None


__all__ = ["cpu_session", "default_threads"]
