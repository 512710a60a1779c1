"""The one preprocessing contract: photo file -> the ``uint8 [S, S, 3]`` array a model eats.

Training, calibration, parity and the runtime all call :meth:`Preprocess.load` (or
:meth:`Preprocess.from_pil` for an image already in memory), so the model is trained and
calibrated on exactly the pixels users' photos become. The steps, in order:

1. decode (path or bytes; JPEGs may decode at 1/2, 1/4 or 1/8 scale while both sides stay
   >= ``size``, as libjpeg's DCT scaling allows: much faster for 12 MP phone photos),
2. apply EXIF orientation,
3. convert any mode to RGB (alpha composited on the pad colour, 16-bit scaled, palette
   expanded),
4. letterbox: pad to a centred square on ``pad`` (black), resize to ``size`` with bilinear,
5. normalise ``(x / 255 - mean) / std`` per channel, NCHW: done *inside* the ONNX graph for
   bundles (``in_graph``), and by :meth:`Preprocess.normalise` for torch training.

Its parameters travel with the model, as timm's ``pretrained_cfg`` does: the checkpoint holds
them, the exporter writes them into the bundle manifest (:meth:`to_manifest`), and the runtime
reads them back (:meth:`from_manifest`), refusing values it does not implement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .errors import BundleError
from .images import ImageSource, letterbox, load_letterboxed, upright_rgb

#: EfficientNet-Lite was trained on TF with ``(x - 127) / 128`` on 0..255 pixels.
LITE_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
LITE_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """What a model needs done to a photo. Frozen: one instance describes one model."""

    size: int = 224
    mean: tuple[float, float, float] = LITE_MEAN
    std: tuple[float, float, float] = LITE_STD
    resize: str = "letterbox"
    pad: tuple[int, int, int] = (0, 0, 0)
    interpolation: str = "bilinear"
    draft: bool = True  # JPEG DCT-domain downscaling while decoding (see module docstring)

    def __post_init__(self) -> None:
        if not 16 <= int(self.size) <= 1024:
            raise ValueError(f"input size {self.size} outside 16..1024")
        if self.resize != "letterbox" or self.interpolation != "bilinear":
            raise ValueError(f"unsupported resize {self.resize}/{self.interpolation}")
        if tuple(self.pad) != (0, 0, 0):
            raise ValueError(f"unsupported pad colour {self.pad}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean/std must be 3 numbers, std > 0")

    # -- the contract -----------------------------------------------------------------------
    def load(self, src: ImageSource, *, name: str | None = None) -> np.ndarray:
        """Decode + orient + RGB + letterbox a photo: ``uint8 [size, size, 3]``.

        Raises :class:`~mkt.runtime.errors.BadImageError` with one line for a bad photo.
        """
        return load_letterboxed(src, self.size, draft=self.draft, name=name)

    def from_pil(self, im: Image.Image) -> np.ndarray:
        """The same steps for an image already opened with PIL (e.g. a training dataset that
        keeps PIL images): identical output to :meth:`load` on the same file when ``im`` was
        opened but not yet loaded (the JPEG draft is applied here too)."""
        return letterbox(upright_rgb(im, draft_size=self.size if self.draft else None),
                         self.size)

    def normalise(self, batch: np.ndarray) -> np.ndarray:
        """``uint8 [N, S, S, 3]`` -> ``float32 [N, 3, S, S]``: what the graph does inside."""
        x = np.asarray(batch, dtype=np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    # -- travels with the model -------------------------------------------------------------
    def to_manifest(self) -> dict[str, Any]:
        """The ``input`` and ``preprocessing`` sections of a bundle manifest."""
        return {
            "input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "size": self.size,
                      "resize": self.resize, "pad": list(self.pad),
                      "interpolation": self.interpolation, "jpeg_draft": self.draft},
            "preprocessing": {"mean": [float(v) for v in self.mean],
                              "std": [float(v) for v in self.std], "in_graph": True},
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain types, for checkpoints (``torch.load(weights_only=True)`` reads them)."""
        return {"size": self.size, "mean": [float(v) for v in self.mean],
                "std": [float(v) for v in self.std], "resize": self.resize,
                "pad": list(self.pad), "interpolation": self.interpolation,
                "draft": self.draft}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocess:
        return cls(size=int(d["size"]), mean=_triple(d["mean"]), std=_triple(d["std"]),
                   resize=str(d.get("resize", "letterbox")),
                   pad=tuple(int(v) for v in d.get("pad", (0, 0, 0))),  # type: ignore[arg-type]
                   interpolation=str(d.get("interpolation", "bilinear")),
                   draft=bool(d.get("draft", True)))

    @classmethod
    def from_manifest(cls, m: Mapping[str, Any], where: str = "manifest") -> Preprocess:
        """Read a manifest's ``input``/``preprocessing``; :class:`BundleError` if the runtime
        cannot honour them (it feeds raw uint8 NHWC and lets the graph normalise)."""
        inp = m.get("input")
        pre = m.get("preprocessing") or {}
        if not isinstance(inp, Mapping) or not isinstance(pre, Mapping):
            raise BundleError(f"{where}: manifest has no valid 'input'/'preprocessing'")
        if inp.get("dtype", "uint8") != "uint8" or inp.get("layout", "NHWC") != "NHWC":
            raise BundleError(f"{where}: unsupported input {inp.get('dtype')}/"
                              f"{inp.get('layout')} (runtime feeds uint8 NHWC)")
        if pre.get("in_graph", True) is not True:
            raise BundleError(f"{where}: preprocessing must be in the graph (in_graph: true)")
        try:
            size = inp.get("size", 224)
            if isinstance(size, bool) or not isinstance(size, int):
                raise ValueError(f"input size {size!r} is not an integer")
            return cls(size=size, mean=_triple(pre.get("mean", LITE_MEAN)),
                       std=_triple(pre.get("std", LITE_STD)),
                       resize=str(inp.get("resize", "letterbox")),
                       pad=tuple(int(v) for v in inp.get("pad", (0, 0, 0))),  # type: ignore
                       interpolation=str(inp.get("interpolation", "bilinear")),
                       draft=bool(inp.get("jpeg_draft", True)))
        except (TypeError, ValueError) as e:
            raise BundleError(f"{where}: unsupported input contract ({e})") from None


def _triple(v: Sequence[Any]) -> tuple[float, float, float]:
    t = tuple(float(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"expected 3 values, got {len(t)}")
    return t  # type: ignore[return-value]


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "LITE_MEAN", "LITE_STD", "Preprocess"]
