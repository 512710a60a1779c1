"""Build a tiny random-weight bundle that follows the docs/design.md I/O contract.

For tests and development while no trained bundle exists. The graph is written directly with
``onnx.helper`` (no torch needed): input ``image`` uint8 [N,S,S,3] -> /255, normalise,
NHWC->NCHW -> two strided convs -> global average pool -> ``logits`` [N,13] and ``embedding``
[N,D] (L2-normalised). Dynamic batch. Run as a script to write a dev bundle:

    python tests/helpers_bundle.py /tmp/dev_bundle
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from mkt.runtime.bundle import write_manifest
from mkt.runtime.preprocess import Preprocess

LABELS = [
    "Appliances",
    "Baby & Kids Stuff",
    "Clothes, Footwear & Accessories",
    "Computers & Software",
    "DIY Tools & Materials",
    "Health & Beauty",
    "Home & Garden",
    "Music, Films, Books & Games",
    "Office Furniture & Equipment",
    "Other Goods",
    "Phones, Mobile Phones & Telecoms",
    "Sports, Leisure & Travel",
    "Video Games & Consoles",
]
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def build_model_bytes(size: int = 224, dim: int = 256, seed: int = 0) -> tuple[bytes, str]:
    """Return (serialised ONNX model, model_id)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    c1, c2, n = 8, 16, len(LABELS)
    w = {
        "scale": np.full((1, 1, 1, 3), 1 / 255.0, np.float32),
        "mean": np.array(MEAN, np.float32).reshape(1, 1, 1, 3),
        "std": np.array(STD, np.float32).reshape(1, 1, 1, 3),
        "w1": (rng.standard_normal((c1, 3, 5, 5)) * 0.2).astype(np.float32),
        "b1": (rng.standard_normal(c1) * 0.1).astype(np.float32),
        "w2": (rng.standard_normal((c2, c1, 3, 3)) * 0.2).astype(np.float32),
        "b2": (rng.standard_normal(c2) * 0.1).astype(np.float32),
        "wl": (rng.standard_normal((c2, n)) * 0.5).astype(np.float32),
        "bl": (rng.standard_normal(n) * 0.1).astype(np.float32),
        "we": rng.standard_normal((c2, dim)).astype(np.float32),
        "be": (rng.standard_normal(dim) * 0.1).astype(np.float32),
    }
    nodes = [
        helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xf", "scale"], ["x01"]),
        helper.make_node("Sub", ["x01", "mean"], ["xc"]),
        helper.make_node("Div", ["xc", "std"], ["xn"]),
        helper.make_node("Transpose", ["xn"], ["x"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x", "w1", "b1"], ["h1"], strides=[4, 4], pads=[2, 2, 2, 2]),
        helper.make_node("Relu", ["h1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["h2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "wl", "bl"], ["logits"]),
        helper.make_node("Gemm", ["f", "we", "be"], ["e"]),
        helper.make_node("LpNormalization", ["e"], ["embedding"], axis=1, p=2),
    ]
    graph = helper.make_graph(
        nodes,
        "mkt_dev_tiny",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", size, size, 3])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim]),
        ],
        initializer=[numpy_helper.from_array(v, k) for k, v in w.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    h = hashlib.sha256()
    for k in sorted(w):
        h.update(w[k].tobytes())
    return model.SerializeToString(), h.hexdigest()[:16]


def build_dev_bundle(out: str | Path, *, size: int = 224, dim: int = 256, seed: int = 0) -> Path:
    """Write a complete bundle dir (model.fp32.onnx + manifest.json) to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data, model_id = build_model_bytes(size, dim, seed)
    (out / "model.fp32.onnx").write_bytes(data)
    manifest = {
        "model_id": model_id,
        "arch": "dev_tiny_random",
        **Preprocess(size=size, mean=tuple(MEAN), std=tuple(STD)).to_manifest(),
        "labels": LABELS,
        "embedding_dim": dim,
        "outputs": {"logits": "logits", "embedding": "embedding"},
        "models": {"fp32": "model.fp32.onnx"},
        "default": "fp32",
        "versions": {"mkt": "dev"},
        "training": {"note": "random weights, for tests only", "metrics": {}},
        "export": {"command": "tests/helpers_bundle.py"},
        "parity": {},
    }
    write_manifest(out, manifest)
    return out


if __name__ == "__main__":
    print(build_dev_bundle(sys.argv[1] if len(sys.argv) > 1 else "/tmp/dev_bundle"))
