"""One preprocessing contract: training, calibration/parity and the runtime see identical pixels.

Awkward photos (EXIF-rotated, RGBA, 16-bit grey, a big JPEG that decodes in draft mode) go
through every path that turns a file into model input; each must give the runtime's array,
bit for bit. Before the contract existed, training used a plain ``convert("RGB")`` and would
have trained on sideways photos and alpha garbage the runtime never produces.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mkt.runtime.bundle import load_bundle
from mkt.runtime.errors import BundleError
from mkt.runtime.preprocess import Preprocess

SIZE = 224


@pytest.fixture(scope="module")
def awkward(tmp_path_factory, fixture_photos):
    d = tmp_path_factory.mktemp("awkward")
    base = Image.open(fixture_photos[0]).convert("RGB").resize((300, 200), Image.BICUBIC)
    out = {}
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    out["exif"] = d / "exif.jpg"
    base.save(out["exif"], quality=95, exif=exif.tobytes())
    rgba = base.convert("RGBA")
    a = np.asarray(rgba).copy()
    a[:, : a.shape[1] // 3, 3] = 0  # a transparent band
    out["rgba"] = d / "rgba.png"
    Image.fromarray(a, "RGBA").save(out["rgba"])
    g16 = (np.asarray(base.convert("L"), np.uint16) * 257).astype(np.uint16)
    out["g16"] = d / "g16.png"
    Image.fromarray(g16).save(out["g16"])
    out["big"] = d / "big.jpg"
    base.resize((2400, 1600), Image.BICUBIC).save(out["big"], quality=92)
    return out


def test_awkward_photos_are_really_awkward(awkward):
    """Guard the fixture: a plain ``convert('RGB')`` differs from the contract on each."""
    pre = Preprocess(size=SIZE)
    for name, p in awkward.items():
        with Image.open(p) as im:
            naive = np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR))
        assert not np.array_equal(naive, pre.load(p)), name


def test_training_calibration_and_runtime_share_pixels(awkward):
    pytest.importorskip("torch")
    from mkt.export.parity import load_images
    from mkt.runtime.model import Model
    from mkt.training.features import load_uint8
    from mkt.training.train import _PhotoDataset
    from mkt.training.transforms import eval_transform

    pre = Preprocess(size=SIZE)
    runtime = {k: pre.load(p) for k, p in awkward.items()}
    # calibration and parity photos of the exporter
    ok, arr = load_images(list(awkward.values()), SIZE)
    assert ok == list(range(len(awkward)))
    for i, k in enumerate(awkward):
        assert np.array_equal(arr[i], runtime[k]), f"export path differs on {k}"
    # training's dataset (full mode): the contract's normalisation of the same pixels
    ds = _PhotoDataset([str(p) for p in awkward.values()], eval_transform(pre))
    for i, k in enumerate(awkward):
        assert np.array_equal(ds[i][0].numpy(), pre.normalise(runtime[k][None])[0]), k
    # the CPU mode's stem cache and evaluation features
    for k, p in awkward.items():
        assert np.array_equal(load_uint8(p, SIZE), runtime[k]), k
    # the runtime model's loader (packaged bundle)
    m = Model()
    batch = m.load(list(awkward.values()))
    for i, k in enumerate(awkward):
        assert np.array_equal(batch[i], runtime[k]), k


def test_contract_travels_in_the_manifest(tmp_path):
    pre = Preprocess(size=240, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    m = pre.to_manifest()
    assert Preprocess.from_manifest(m) == pre
    assert Preprocess.from_dict(pre.to_dict()) == pre
    assert load_bundle().preprocess.size == 224
    for bad in ({"input": {**m["input"], "interpolation": "nearest"}},
                {"input": {**m["input"], "size": 100000}},
                {"input": {**m["input"], "size": "224"}},
                {"input": {**m["input"], "pad": [255, 255, 255]}},
                {"preprocessing": {**m["preprocessing"], "in_graph": False}}):
        with pytest.raises(BundleError):
            Preprocess.from_manifest({**m, **bad})
