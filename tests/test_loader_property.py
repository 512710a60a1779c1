"""Property-based tests of the photo loader (hypothesis).

Whatever bytes it is given, ``mkt.runtime.images`` either returns what the model wants (an RGB
``uint8 [size, size, 3]`` array; for a valid image of ``w x h``, an RGB image of ``w x h``
after EXIF rotation) or raises the project's own :class:`MktError` with one line that names
the photo. Never a PIL, OSError, ValueError, zlib, struct or numpy exception.

The examples are derandomised so CI is reproducible; set ``MKT_FUZZ=1`` (and optionally
``MKT_FUZZ_EXAMPLES=5000``) to explore new random examples locally.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mkt.runtime import images as mi
from mkt.runtime.errors import ImageTooLargeError, MktError
from mkt.runtime.images import load_image, load_letterboxed

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = bool(os.environ.get("MKT_FUZZ"))
SCALE = int(os.environ.get("MKT_FUZZ_EXAMPLES", "0"))


def cfg(n: int):
    return settings(
        max_examples=SCALE or n,
        deadline=None,
        database=None,  # no .hypothesis/ directory in the repo
        derandomize=not FUZZ,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
    )


NAME = "fuzz photo.jpg"

# (format, mode) pairs Pillow can write, covering every mode a photo decodes to.
FORMAT_MODES = (
    [("PNG", m) for m in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")]
    + [("JPEG", m) for m in ("L", "RGB", "CMYK")]
    + [("GIF", m) for m in ("L", "P", "RGB")]
    + [("WEBP", m) for m in ("L", "RGB", "RGBA")]
    + [("BMP", m) for m in ("1", "L", "P", "RGB")]
    + [("TIFF", m) for m in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB",
                             "I", "I;16", "F")]
)
EXIF_FORMATS = ("JPEG", "PNG", "WEBP")

HEADS = [
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b"\xff\xd8\xff\xdb", b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"GIF89a", b"GIF87a", b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"RIFF\xff\xff\xff\x7fWEBPVP8L", b"BM", b"II*\x00", b"MM\x00*", b"\x00\x00\x00\x18ftypheic",
    b"<html>", b"\x00\x00\x01\x00", b"P6\n", b"8BPS", b"\x1f\x8b",
]


def _pixels(mode: str, w: int, h: int, rng: np.random.Generator) -> Image.Image:
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, (h, w), dtype=np.uint8) > 0)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(-(2**31), 2**31 - 1, (h, w), dtype=np.int32))
    if mode == "F":
        return Image.fromarray((rng.standard_normal((h, w)) * 300).astype(np.float32))
    bands = len(Image.new(mode, (1, 1)).getbands())
    # smooth + noise: realistic enough for the codecs, and still arbitrary
    base = rng.integers(0, 256, (max(1, h // 8), max(1, w // 8), bands), dtype=np.uint8)
    a = np.kron(base, np.ones((8, 8, 1), np.uint8))[:h, :w]
    a = np.pad(a, ((0, h - a.shape[0]), (0, w - a.shape[1]), (0, 0)), mode="edge")
    a = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    im = Image.frombytes(mode, (w, h), a.tobytes())
    if mode in ("P", "PA"):
        im.putpalette(rng.integers(0, 256, 768).astype(np.uint8).tobytes())
    return im


@st.composite
def images(draw, max_side: int = 320):
    """(encoded bytes, (w, h) as displayed, description)."""
    fmt, mode = draw(st.sampled_from(FORMAT_MODES))
    w = draw(st.integers(1, max_side))
    h = draw(st.integers(1, max_side))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    im = _pixels(mode, w, h, rng)
    kw: dict = {}
    orient = 1
    if fmt in EXIF_FORMATS and draw(st.booleans()):
        orient = draw(st.integers(1, 8))
        exif = Image.Exif()
        exif[0x0112] = orient
        kw["exif"] = exif.tobytes()
    if fmt == "JPEG":
        kw["quality"] = draw(st.integers(5, 95))
    if fmt == "WEBP":
        kw["lossless"] = draw(st.booleans())
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    shown = (h, w) if orient in (5, 6, 7, 8) else (w, h)
    return buf.getvalue(), shown, f"{fmt} {mode} {w}x{h} orientation {orient}"


def _check_error(e: MktError) -> None:
    msg = str(e)
    assert msg.startswith(f"{NAME}: ") and "\n" not in msg, msg


def _check_array(a: np.ndarray, size: int) -> None:
    assert isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.shape == (size, size, 3)
    assert a.flags.c_contiguous


# -- valid images -----------------------------------------------------------------------------


@cfg(100)
@given(images(), st.sampled_from([16, 64, 224]))
def test_valid_images_of_any_mode_and_size_load(img, size):
    data, shown, what = img
    im = load_image(data, name=NAME)
    assert im.mode == "RGB" and im.size == shown, what
    _check_array(load_letterboxed(data, size, name=NAME), size)
    _check_array(load_letterboxed(data, size, draft=False, name=NAME), size)


# -- random and damaged bytes -----------------------------------------------------------------


@cfg(200)
@given(st.one_of(
    st.binary(max_size=4096),
    st.tuples(st.sampled_from(HEADS), st.binary(max_size=4096)).map(lambda t: t[0] + t[1]),
))
def test_random_bytes_raise_only_mkt_errors(data):
    try:
        a = load_letterboxed(data, 32, name=NAME)
    except MktError as e:
        _check_error(e)
    else:
        _check_array(a, 32)


@st.composite
def damaged(draw):
    data, _, what = draw(images(max_side=96))
    b = bytearray(data)
    how = draw(st.sampled_from(["truncate", "flip", "splice", "zero"]))
    if how == "truncate":
        b = b[: draw(st.integers(0, max(0, len(b) - 1)))]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(b) - 1))
            b[i] ^= 1 << draw(st.integers(0, 7))
    elif how == "splice":
        i = draw(st.integers(0, len(b)))
        b[i:i] = draw(st.binary(min_size=1, max_size=64))
    else:
        i = draw(st.integers(0, len(b) - 1))
        b[i: i + draw(st.integers(1, 256))] = b"\x00" * 256
    return bytes(b), f"{what} {how}"


@cfg(150)
@given(damaged(), st.sampled_from([32, 224]))
def test_damaged_images_raise_only_mkt_errors(case, size):
    data, what = case
    try:
        a = load_letterboxed(data, size, name=NAME)
    except MktError as e:
        _check_error(e)
    else:
        _check_array(a, size)


# -- headers that declare any size ------------------------------------------------------------


def _png(w: int, h: int, depth: int, ctype: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype,
                                                              0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _gif(w: int, h: int, tail: bytes) -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", w, h, 0, 0, 0) + tail


def _bmp(w: int, h: int, tail: bytes) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + len(tail), 0, 0, 54) + info + tail


@cfg(120)
@given(
    st.sampled_from(["png", "gif", "bmp"]),
    st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1),
    st.sampled_from([(1, 0), (8, 0), (16, 0), (8, 2), (8, 3), (8, 4), (8, 6), (16, 6)]),
    st.binary(max_size=256),
    st.booleans(),
)
def test_any_declared_size_is_checked_before_decoding(kind, w, h, png_type, tail, real_idat):
    """A header may declare anything up to 2^31 x 2^31: over the pixel limit it is refused as
    too large (from the header, before any pixel is decoded), under it the short data is
    refused as broken (or decodes); either way quickly, and only with MktError."""
    if kind == "png":
        idat = zlib.compress(tail) if real_idat else tail
        data = _png(w, h, *png_type, idat)
    elif kind == "gif":
        w, h = w % 65536 or 1, h % 65536 or 1  # 16-bit fields
        data = _gif(w, h, tail)
    else:
        h = h if real_idat else -h  # negative height = top-down rows
        data = _bmp(w, h, tail)
    try:
        a = load_letterboxed(data, 32, name=NAME)
    except ImageTooLargeError as e:
        _check_error(e)
        assert "too large" in str(e)
    except MktError as e:
        _check_error(e)
        if w * abs(h) > mi.MAX_IMAGE_PIXELS and kind == "png":
            # a PNG's IHDR is always parsed: a declared size over the limit must be reported
            # as such, not as some decoding error (GIF/BMP may be refused earlier: no frame)
            pytest.fail(f"{w}x{h} {kind}: {e}")
    else:
        _check_array(a, 32)
        assert w * abs(h) <= mi.MAX_IMAGE_PIXELS
