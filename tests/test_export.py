"""mkt export: checkpoint -> bundle (fp32 + int8 ONNX, parity.json, manifest.json)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from PIL import Image  # noqa: E402

from mkt.export import export_bundle  # noqa: E402
from mkt.export.onnx_export import torch_outputs, wrap_checkpoint  # noqa: E402
from mkt.export.parity import load_images  # noqa: E402
from mkt.export.quantize import QuantConfig  # noqa: E402
from mkt.runtime.bundle import sha256_file, verify_bundle  # noqa: E402
from mkt.runtime.errors import BundleError as BundleVerifyError  # noqa: E402
from mkt.training.checkpoint import model_id_from_state_dict  # noqa: E402
from mkt.training.models import build_model, get_arch  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "photos"
LABELS = [f"cat{i:02d}" for i in range(13)]
MANIFEST_KEYS = {"schema_version", "model_id", "arch", "input", "preprocessing", "labels",
                 "embedding_dim", "outputs", "models", "default", "versions", "training",
                 "export", "parity", "files"}


def _quiet(*_: object) -> None:
    pass


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """The committed fixture photos if present, else 24 generated JPEGs of varied sizes."""
    if FIXTURES.is_dir() and len(list(FIXTURES.glob("*.jpg"))) >= 8:
        return FIXTURES
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(24):
        h, w = int(rng.integers(48, 160)), int(rng.integers(48, 160))
        yy, xx = np.mgrid[0:h, 0:w]
        base = rng.uniform(0, 255, 3)
        img = base + 80 * np.sin(xx[..., None] / rng.uniform(3, 20) + rng.uniform(0, 6, 3))
        img += 60 * np.cos(yy[..., None] / rng.uniform(3, 20))
        img += rng.normal(0, 10, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"p{i:02d}.jpg")
    return d


def make_checkpoint(path: Path, arch: str, embed_dim: int = 32, seed: int = 0) -> dict:
    spec = get_arch(arch)
    torch.manual_seed(seed)
    model = build_model(arch, len(LABELS), embed_dim, pretrained=None)
    ckpt = {
        "format": "mkt-checkpoint/1", "arch": arch, "num_classes": len(LABELS),
        "labels": LABELS, "embed_dim": embed_dim, "input_size": spec.input_size,
        "mean": list(spec.mean), "std": list(spec.std), "state_dict": model.state_dict(),
        "config": {"epochs": 1, "lr": 0.001}, "metrics": {"val_acc": 0.5},
        "data": {"clean_dir": "/nowhere", "split_sha256": "ab" * 32, "split_seed": 0},
        "command": "mkt train --arch " + arch, "epoch": 1, "best_metric": 0.5,
    }
    torch.save(ckpt, path)
    return ckpt


@pytest.fixture(scope="module")
def small(tmp_path_factory, photos):
    """A random-init small_cnn checkpoint exported once; (ckpt, path, bundle dir, manifest)."""
    d = tmp_path_factory.mktemp("small")
    ckpt = make_checkpoint(d / "small.pt", "small_cnn")
    manifest = export_bundle(d / "small.pt", d / "bundle", photos=photos, calib=16, seed=0,
                             command="mkt export small.pt", log=_quiet)
    return ckpt, d / "small.pt", d / "bundle", manifest


def _images(photos: Path, size: int) -> np.ndarray:
    return load_images(sorted(photos.glob("*.jpg")), size)[1]


def _run(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return tuple(sess.run(["logits", "embedding"], {"image": x}))


def test_bundle_files_and_checker(small):
    _, _, bdir, _ = small
    assert sorted(p.name for p in bdir.iterdir()) == [
        "manifest.json", "model.fp32.onnx", "model.int8.onnx", "parity.json"]
    for name in ("model.fp32.onnx", "model.int8.onnx"):
        m = onnx.load(str(bdir / name))
        onnx.checker.check_model(m, full_check=True)
        (inp,) = m.graph.input
        assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
        dims = inp.type.tensor_type.shape.dim
        assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [64, 64, 3]
        assert [o.name for o in m.graph.output] == ["logits", "embedding", "text_embedding"]
    # no temp dir left next to the bundle
    assert not [p for p in bdir.parent.iterdir() if p.name.startswith(".bundle")]


def test_fp32_onnx_matches_torch_and_training_preprocessing(small, photos):
    ckpt, _, bdir, _ = small
    x = _images(photos, 64)
    logits, emb = _run(bdir / "model.fp32.onnx", x)
    tl, te, *_ = torch_outputs(wrap_checkpoint(ckpt), x)
    assert np.abs(logits - tl).max() < 1e-4
    assert np.abs(emb - te).max() < 1e-4
    # the in-graph preprocessing equals the training eval transform (ToTensor + Normalize)
    from mkt.training.checkpoint import preprocess_of
    from mkt.training.transforms import eval_transform

    tf = eval_transform(preprocess_of(ckpt))
    batch = torch.stack([tf(p) for p in sorted(photos.glob("*.jpg"))])
    model = wrap_checkpoint(ckpt).model
    with torch.no_grad():
        rl, *_ = model(batch)
    assert np.abs(logits - rl.numpy()).max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb.shape == (len(x), 32) and logits.shape == (len(x), 13)


def test_int8_close_to_fp32_and_dynamic_batch(small, photos):
    _, _, bdir, manifest = small
    x = _images(photos, 64)
    fl, fe = _run(bdir / "model.fp32.onnx", x)
    ql, qe = _run(bdir / "model.int8.onnx", x)
    assert (fl.argmax(1) == ql.argmax(1)).mean() >= 0.75
    cos = (fe * qe).sum(1) / np.linalg.norm(fe, axis=1) / np.linalg.norm(qe, axis=1)
    assert cos.mean() >= 0.98
    np.testing.assert_allclose(np.linalg.norm(qe, axis=1), 1.0, atol=1e-4)  # norm stays fp32
    # batch 1 and batch N agree (dynamic batch axis)
    one = np.concatenate([_run(bdir / "model.int8.onnx", x[i:i + 1])[0] for i in range(3)])
    np.testing.assert_allclose(one, ql[:3], atol=1e-4)
    # the int8 graph really is quantised: QDQ nodes, and the preprocessing is still float
    g = onnx.load(str(bdir / "model.int8.onnx")).graph
    assert sum(n.op_type == "DequantizeLinear" for n in g.node) > 5
    assert g.node[0].op_type == "Cast"
    # what the report says matches what we measure
    p = manifest["parity"]
    assert abs(p["top1_agreement"] - (fl.argmax(1) == ql.argmax(1)).mean()) < 1e-6
    assert abs(p["cosine_mean"] - cos.mean()) < 1e-4


def test_manifest_contract(small):
    ckpt, _, bdir, manifest = small
    m = json.loads((bdir / "manifest.json").read_text())
    assert m == manifest
    assert MANIFEST_KEYS <= set(m)
    assert m["schema_version"] == 1
    assert m["model_id"] == model_id_from_state_dict(ckpt["state_dict"])
    assert len(m["model_id"]) == 16
    assert m["input"] == {"name": "image", "dtype": "uint8", "layout": "NHWC", "size": 64,
                          "resize": "letterbox", "pad": [0, 0, 0], "interpolation": "bilinear",
                          "jpeg_draft": True}
    assert m["preprocessing"] == {"mean": list(ckpt["mean"]), "std": list(ckpt["std"]),
                                  "in_graph": True}
    assert m["labels"] == LABELS and m["embedding_dim"] == 32 and m["arch"] == "small_cnn"
    assert m["models"] == {"int8": "model.int8.onnx", "fp32": "model.fp32.onnx"}
    assert m["default"] == "int8"
    assert {"torch", "onnx", "onnxruntime", "mkt"} <= set(m["versions"])
    assert m["training"]["data"] == ckpt["data"]
    assert m["training"]["command"] == ckpt["command"]
    assert m["training"]["metrics"] == ckpt["metrics"]
    assert m["training"]["config"] == ckpt["config"]
    assert m["export"]["command"] == "mkt export small.pt"
    cal = m["export"]["calibration"]
    assert cal["photos"] == 16 and cal["format"] == "QDQ" and cal["per_channel"] is True
    assert m["parity"]["torch_vs_onnx_fp32_logits_max_abs"] < 1e-4
    assert set(m["files"]) == {"model.int8.onnx", "model.fp32.onnx", "parity.json"}
    for name, digest in m["files"].items():
        assert sha256_file(bdir / name) == digest
    parity = json.loads((bdir / "parity.json").read_text())
    assert parity["chosen"] == m["export"]["calibration"]["try"]
    assert parity["tries"] and "metrics" in parity["tries"][0]
    assert verify_bundle(bdir)["model_id"] == m["model_id"]


def test_model_id_tracks_weights(small):
    ckpt = small[0]
    sd = {k: v.clone() for k, v in ckpt["state_dict"].items()}
    assert model_id_from_state_dict(sd) == model_id_from_state_dict(ckpt["state_dict"])
    key = next(k for k in sd if k.endswith("weight"))
    sd[key].view(-1)[0] += 1e-3
    assert model_id_from_state_dict(sd) != model_id_from_state_dict(ckpt["state_dict"])


@pytest.mark.parametrize("name", ["model.int8.onnx", "parity.json", "model.fp32.onnx"])
def test_one_altered_byte_fails_verification(small, tmp_path, name):
    bdir = tmp_path / "b"
    shutil.copytree(small[2], bdir)
    verify_bundle(bdir)
    p = bdir / name
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(BundleVerifyError, match="sha256 mismatch"):
        verify_bundle(bdir)
    try:  # the runtime's own loader refuses it too
        from mkt.runtime.bundle import load_bundle
        from mkt.runtime.errors import BundleError
    except ImportError:  # pragma: no cover - runtime not there yet
        return
    with pytest.raises(BundleError):
        load_bundle(bdir)


def test_verify_rejects_missing_and_unlisted_files(small, tmp_path):
    bdir = tmp_path / "b"
    shutil.copytree(small[2], bdir)
    (bdir / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleVerifyError, match="not in the manifest"):
        verify_bundle(bdir)
    (bdir / "extra.bin").unlink()
    (bdir / "model.fp32.onnx").unlink()
    with pytest.raises(BundleVerifyError, match="missing"):
        verify_bundle(bdir)


def test_failed_export_leaves_no_bundle(small, photos, tmp_path):
    _, ckpt_path, _, _ = small
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="no readable photos"):
        export_bundle(ckpt_path, out, photos=empty, log=_quiet)
    assert not out.exists()
    # a failure after work started (no config can quantise) leaves nothing behind either
    bad = [QuantConfig("bad", "minmax", exclude="nonsense")]
    with pytest.raises(RuntimeError, match="every int8 quantisation try failed"):
        export_bundle(ckpt_path, out, photos=photos, calib=4, tries=bad, log=_quiet)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_refuses_to_replace_a_non_bundle_dir(small, photos, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        export_bundle(small[1], out, photos=photos, calib=4, log=_quiet)
    assert (out / "notes.txt").read_text() == "keep me"


def test_cli_int8_only_replaces_existing_bundle(small, photos, tmp_path):
    import typer
    from typer.testing import CliRunner

    from mkt.cli.export import export_command

    app = typer.Typer()
    app.command("export")(export_command)
    app.command("noop")(lambda: None)  # two commands: typer keeps the subcommand name
    out = tmp_path / "bundle"
    shutil.copytree(small[2], out)  # an existing bundle is replaced atomically
    res = CliRunner().invoke(app, ["export", str(small[1]), "--out", str(out), "--photos",
                                   str(photos), "--int8-only", "--calib", "8",
                                   "--calibrate-method", "percentile", "--parity-limit", "10"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.int8.onnx",
                                                     "parity.json"]
    m = verify_bundle(out)
    assert m["models"] == {"int8": "model.int8.onnx"}
    assert m["parity"]["n"] == 10
    assert m["export"]["calibration"]["photos"] == 8
    parity = json.loads((out / "parity.json").read_text())
    assert parity["tries"][0]["config"]["method"] == "percentile"
    res = CliRunner().invoke(app, ["export", str(small[1]), "--out", str(out), "--photos",
                                   str(photos), "--calibrate-method", "kl"])
    assert res.exit_code != 0


def test_resnet50_random_init_end_to_end(tmp_path, photos):
    ckpt = make_checkpoint(tmp_path / "r50.pt", "resnet50", embed_dim=64)
    tries = [QuantConfig("minmax-s8", "minmax")]
    m = export_bundle(tmp_path / "r50.pt", tmp_path / "b", photos=photos, calib=8,
                      parity_limit=8, tries=tries, log=_quiet)
    verify_bundle(tmp_path / "b")
    parity = json.loads((tmp_path / "b" / "parity.json").read_text())
    # random-init ResNet-50 logits can be large: hold fp32 parity relative to their scale
    scale = max(1.0, parity["fp32"]["logits_max_abs"])
    assert m["parity"]["torch_vs_onnx_fp32_logits_max_abs"] < 1e-4 * scale
    assert m["arch"] == "resnet50" and m["input"]["size"] == 224
    assert m["model_id"] == model_id_from_state_dict(ckpt["state_dict"])
    x = _images(photos, 224)[:2]
    logits, emb = _run(tmp_path / "b" / "model.int8.onnx", x)
    assert logits.shape == (2, 13) and emb.shape == (2, 64)
    assert np.isfinite(logits).all() and np.isfinite(emb).all()


def test_export_from_cleaned_data_dir(photos, tmp_path):
    """Default data: the checkpoint's data.clean_dir; calib from train, parity on test split."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    files = sorted(photos.glob("*.jpg"))
    rows, split = [], []
    for i, f in enumerate(files):
        shutil.copyfile(f, src / "images" / f"ph{i:03d}.jpg")
        rows.append({"photo_id": f"ph{i:03d}", "product_id": f"pr{i // 2:03d}",
                     "category": LABELS[i % 5], "sha256": f"{i:064x}"})
    for j in range((len(files) + 1) // 2):
        split.append({"product_id": f"pr{j:03d}", "split": "test" if j % 2 else "train"})
    data = tmp_path / "clean"
    data.mkdir()
    pd.DataFrame(rows).to_parquet(data / "photos.parquet")
    pd.DataFrame(split).to_csv(data / "split.csv", index=False)
    (data / "source.json").write_text(json.dumps({"src": str(src)}))
    (data / "labels.json").write_text(json.dumps({"labels": LABELS}))
    ckpt = make_checkpoint(tmp_path / "c.pt", "small_cnn")
    ckpt["data"]["clean_dir"] = str(data)
    torch.save(ckpt, tmp_path / "c.pt")
    m = export_bundle(tmp_path / "c.pt", tmp_path / "b", calib=300, seed=1, log=_quiet)
    test_ids = {r["photo_id"] for r in rows
                if split[int(r["product_id"][2:])]["split"] == "test"}
    parity = json.loads((tmp_path / "b" / "parity.json").read_text())
    assert m["parity"]["n"] == len(test_ids)
    assert m["export"]["calibration"]["photos"] == len(rows) - len(test_ids)  # all of train
    assert str(data) in m["export"]["calibration"]["source"]
    for key in ("acc_fp32", "acc_int8", "acc_drop_pt"):
        assert key in m["parity"]
    assert parity["fp32"]["acc"] == pytest.approx(m["parity"]["acc_fp32"])
    # a category the checkpoint does not know is refused
    bad = pd.DataFrame(rows)
    bad.loc[0, "category"] = "Nope"
    bad.to_parquet(data / "photos.parquet")
    with pytest.raises(ValueError, match="not in the checkpoint's labels"):
        export_bundle(tmp_path / "c.pt", tmp_path / "b2", calib=4, log=_quiet)
