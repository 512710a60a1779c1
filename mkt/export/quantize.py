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

import hashlib
import json
import tempfile
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
FORMATS = {"QDQ": QuantFormat.QDQ, "QOperator": QuantFormat.QOperator}
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
    #: "QDQ" or "QOperator"
    quant_format: str = "QDQ"
    #: op types kept float everywhere, e.g. ("Add",) for the residual adds
    fp32_ops: tuple[str, ...] = ()
    #: layer kinds kept float: "stem" (first Conv), "depthwise", "pointwise", "heads_gemm"
    fp32_layers: tuple[str, ...] = ()
    #: with ``reduce_range``: give the depthwise Convs full 8-bit weights anyway. Their int8
    #: kernel accumulates in int32 without VPMADDUBSW's int16 pair sums, so the 7-bit
    #: workaround for AVX2 saturation only costs them precision.
    w8_depthwise: bool = False
    #: 7-bit activations (u8 0..127) into the GEMM-kernel layers (1x1 and stem Convs, Gemm)
    #: instead of 7-bit weights: also keeps VPMADDUBSW's pair sums (127 * 127 * 2) in int16,
    #: and 8-bit per-channel weights lose far less than 7-bit ones (see the sensitivity report)
    #: ``True``/"all": every such layer; "relu6": only those fed by a ReLU6 (the project
    #: convs), the others (expand convs, fed by the wide residual stream) keep 8-bit inputs
    #: and take 7-bit weights instead
    a7_gemm_inputs: bool | str = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_recipe(method: str = "minmax") -> QuantConfig:
    """The int8 recipe (benchmarks/results/int8_tries.md, int8_sensitivity_proxy.md).

    U8 activations, S8 per-channel symmetric weights, QDQ, and no int16 saturation on any x86
    CPU, so the int8 kernels compute exactly what the QDQ graph says on AVX2 (VPMADDUBSW),
    AVX512-VNNI and AMX alike:

    * the 1x1 project convs (fed by a ReLU6; the most weight-sensitive layers) keep 8-bit
      weights and take 7-bit inputs: the ReLU6 output is quantised on [0, 6] with 127 steps and
      the ReLU6 is kept as a uint8 Clip to 0..127 (``fold_clips``);
    * the other GEMM-kernel layers (expand convs, conv_head, Gemm heads; fed by the wide
      residual stream, whose 8-bit range matters more) keep 8-bit inputs and take 7-bit weights;
    * depthwise convs (their own kernel, no pair sums): 8-bit weights and inputs;
    * the stem conv stays fp32 (3 input channels: cheap, and it sees the raw image range).
    """
    return QuantConfig(f"{method}-a7proj-stem32", method, activation_type="QUInt8",
                       a7_gemm_inputs="relu6", fp32_layers=("stem",),
                       extra_options={"QDQKeepRemovableActivations": True})


def default_tries(method: str = "minmax") -> list[QuantConfig]:
    """The configurations tried in order; the first is :func:`default_recipe` with the caller's
    calibration method.

    On x86 CPUs without VNNI (AVX2 only) ORT's U8S8 int8 kernels use VPMADDUBSW, whose int16
    pair sums saturate with 8-bit weights and 8-bit inputs. The old fix, 7-bit weights
    everywhere (``reduce_range``), avoids that but costs the most weight-sensitive layers their
    precision: on the ImageNet EfficientNet-Lite0 proxy it gives embedding cosine 0.976 and 80%
    top-1 agreement (1000 classes); the recipe gives 0.993 / ~89% at the same speed. U8U8 has no
    saturation but runs slower than fp32 on AVX2, so the export refuses it on such a CPU (it
    would be chosen on a host where it is fast). The export keeps the first fast try that
    meets every target, else the best fast one.
    """
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose from {', '.join(METHODS)}")
    u8 = {"activation_type": "QUInt8"}
    keep = {"QDQKeepRemovableActivations": True}
    tries = [
        default_recipe(method),
        QuantConfig(f"{method}-a7proj", method, a7_gemm_inputs="relu6", extra_options=keep, **u8),
        QuantConfig(f"{method}-u8-rr", method, reduce_range=True, **u8),
    ]
    tries += [QuantConfig(f"{method}-u8u8", method, activation_type="QUInt8",
                          weight_type="QUInt8")]
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
    """The L2-normalise after the last Gemm/MatMul (or pooling, or Conv) of each output.

    Stopping at pooling and Conv too matters for a model whose embedding is the pooled trunk
    itself (no Gemm): walking back only to a Gemm would keep the whole trunk float."""
    return _backward(graph, _LINEAR_OPS | _POOL_OPS | {"Conv"})


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


