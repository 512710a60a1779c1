"""The int8 recipe on a small real ONNX model, and parity catching a badly calibrated int8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from mkt.export.onnx_export import UInt8Model, export_fp32  # noqa: E402
from mkt.export.quantize import (  # noqa: E402
    QuantConfig,
    default_recipe,
    layer_kind,
    nodes_to_exclude,
    preprocess,
    quantize_int8,
)
from mkt.runtime.parity import bundle_parity, run_model  # noqa: E402

SIZE = 48


class Block(nn.Module):
    """MBConv without SE, like EfficientNet-Lite: 1x1 expand, 3x3 depthwise, 1x1 project, +x."""

    def __init__(self, c: int, e: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c * e, 1), nn.ReLU6(),
            nn.Conv2d(c * e, c * e, 3, padding=1, groups=c * e), nn.ReLU6(),
            nn.Conv2d(c * e, c, 1))

    def forward(self, x):
        return x + self.body(x)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU6(), Block(16), Block(16),
                                   nn.Conv2d(16, 64, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1),
                                   nn.Flatten())
        self.cls = nn.Linear(64, 10)
        self.emb = nn.Linear(64, 32)

    def forward(self, x):
        f = self.trunk(x)
        return self.cls(f), nn.functional.normalize(self.emb(f), dim=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, fixture_photos):
    """(pre-processed fp32 model, calibration uint8, parity photo paths, loader)."""
    d = tmp_path_factory.mktemp("tinyq")
    torch.manual_seed(0)
    net = Tiny().eval()
    with torch.no_grad():  # BN-folded-like statistics: give the logits a usable spread
        net.cls.weight.mul_(4.0)
    fp32 = d / "tiny.fp32.onnx"
    export_fp32(UInt8Model(net, [0.5] * 3, [0.5] * 3).eval(), fp32, SIZE)
    pre = d / "tiny.pre.onnx"
    preprocess(fp32, pre)
    # real photos, several crops each: 26 photos -> calibration from the first 8, parity the rest
    pics = []
    for p in fixture_photos:
        with Image.open(p) as im:
            im = im.convert("RGB")
            for box in ((0, 0, 224, 224), (0, 0, 150, 150), (74, 74, 224, 224),
                        (37, 0, 187, 150)):
                pics.append(np.asarray(im.crop(box).resize((SIZE, SIZE), Image.BILINEAR)))
    pics = np.stack(pics).astype(np.uint8)
    calib, par = pics[:32], pics[32:]
    pdir = d / "photos"
    pdir.mkdir()
    paths = []
    for i, a in enumerate(par):
        p = pdir / f"{i:03d}.png"
        Image.fromarray(a).save(p)
        paths.append(p)

    def load(p: Path) -> np.ndarray:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)

    return fp32, pre, calib, paths, load


def test_layer_kinds_and_fp32_scopes(tiny):
    _, pre, *_ = tiny
    g = onnx.load(str(pre)).graph
    first = next(n.name for n in g.node if n.op_type == "Conv")
    kinds = [layer_kind(n, first) for n in g.node if n.op_type in ("Conv", "Gemm")]
    assert kinds.count("stem") == 1 and kinds.count("depthwise") == 2
    assert kinds.count("pointwise") == 5 and kinds.count("heads_gemm") == 2
    dw = nodes_to_exclude(g, "pre_post", fp32_layers=("depthwise",))
    base = nodes_to_exclude(g, "pre_post")
    assert len(dw) == len(base) + 2


def test_recipe_keeps_agreement(tiny, tmp_path):
    fp32, pre, calib, paths, load = tiny
    q = tmp_path / "tiny.int8.onnx"
    info = quantize_int8(pre, q, calib, default_recipe(), cache_dir=tmp_path)
    assert info["qdq_nodes"] > 20  # it really is quantised
    r = bundle_parity({"int8": q, "fp32": fp32}, paths, load, threads=1)
    assert r["n"] == len(paths) and not r["failed"]
    assert r["top1_agreement"] >= 0.95, r
    assert r["cosine_mean"] >= 0.99 and r["cosine_p1"] >= 0.95, r


def test_parity_detects_badly_calibrated_int8(tiny, tmp_path):
    """Calibration photos scaled wrongly (contrast squashed 16x around mid-grey, as a loader
    that scales twice would give) make ranges far too narrow: real photos clip. Parity must see
    it; the same recipe calibrated on the real photos must pass."""
    fp32, pre, calib, paths, load = tiny
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    cfg = default_recipe()
    quantize_int8(pre, good, calib, cfg)
    squashed = (128 + (calib.astype(np.int16) - 128) // 16).astype(np.uint8)
    quantize_int8(pre, bad, squashed, cfg)
    rg = bundle_parity({"int8": good, "fp32": fp32}, paths, load, threads=1)
    rb = bundle_parity({"int8": bad, "fp32": fp32}, paths, load, threads=1)
    assert rg["meets_targets"] and rg["top1_agreement"] >= 0.98, rg
    assert not rb["meets_targets"], rb
    assert rb["top1_agreement"] < rg["top1_agreement"] - 0.05
    assert rb["cosine_p1"] < rg["cosine_p1"] - 0.02
    assert rb["logits_max_abs_diff"] > 5 * rg["logits_max_abs_diff"]


def test_bundle_parity_reports_unreadable_photos_and_missing_model(tiny, tmp_path):
    fp32, _pre, _calib, paths, load = tiny
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg")
    r = bundle_parity({"int8": fp32, "fp32": fp32}, [*paths[:4], junk], load, threads=1)
    assert r["n"] == 4 and [f["path"] for f in r["failed"]] == [str(junk)]
    assert r["top1_agreement"] == 1.0 and r["cosine_min"] > 0.9999
    with pytest.raises(ValueError, match="int8"):
        bundle_parity({"fp32": fp32}, paths, load)
    (lg, em), _ = run_model(fp32, np.zeros((2, SIZE, SIZE, 3), np.uint8), threads=1)
    assert lg.shape == (2, 10) and em.shape == (2, 32)


def test_quant_config_new_fields_roundtrip():
    c = QuantConfig("x", fp32_ops=("Add",), fp32_layers=("stem",), w8_depthwise=True)
    d = c.to_dict()
    assert d["fp32_ops"] == ("Add",) and d["w8_depthwise"] and d["quant_format"] == "QDQ"


def _bundle(d: Path, fp32: Path, int8: Path) -> Path:
    import shutil

    from mkt.runtime.bundle import write_manifest
    from mkt.runtime.preprocess import Preprocess

    d.mkdir()
    shutil.copyfile(fp32, d / "model.fp32.onnx")
    shutil.copyfile(int8, d / "model.int8.onnx")
    write_manifest(d, {"model_id": "0123456789abcdef", "arch": "tiny",
                       **Preprocess(size=SIZE, mean=(0.5,) * 3, std=(0.5,) * 3).to_manifest(),
                       "labels": [f"c{i}" for i in range(13)], "embedding_dim": 16,
                       "outputs": {"logits": "logits", "embedding": "embedding"},
                       "models": {"int8": "model.int8.onnx", "fp32": "model.fp32.onnx"},
                       "default": "int8"})
    return d


def test_bench_parity_cli_fails_on_a_badly_calibrated_bundle(tiny, tmp_path):
    """`mkt bench --parity`: exit 0 and the numbers for a well calibrated int8 model, exit 1
    when the bundle's int8 model is replaced by a badly calibrated one."""
    import json

    from typer.testing import CliRunner

    from mkt.cli import app

    fp32, pre, calib, paths, _ = tiny
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    quantize_int8(pre, good, calib, default_recipe())
    quantize_int8(pre, bad, (128 + (calib.astype(np.int16) - 128) // 16).astype(np.uint8),
                  default_recipe())
    photos = str(paths[0].parent)
    out = {}
    for name, q in (("good", good), ("bad", bad)):
        b = _bundle(tmp_path / name, fp32, q)
        res = CliRunner().invoke(app, ["bench", "--parity", "--bundle", str(b), "--photos",
                                       photos, "--json", "--threads", "1"])
        assert "Traceback" not in res.output
        out[name] = (res.exit_code, json.loads(res.stdout))
    assert out["good"][0] == 0 and out["good"][1]["meets_targets"], out["good"]
    assert out["bad"][0] == 1 and not out["bad"][1]["meets_targets"]
    assert out["good"][1]["n"] == len(paths) and out["good"][1]["cpu"]["flags"]
