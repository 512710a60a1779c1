"""Generate the bad-input corpus: every kind of photo a user can throw at mkt.

Nothing here is hand-collected: :func:`make_corpus` writes each case into a folder, from the
committed fixture photos and a few bytes of known headers, in well under a second and with a
few hundred KB on disk (the "huge" files are sparse). Each :class:`Case` says whether the
runtime must read it (``valid``: a result for it) or refuse it (a one-line error that names
the file and matches ``reason``).

    python -m tests.badinputs /tmp/corpus      # write the corpus somewhere to look at it
"""

from __future__ import annotations

import functools
import io
import os
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: Photos in a plain folder scan must be picked up by extension: these are the names used.
UNICODE_NAME = "фото 写真 😀.jpg"
HUGE_FILE_BYTES = 60 * 1024 * 1024  # 60 MB: under the runtime's file-size limit, read + refused
OVERSIZE_FILE_BYTES = 300 * 1024 * 1024  # over MAX_FILE_BYTES (256 MB): refused unread
BOMB_SIDE = 20_000  # 20000 x 20000 = 400 MP, over the 89 MP decompression-bomb limit


#: Every case :func:`make_corpus` writes, in order (after the ``good<i>`` copies): tests
#: parametrize over these names.
CASE_NAMES = (
    "empty", "truncated_jpeg", "text_as_jpg", "html_as_jpg", "heic", "bomb_20000px",
    "png_alpha", "palette_gif", "animated_gif", "cmyk_jpeg", "png_16bit", "grayscale",
    "one_pixel", "exif_rotated", "webp", "png_named_jpg", "unicode_name", "corrupt_exif_jpeg",
    "corrupt_tiff",
    "directory", "missing", "symlink_loop", "huge_60mb", "oversize_300mb",
)


