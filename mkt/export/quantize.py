"""Static int8 quantisation with onnxruntime's own quantiser (QDQ, per-channel weights).

``quant_pre_process`` (symbolic shape inference + graph optimisation) runs once on the fp32
model; each :class:`QuantConfig` then runs ``quantize_static`` on that with its calibration
method, activation type and excluded nodes.

What always stays fp32 (``nodes_to_exclude``): the in-graph preprocessing (everything between
the uint8 input and the first Conv: Cast, Div, Sub, Transpose) and the final L2-normalise of the
embedding (ReduceL2, Clip, Expand, Div): quantising a norm's Clip would quantise the norm itself.
The first Conv's input is still quantised (it is an ordinary activation), so the graph runs
int8 from the first Conv on. Configs may exclude more: the two heads (``heads``), or the heads
plus the last few Convs of the trunk (``tail<N>``). The heads' Gemm outputs (logits and the
pre-norm embedding) are never rounded to int8 (``OpTypesToExcludeOutputQuantization``).

Histogram calibrators (entropy, percentile) keep every intermediate tensor of every calibration
image in memory before building histograms; the reader therefore supports ``set_range`` and
calibration runs in strides (``CalibStridedMinMax``, honoured by all calibrators), which bounds
memory to one stride of images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}
ACT_TYPES = {"QInt8": QuantType.QInt8, "QUInt8": QuantType.QUInt8}
_POOL_OPS = {"GlobalAveragePool", "Flatten", "ReduceMean", "Reshape"}
_LINEAR_OPS = {"Gemm", "MatMul"}


@dataclass(frozen=True)
class QuantConfig:
    """One quantisation try. ``exclude``: ``pre_post`` | ``heads`` | ``tail<N>`` (see module)."""

    name: str
    method: str = "minmax"
    activation_type: str = "QInt8"
    weight_type: str = "QInt8"
    per_channel: bool = True
    reduce_range: bool = False
    exclude: str = "pre_post"
    extra_options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_tries(method: str = "minmax") -> list[QuantConfig]:
    """The configurations tried in order; the first uses the caller's calibration method.

    7-bit weights (``reduce_range``) come first, then U8U8. On x86 CPUs without VNNI (AVX2 only)
    ORT's U8S8 int8 kernels use VPMADDUBSW, whose int16 pair sums saturate; onnxruntime's docs
    name U8U8 or ``reduce_range`` as the fixes. Measured on the trained EfficientNet-Lite0
    (400 test photos, this AVX2 host): U8S8 + reduce_range gives embedding cosine 0.973 and
    87.8% top-1 agreement at 6.8 ms/photo; U8U8 gives 0.994 and 94% but runs at ~85 ms/photo,
    slower than fp32 (11 ms), so the export refuses it on such a CPU (it would be chosen on a
    host where it is fast). The export keeps the first fast try that meets every target, else
    the best fast one.
    """
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}")
    others = [m for m in ("percentile", "entropy", "minmax") if m != method]
    u8u8 = {"activation_type": "QUInt8", "weight_type": "QUInt8"}
    tries = [
        QuantConfig(f"{method}-u8-rr", method, activation_type="QUInt8", reduce_range=True),
        QuantConfig(f"{method}-s8-rr", method, reduce_range=True),
    ]
    tries += [QuantConfig(f"{m}-s8-rr", m, reduce_range=True) for m in others]
    tries += [QuantConfig(f"{method}-u8u8", method, **u8u8)]
    tries += [QuantConfig(f"{m}-u8u8", m, **u8u8) for m in others]
    return tries


class ImageReader(CalibrationDataReader):
    """Feeds uint8 NHWC photos one per ``get_next`` (equal shapes, as the histograms need)."""

    def __init__(self, images: np.ndarray, input_name: str = "image") -> None:
        self.images = images
        self.input_name = input_name
        self.set_range(0, len(images))

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._i, self._end = start_index, min(end_index, len(self.images))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= self._end:
            return None
        x = np.ascontiguousarray(self.images[self._i:self._i + 1])
        self._i += 1
        return {self.input_name: x}


def preprocess(fp32_path: str | Path, out_path: str | Path) -> None:
    """onnxruntime's ``quant_pre_process``: shape inference + optimisation before quantising."""
    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=False)


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def preprocessing_nodes(graph: onnx.GraphProto) -> list[str]:
    """Nodes between the graph input and the first Conv(s), walking forward."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    seen: dict[str, None] = {}
    frontier = [i.name for i in graph.input]
    while frontier:
        t = frontier.pop()
        for n in consumers.get(t, []):
            if n.op_type == "Conv" or n.name in seen:
                continue
            seen[n.name] = None
            frontier.extend(n.output)
    return list(seen)


def _backward(graph: onnx.GraphProto, stop: set[str]) -> list[str]:
    """Nodes reached walking back from the graph outputs, not entering ``stop`` op types."""
    prod = _producers(graph)
    seen: dict[str, None] = {}
    frontier = [o.name for o in graph.output]
    while frontier:
        t = frontier.pop()
        n = prod.get(t)
        if n is None or n.op_type in stop or n.name in seen:
            continue
        seen[n.name] = None
        frontier.extend(n.input)
    return list(seen)


def postprocessing_nodes(graph: onnx.GraphProto) -> list[str]:
    """The L2-normalise after the last Gemm/MatMul of each output (empty for the logits)."""
    return _backward(graph, _LINEAR_OPS)


def head_nodes(graph: onnx.GraphProto) -> list[str]:
    """Both heads: everything after the pooled trunk features."""
    return _backward(graph, _POOL_OPS)


def tail_nodes(graph: onnx.GraphProto, n_convs: int) -> list[str]:
    """Everything from the ``n_convs``-th last Conv on (graph nodes are topologically sorted)."""
    conv_idx = [i for i, n in enumerate(graph.node) if n.op_type == "Conv"]
    if not conv_idx:
        return []
    start = conv_idx[-min(n_convs, len(conv_idx))]
    return [n.name for n in graph.node[start:]]


def nodes_to_exclude(graph: onnx.GraphProto, exclude: str) -> list[str]:
    names = preprocessing_nodes(graph) + postprocessing_nodes(graph)
    if exclude == "heads":
        names += head_nodes(graph)
    elif exclude.startswith("tail"):
        names += tail_nodes(graph, int(exclude[4:] or 1))
    elif exclude != "pre_post":
        raise ValueError(f"unknown exclude scope {exclude!r}")
    return sorted(set(names))


def _stride(n: int, target: int = 25) -> int:
    """Largest divisor of ``n`` not above ``target`` (``CalibStridedMinMax`` needs one)."""
    return max(d for d in range(1, min(n, target) + 1) if n % d == 0)


def quantize_int8(pre_path: str | Path, out_path: str | Path, calib: np.ndarray,
                  cfg: QuantConfig, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Quantise the pre-processed fp32 model with ``cfg``; returns what was done, for the report.

    ``cache_dir``: calibration ranges are cached per (method, activation symmetry), so tries
    that only differ in excluded nodes or activation type do not calibrate again.
    """
    graph = onnx.load(str(pre_path), load_external_data=False).graph
    excluded = nodes_to_exclude(graph, cfg.exclude)
    extra = {"WeightSymmetric": True, "ActivationSymmetric": False,
             # The heads' Gemms give the outputs (logits, pre-norm embedding): keep those
             # float instead of rounding them to 256 levels (int8 inputs and weights still).
             "OpTypesToExcludeOutputQuantization": ["Gemm"],
             "CalibStridedMinMax": _stride(len(calib))}
    if cfg.method == "percentile":
        extra.update({"CalibPercentile": 99.999})
    extra.update(cfg.extra_options)
    cache = None
    if cache_dir is not None:
        sym = "sym" if extra.get("ActivationSymmetric") else "asym"
        cache = Path(cache_dir) / f"calib-{cfg.method}-{sym}-{len(calib)}.json"
    quantize_static(
        str(pre_path), str(out_path), ImageReader(calib),
        quant_format=QuantFormat.QDQ,
        per_channel=cfg.per_channel,
        reduce_range=cfg.reduce_range,
        activation_type=ACT_TYPES[cfg.activation_type],
        weight_type=ACT_TYPES[cfg.weight_type],
        calibrate_method=METHODS[cfg.method],
        nodes_to_exclude=excluded,
        extra_options=extra,
        calibration_cache_path=str(cache) if cache else None,
    )
    q = onnx.load(str(out_path))
    onnx.checker.check_model(q)
    convs = [n for n in graph.node if n.op_type in {"Conv"} | _LINEAR_OPS]
    return {
        "config": cfg.to_dict(),
        "format": "QDQ",
        "weight_type": cfg.weight_type,
        "extra_options": extra,
        "calibration_photos": len(calib),
        "nodes_excluded": excluded,
        "conv_gemm_total": len(convs),
        "conv_gemm_fp32": sum(n.name in set(excluded) for n in convs),
        "qdq_nodes": sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in q.graph.node),
        "stride": extra["CalibStridedMinMax"],
    }


__all__ = ["METHODS", "ImageReader", "QuantConfig", "default_tries", "nodes_to_exclude",
           "preprocess", "quantize_int8"]