def layer_kind(node: onnx.NodeProto, first_conv: str | None = None) -> str:
    """``stem`` | ``depthwise`` | ``pointwise`` | ``conv`` | ``heads_gemm`` | the op type."""
    if node.op_type in _LINEAR_OPS:
        return "heads_gemm"
    if node.op_type != "Conv":
        return node.op_type
    if node.name == first_conv:
        return "stem"
    if next((a.i for a in node.attribute if a.name == "group"), 1) > 1:
        return "depthwise"
    ks = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), None)
    return "pointwise" if ks == [1, 1] else "conv"


def _first_conv(graph: onnx.GraphProto) -> str | None:
    return next((n.name for n in graph.node if n.op_type == "Conv"), None)


def nodes_of_kind(graph: onnx.GraphProto, kinds: tuple[str, ...] | list[str]) -> list[str]:
    first = _first_conv(graph)
    return [n.name for n in graph.node if layer_kind(n, first) in set(kinds)]


def nodes_to_exclude(graph: onnx.GraphProto, exclude: str, fp32_ops: tuple[str, ...] = (),
                     fp32_layers: tuple[str, ...] = ()) -> list[str]:
    names = preprocessing_nodes(graph) + postprocessing_nodes(graph)
    names += [n.name for n in graph.node if n.op_type in set(fp32_ops)]
    names += nodes_of_kind(graph, fp32_layers)
    if exclude == "heads":
        names += head_nodes(graph)
    elif exclude.startswith("tail"):
        names += tail_nodes(graph, int(exclude[4:] or 1))
    elif exclude != "pre_post":
        raise ValueError(f"unknown exclude scope {exclude!r}")
    return sorted(set(names))


def _num(v: Any) -> float:
    """One number from a calibration cache entry (``{"data": [x], ...}`` or a plain number)."""
    if isinstance(v, dict):
        v = v.get("data", v.get("value"))
    return float(np.asarray(v, dtype=np.float64).reshape(-1)[0])


def _a7_overrides(graph: onnx.GraphProto, excluded: list[str], cache: Path,
                  activation_type: str, keep_clips: bool,
                  mode: str = "all") -> dict[str, list[dict[str, Any]]]:
    """Overrides that keep every GEMM-kernel layer (1x1 and stem Convs, Gemm) free of int16
    saturation with 8-bit weights: its input on 7 bits (scale/zero-point from the calibrated
    range). Where that input is a ReLU6 output whose Clip the quantiser drops (the Clip is
    then done by the 8-bit range ending at 6, which a 7-bit range would not do), the layer
    keeps the 8-bit input and gets 7-bit weights instead (``reduce_range`` on that weight)."""
    data = json.loads(Path(cache).read_text())["data"]
    first = _first_conv(graph)
    prod = _producers(graph)
    inits = {i.name for i in graph.initializer}
    skip = set(excluded)
    out: dict[str, list[dict[str, Any]]] = {}
    for n in graph.node:
        kind = layer_kind(n, first)
        if kind not in ("pointwise", "stem", "conv", "heads_gemm") \
                or n.name in skip or n.input[0] not in data:
            continue
        src = prod.get(n.input[0])
        relu6_in = src is not None and src.op_type == "Clip"
        if n.input[1] in inits and (
                (not keep_clips and relu6_in and n.op_type == "Conv")
                or (mode == "relu6" and not relu6_in)):
            trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
            axis = 0 if n.op_type == "Conv" or trans_b else 1
            out[n.input[1]] = [{"axis": axis, "reduce_range": True}]
            continue
        lo = min(_num(data[n.input[0]]["lowest"]), 0.0)
        hi = max(_num(data[n.input[0]]["highest"]), 0.0)
        scale = max(hi - lo, 1e-8) / 127.0
        if activation_type == "QUInt8":
            zp = np.array(int(np.clip(round(-lo / scale), 0, 127)), dtype=np.uint8)
        else:  # symmetric-ish signed 7-bit: -64..63
            zp = np.array(int(np.clip(round(-64 - lo / scale), -64, 63)), dtype=np.int8)
        out[n.input[0]] = [{"scale": np.array(scale, dtype=np.float32), "zero_point": zp}]
    if keep_clips and activation_type == "QUInt8":
        # every kept Clip: its input gets its output's scale/zero-point, so that
        # DQ -> Clip -> Q can become one Clip on the uint8 tensor (:func:`fold_clips`)
        inits_v = {i.name: i for i in graph.initializer}
        for n in graph.node:
            if n.op_type != "Clip" or n.name in skip or n.output[0] not in data \
                    or n.input[0] not in data:
                continue
            if n.output[0] in out:
                q = out[n.output[0]][0]
            else:
                lo = min(_num(data[n.output[0]]["lowest"]), 0.0)
                hi = max(_num(data[n.output[0]]["highest"]), 0.0)
                if len(n.input) > 2 and n.input[2] in inits_v:  # the Clip's own max
                    hi = min(hi, float(onnx.numpy_helper.to_array(inits_v[n.input[2]])))
                sc = max(hi - lo, 1e-8) / 255.0
                q = {"scale": np.array(sc, dtype=np.float32),
                     "zero_point": np.array(int(np.clip(round(-lo / sc), 0, 255)), np.uint8)}
                out[n.output[0]] = [q]
            out[n.input[0]] = [dict(q)]
    return out