@dataclass(frozen=True)
class Case:
    """One corpus entry.

    ``name``: short id (test ids). ``path``: what is passed to the command. ``valid``: the
    runtime must decode it (and every command must produce its normal result for it).
    ``reason``: regex an error line must match when not valid. ``size``: (w, h) after EXIF
    orientation, for valid cases (None: 64x48 or 48x64 both right). ``in_folder``: picked up
    by a plain-folder scan (``mkt index build FOLDER``); directories are not photos, so a
    folder scan skips them.
    """

    name: str
    path: Path
    valid: bool
    reason: str = ""
    size: tuple[int, int] | None = None
    in_folder: bool = True

    @property
    def stem(self) -> str:
        return self.path.stem


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _gradient(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A smooth colourful RGB image (compresses well, not constant)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    a = np.stack(
        [
            127 + 100 * np.sin(x / max(w, 1) * 6.0 + seed),
            127 + 100 * np.cos(y / max(h, 1) * 5.0),
            127 + 60 * np.sin((x + y) / max(w + h, 1) * 9.0),
        ],
        axis=-1,
    )
    a += rng.normal(0, 4, a.shape).astype(np.float32)
    return np.clip(a, 0, 255).astype(np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


@functools.lru_cache(maxsize=2)
def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A *valid* ``side x side`` 1-bit greyscale PNG, all black: ~200 KB for 400 MP.

    Streamed through zlib (fastest level) in blocks of rows: ~0.4 s, no big buffer; cached.
    """
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grey, no interlace
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte 0 + packed bits
    comp = zlib.compressobj(1)
    parts = []
    block = row * 256
    rows_left = side
    while rows_left:
        n = min(256, rows_left)
        parts.append(comp.compress(block if n == 256 else row * n))
        rows_left -= n
    parts.append(comp.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def heic_bytes() -> bytes:
    """The start of an iPhone HEIC file: an ISO-BMFF ``ftyp`` box with brand ``heic``."""
    ftyp = b"ftyp" + b"heic" + struct.pack(">I", 0) + b"mif1heic"
    box = struct.pack(">I", 8 + len(ftyp) - 4) + ftyp
    meta = struct.pack(">I", 16) + b"meta" + b"\x00" * 8
    return box + meta + os.urandom(512)


def corrupt_exif_jpeg(im: Image.Image) -> bytes:
    """A valid JPEG whose EXIF block (orientation 6) has a corrupt IFD entry count."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010E] = "a photo description"
    d = bytearray(_save(im, "JPEG", quality=90, exif=exif.tobytes()))
    i = d.find(b"Exif\x00\x00") + 6  # TIFF header: II*\0 + IFD offset (8)
    d[i + 8: i + 10] = b"\xff\x00"  # IFD0 entry count: 255 entries that are not there
    return bytes(d)


def _sparse(path: Path, size: int, head: bytes) -> None:
    """``size`` bytes on disk that start with ``head``; the rest is a hole (no disk used)."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)


def make_corpus(dst: str | os.PathLike, good: list[Path] | None = None) -> list[Case]:
    """Write the corpus into ``dst`` (created) and return its cases, good photos first.

    ``good``: a few valid photos (e.g. the committed fixtures) copied in as ``good-<i>.jpg``;
    they are the control group: the commands must still process them in a bad batch.
    The folder also holds a subdirectory and the symlink loop; ``missing.jpg`` does not exist.
    """
    d = Path(dst)
    d.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def add(name: str, fname: str, data: bytes | None, valid: bool, reason: str = "",
            size: tuple[int, int] | None = None) -> Path:
        p = d / fname
        if data is not None:
            p.write_bytes(data)
        cases.append(Case(name, p, valid, reason, size))
        return p

    for i, g in enumerate(good or []):
        data = Path(g).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            size = im.size
        add(f"good{i}", f"good-{i}.jpg", data, True, size=size)

    base = Image.fromarray(_gradient(64, 48))
    jpeg = _save(base, "JPEG", quality=90)

    # -- not images / broken ------------------------------------------------------------------
    add("empty", "empty.jpg", b"", False, r"empty file")
    add("truncated_jpeg", "truncated.jpg", jpeg[: len(jpeg) // 2], False,
        r"cannot decode|truncated")
    add("text_as_jpg", "notes.jpg", b"just some notes, not a photo\n" * 20, False,
        r"not a recognised image format")
    add("html_as_jpg", "listing.jpg",
        b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
        b"<body><h1>Not Found</h1></body></html>\n", False,
        r"HTML|not a recognised image format")
    add("heic", "IMG_0001.heic", heic_bytes(), False, r"HEIC|HEIF|not supported|not a recog")
    add("bomb_20000px", "bomb.png", bomb_png(), False, r"too large")

    # -- valid, in every awkward mode ---------------------------------------------------------
    rgba = np.dstack([_gradient(40, 30, 1), np.tile(np.linspace(0, 255, 40, dtype=np.uint8),
                                                    (30, 1))])
    add("png_alpha", "alpha.png", _save(Image.fromarray(rgba, "RGBA"), "PNG"), True,
        size=(40, 30))
    add("palette_gif", "palette.gif",
        _save(Image.fromarray(_gradient(50, 20, 2)).quantize(64), "GIF"), True, size=(50, 20))
    frames = [Image.fromarray(_gradient(32, 24, s)).quantize(32) for s in range(3)]
    add("animated_gif", "animated.gif",
        _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
        True, size=(32, 24))
    add("cmyk_jpeg", "cmyk.jpg", _save(base.convert("CMYK"), "JPEG", quality=90), True,
        size=(64, 48))
    a16 = (np.linspace(0, 65535, 48 * 64).reshape(48, 64)).astype(np.uint16)
    add("png_16bit", "deep16.png", _save(Image.fromarray(a16), "PNG"), True, size=(64, 48))
    add("grayscale", "grey.jpg", _save(base.convert("L"), "JPEG", quality=90), True,
        size=(64, 48))
    add("one_pixel", "dot.png", _save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), True,
        size=(1, 1))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: 64x48 stored -> 48x64 shown
    add("exif_rotated", "rotated.jpg", _save(base, "JPEG", quality=90, exif=exif.tobytes()),
        True, size=(48, 64))
    add("webp", "photo.webp", _save(base, "WEBP", quality=80), True, size=(64, 48))
    add("png_named_jpg", "really-a-png.jpg", _save(base, "PNG"), True, size=(64, 48))
    add("unicode_name", UNICODE_NAME, jpeg, True, size=(64, 48))
    # EXIF with an absurd IFD entry count: Pillow warns "Corrupt EXIF data" and reads what it
    # can (the orientation entry comes first, so it may still rotate: either size is right);
    # the photo itself is fine.
    add("corrupt_exif_jpeg", "bad-exif.jpg", corrupt_exif_jpeg(base), True, size=None)
    # A TIFF header + junk: Pillow warns while failing to identify it.
    junk = np.random.default_rng(7).integers(0, 256, 200, dtype=np.uint8).tobytes()
    add("corrupt_tiff", "scan.tif", b"II*\x00\x08\x00\x00\x00" + junk, False,
        r"not a recognised image format")

    # -- file-system oddities -----------------------------------------------------------------
    sub = d / "folder.jpg"
    sub.mkdir(exist_ok=True)
    cases.append(Case("directory", sub, False, r"directory", in_folder=False))
    cases.append(Case("missing", d / "missing.jpg", False, r"no such file", in_folder=False))
    loop = d / "loop.jpg"
    if not loop.is_symlink():
        os.symlink(loop.name, loop)  # loop.jpg -> loop.jpg
    cases.append(Case("symlink_loop", loop, False, r"symbolic link|symlink|no such file"))
    huge = d / "huge.jpg"
    _sparse(huge, HUGE_FILE_BYTES, os.urandom(64 * 1024))
    cases.append(Case("huge_60mb", huge, False, r"not a recognised image format|cannot decode"))
    over = d / "oversize.jpg"
    _sparse(over, OVERSIZE_FILE_BYTES, jpeg)
    cases.append(Case("oversize_300mb", over, False, r"too large"))
    assert tuple(c.name for c in cases if not c.name.startswith("good")) == CASE_NAMES
    return cases


def valid_cases(cases: list[Case]) -> list[Case]:
    return [c for c in cases if c.valid]


def invalid_cases(cases: list[Case]) -> list[Case]:
    return [c for c in cases if not c.valid]


if __name__ == "__main__":  # pragma: no cover - manual inspection
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/mkt-bad-corpus")
    for c in make_corpus(out):
        print(f"{c.name:16s} {'valid' if c.valid else 'bad  '} {c.path}")
