"""mkt.runtime.precision: CPU flags, forcing, and the measured-once-per-CPU-and-bundle cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from mkt.runtime import precision as P  # noqa: E402


def _tiny_model(path: Path, seed: int) -> Path:
    """uint8 NHWC [N,16,16,3] -> Cast, Transpose, Conv, GAP, Flatten -> logits, embedding."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "fc")
    nodes = [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["f"], ["x"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["embedding"]),
             helper.make_node("MatMul", ["embedding", "fc"], ["logits"])]
    g = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 16, 16, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 8])],
        [w, fc])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


@pytest.fixture()
def bundle(tmp_path):
    b = tmp_path / "bundle"
    b.mkdir()
    _tiny_model(b / "model.int8.onnx", 0)
    _tiny_model(b / "model.fp32.onnx", 1)
    return b, {"int8": "model.int8.onnx", "fp32": "model.fp32.onnx"}


@pytest.fixture()
def fake_timer(monkeypatch):
    """Replace the timing with fixed numbers (int8 faster) and count the calls."""
    calls = []

    def timer(path, threads, *a, **k):
        calls.append(Path(path).name)
        return {"b1": 2.0, "b8": 1.0} if "int8" in Path(path).name else {"b1": 4.0, "b8": 3.0}

    monkeypatch.setattr(P, "_time_model", timer)
    return calls


def test_cpu_features_from_cpuinfo(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\n"
                 "flags\t\t: fpu sse avx2 avx512f avx512_vnni\n\nprocessor\t: 1\n"
                 "model name\t: Test CPU 9000\nflags\t\t: fpu\n")
    c = P.cpu_features(f)
    assert c["model"] == "Test CPU 9000" and c["source"] == "cpuinfo"
    assert c["flags"] == {"avx2": True, "avx512f": True, "avx512_vnni": True,
                          "avx_vnni": False, "amx": False}
    assert c["vnni"] is True


def test_cpu_features_degrades_without_cpuinfo(tmp_path):
    c = P.cpu_features(tmp_path / "missing")
    assert c["source"] == "platform" and isinstance(c["model"], str) and c["model"]
    assert not any(c["flags"].values()) and c["vnni"] is False


def test_forcing_and_unknown(bundle, fake_timer, tmp_path):
    b, models = bundle
    assert P.choose_precision(b, models, "fp32", cache_dir=tmp_path / "c")[0] == "fp32"
    choice, ev = P.choose_precision(b, models, "INT8", cache_dir=tmp_path / "c")
    assert choice == "int8" and ev["reason"] == "forced"
    assert fake_timer == [] and not (tmp_path / "c").exists()  # forcing measures nothing
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        P.choose_precision(b, models, "fp16")
    with pytest.raises(ValueError, match="has only fp32"):
        P.choose_precision(b, {"fp32": "model.fp32.onnx"}, "int8")
    assert P.choose_precision(b, {"fp32": "model.fp32.onnx"}, "auto")[0] == "fp32"


def test_auto_measures_once_then_uses_the_cache(bundle, fake_timer, tmp_path):
    b, models = bundle
    cache = tmp_path / "cache"
    choice, ev = P.choose_precision(b, models, cache_dir=cache)
    assert choice == "int8" and ev["cached"] is False
    assert sorted(fake_timer) == ["model.fp32.onnx", "model.int8.onnx"]
    assert ev["ms"]["int8"] == {"b1": 2.0, "b8": 1.0}
    data = json.loads((cache / P.CACHE_FILE).read_text())
    assert list(data) == [ev["key"]]
    choice2, ev2 = P.choose_precision(b, models, cache_dir=cache)
    assert choice2 == "int8" and ev2["cached"] is True and ev2["ms"] == ev["ms"]
    assert len(fake_timer) == 2  # not measured again
    # another model file (a re-exported bundle) is another key: measured again
    _tiny_model(b / "model.int8.onnx", 7)
    _, ev3 = P.choose_precision(b, models, cache_dir=cache)
    assert ev3["cached"] is False and len(fake_timer) == 4 and ev3["key"] != ev["key"]
    assert len(json.loads((cache / P.CACHE_FILE).read_text())) == 2


def test_auto_picks_the_faster(bundle, monkeypatch, tmp_path):
    b, models = bundle
    monkeypatch.setattr(P, "_time_model", lambda p, t, *a, **k: (
        {"b1": 9.0, "b8": 8.0} if "int8" in Path(p).name else {"b1": 5.0, "b8": 4.0}))
    choice, ev = P.choose_precision(b, models, cache_dir=tmp_path)
    assert choice == "fp32" and "fp32" in ev["reason"]


def test_env_cache_dir_and_broken_cache(bundle, fake_timer, tmp_path, monkeypatch):
    b, models = bundle
    monkeypatch.setenv("MKT_CACHE_DIR", str(tmp_path / "envcache"))
    _, ev = P.choose_precision(b, models)
    assert Path(ev["cache_file"]).parent == tmp_path / "envcache"
    assert (tmp_path / "envcache" / P.CACHE_FILE).exists()
    # a cache dir that is a file: still answers, says why it could not cache
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    choice, ev = P.choose_precision(b, models, cache_dir=blocker)
    assert choice == "int8" and ev["cached"] is False and "cache_error" in ev
    # a corrupt cache file is ignored and rewritten
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / P.CACHE_FILE).write_text("{not json")
    _, ev = P.choose_precision(b, models, cache_dir=bad)
    assert ev["cached"] is False
    assert P.choose_precision(b, models, cache_dir=bad)[1]["cached"] is True


def test_real_timing_on_tiny_models(bundle, tmp_path):
    b, models = bundle
    choice, ev = P.choose_precision(b, models, cache_dir=tmp_path, threads=1)
    assert choice in ("int8", "fp32") and ev["cached"] is False
    assert set(ev["ms"]) == {"int8", "fp32"} and all(v["b1"] > 0 and v["b8"] > 0
                                                      for v in ev["ms"].values())