def _jsonable(extra: dict[str, Any]) -> dict[str, Any]:
    """extra_options for the report/manifest: plain JSON, TensorQuantOverrides summarised."""
    out: dict[str, Any] = {}
    for k, v in extra.items():
        if k == "TensorQuantOverrides":
            v = v or {}
            out[k] = {"tensors": len(v),
                      "weights_7bit": sum(1 for o in v.values() if o and o[0].get("reduce_range")),
                      "activations_fixed_scale": sum(1 for o in v.values()
                                                     if o and "scale" in o[0])}
        elif isinstance(v, np.generic):
            out[k] = v.item()
        else:
            out[k] = v
    return out


def fold_clips(model: onnx.ModelProto) -> int:
    """``DequantizeLinear -> Clip -> QuantizeLinear`` with one scale/zero-point on both sides:
    the Clip on the uint8 tensor itself (or nothing, when it clips nothing the type does not).
    onnxruntime then fuses the Convs on both sides into QLinearConv and the Clip is a byte
    clamp, instead of a float round trip. Returns how many were folded."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    cons: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)

    def val(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(inits[name]) if name in inits else None

    drop: set[int] = set()
    rename: dict[str, str] = {}
    new_inits = []
    folded = 0
    for clip in g.node:
        if clip.op_type != "Clip" or len(clip.input) < 3:
            continue
        dq = prod.get(clip.input[0])
        qs = cons.get(clip.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(qs) != 1 \
                or qs[0].op_type != "QuantizeLinear" or len(cons.get(dq.output[0], [])) != 1:
            continue
        q = qs[0]
        s1, z1, s2, z2 = (val(dq.input[1]), val(dq.input[2]) if len(dq.input) > 2 else None,
                          val(q.input[1]), val(q.input[2]) if len(q.input) > 2 else None)
        lo, hi = val(clip.input[1]), val(clip.input[2])
        if any(v is None for v in (s1, z1, s2, z2, lo, hi)) or z1.dtype != np.uint8 \
                or s1.size != 1 or not np.allclose(s1, s2, rtol=1e-6, atol=0) \
                or not np.array_equal(z1, z2):
            continue
        qlo = int(np.clip(np.round(float(lo) / float(s1)) + int(z1), 0, 255))
        qhi = int(np.clip(np.round(float(hi) / float(s1)) + int(z1), 0, 255))
        drop.update({id(dq), id(q)})
        folded += 1
        if qlo <= 0 and qhi >= 255:
            drop.add(id(clip))
            rename[q.output[0]] = dq.input[0]
            continue
        lo_n, hi_n = clip.name + "_u8min", clip.name + "_u8max"
        new_inits += [numpy_helper.from_array(np.array(qlo, np.uint8), lo_n),
                      numpy_helper.from_array(np.array(qhi, np.uint8), hi_n)]
        clip.input[0], clip.input[1], clip.input[2] = dq.input[0], lo_n, hi_n
        clip.output[0] = q.output[0]
    if not folded:
        return 0
    keep = [n for n in g.node if id(n) not in drop]
    for n in keep:
        for i, x in enumerate(n.input):
            while x in rename:
                x = rename[x]
            n.input[i] = x
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(new_inits)
    used = {x for n in g.node for x in n.input}
    unused = [i for i in g.initializer if i.name not in used]
    for i in unused:
        g.initializer.remove(i)
    return folded


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
    excluded = nodes_to_exclude(graph, cfg.exclude, tuple(cfg.fp32_ops), tuple(cfg.fp32_layers))
    extra = {"WeightSymmetric": True, "ActivationSymmetric": False,
             # The heads' Gemms give the outputs (logits, pre-norm embedding): keep those
             # float instead of rounding them to 256 levels (int8 inputs and weights still).
             "OpTypesToExcludeOutputQuantization": ["Gemm"],
             "CalibStridedMinMax": _stride(len(calib))}
    if cfg.method == "percentile":
        extra.update({"CalibPercentile": 99.999})
    if cfg.w8_depthwise and cfg.reduce_range:
        inits = {i.name for i in graph.initializer}
        over = dict(extra.get("TensorQuantOverrides") or {})
        for n in graph.node:
            if layer_kind(n) == "depthwise" and n.input[1] in inits and n.name not in excluded:
                over.setdefault(n.input[1], [{"axis": 0, "reduce_range": False}])
        extra["TensorQuantOverrides"] = over
    extra.update(cfg.extra_options)
    cache = None
    if cache_dir is not None:
        # ranges depend on the model, the method and its options, and the photos
        key = hashlib.sha256(Path(pre_path).read_bytes()[:1 << 22]).hexdigest()[:10]
        key += hashlib.sha256(np.ascontiguousarray(calib[:, ::7, ::7]).tobytes()).hexdigest()[:6]
        opts = {k: v for k, v in sorted(extra.items()) if k.startswith("Calib")
                or k == "ActivationSymmetric"}
        key += hashlib.sha256(repr(opts).encode()).hexdigest()[:6]
        cache = Path(cache_dir) / f"calib-{cfg.method}-{key}-{len(calib)}.json"
        cache.parent.mkdir(parents=True, exist_ok=True)
    if cfg.a7_gemm_inputs:
        # onnxruntime only takes reduce_range for weights, so the 7-bit activations get
        # explicit scale/zero-point overrides computed from the calibrated ranges (one
        # calibration pass first, through the same range cache)
        if cache is None:
            cache = Path(tempfile.mkdtemp(prefix="mkt-calib-")) / "calib.json"
        if not cache.exists():
            quantize_static(str(pre_path), str(out_path), ImageReader(calib),
                            quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel,
                            activation_type=ACT_TYPES[cfg.activation_type],
                            weight_type=ACT_TYPES[cfg.weight_type],
                            calibrate_method=METHODS[cfg.method], nodes_to_exclude=excluded,
                            extra_options=extra, calibration_cache_path=str(cache))
        over = dict(extra.get("TensorQuantOverrides") or {})
        keep_clips = bool(extra.get("QDQKeepRemovableActivations"))
        mode = cfg.a7_gemm_inputs if isinstance(cfg.a7_gemm_inputs, str) else "all"
        over.update(_a7_overrides(graph, excluded, cache, cfg.activation_type, keep_clips,
                                  mode))
        extra["TensorQuantOverrides"] = over
    quantize_static(
        str(pre_path), str(out_path), ImageReader(calib),
        quant_format=FORMATS[cfg.quant_format],
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
    folded = fold_clips(q) if extra.get("QDQKeepRemovableActivations") else 0
    if folded:
        onnx.save(q, str(out_path))
    onnx.checker.check_model(q)
    convs = [n for n in graph.node if n.op_type in {"Conv"} | _LINEAR_OPS]
    return {
        "config": cfg.to_dict(),
        "format": cfg.quant_format,
        "weight_type": cfg.weight_type,
        "extra_options": _jsonable(extra),
        "calibration_photos": len(calib),
        "nodes_excluded": excluded,
        "conv_gemm_total": len(convs),
        "conv_gemm_fp32": sum(n.name in set(excluded) for n in convs),
        "qdq_nodes": sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in q.graph.node),
        "stride": extra["CalibStridedMinMax"],
        "clips_folded": folded,
    }


__all__ = ["METHODS", "ImageReader", "QuantConfig", "default_recipe", "default_tries",
           "fold_clips", "layer_kind", "nodes_to_exclude", "preprocess", "quantize_int8"]
