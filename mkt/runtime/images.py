"""Photo decoding and letterboxing, without torch.

The preprocessing contract (docs/design.md): pad to a centred square on black, then resize to
``size`` with PIL bilinear. The ONNX graph does the normalisation, so the runtime only has to
hand it ``uint8`` RGB ``HWC`` arrays. :mod:`mkt.runtime.preprocess` wraps these steps into the
one contract that training, calibration, parity and the runtime share.

Everything that can go wrong with a photo raises :class:`~mkt.runtime.errors.BadImageError`
(never a PIL, OSError or numpy exception), with one line naming the file and the reason.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import BadImageError, ImageTooLargeError, MktError

#: Decompression-bomb limit, in pixels (same default as Pillow: ~89 MP, far above any phone
#: photo). Checked from the header, before any pixel is decoded.
MAX_IMAGE_PIXELS = 89_478_485

#: Files bigger than this are refused before reading (no photo needs 256 MB).
MAX_FILE_BYTES = 256 * 1024 * 1024

# Pillow warns (two stderr lines, with its source path) on damaged files: "Corrupt EXIF data",
# "Truncated File Read", ... A photo here either decodes or raises BadImageError with the
# reason, so those warnings are noise. Filtered once, process-wide: `warnings.catch_warnings`
# in load_image alone is not enough, it is not thread-safe and photos load in threads.
warnings.filterwarnings("ignore", module=r"PIL(\.|$)")

#: The file extensions treated as photos when a folder is scanned.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
    # Photos we cannot decode, listed so a folder scan reports them instead of skipping them.
    | {".heic", ".heif", ".avif"}
)

ImageSource = str | os.PathLike | bytes | bytearray | memoryview


def _name_of(src: ImageSource, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(src, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return os.fspath(src)


_HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"}
)


def _unrecognised(data: bytes) -> str:
    """Why Pillow could not identify ``data``, as precisely as its first bytes tell."""
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        what = "AVIF" if data[8:12].startswith(b"avi") else "HEIC/HEIF"
        return f"{what} photos are not supported here; convert to JPEG or PNG"
    head = data[:256].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<head", b"<body", b"<?xml", b"<svg")):
        return "an HTML/XML document, not a photo (a web page saved under a photo's name?)"
    return "not a recognised image format"


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Alpha is composited on black (the letterbox pad colour)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # 16/32-bit grey: scale to 8 bit, don't clip (PIL's convert("L") clips at 255).
        a = np.asarray(im)
        if mode.startswith("I;16"):
            a8 = (a.astype(np.float64) / 257.0).round()
        elif mode == "I":
            hi = int(a.max()) if a.size else 0
            lo = int(a.min()) if a.size else 0
            if lo >= 0 and hi <= 255:
                a8 = a.astype(np.float64)
            else:  # treat as 16 bit (what PIL gives for 16-bit PNG/TIFF)
                a8 = (a.astype(np.float64) / 257.0).round()
        else:  # F
            a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            a8 = a * 255.0 if a.size and float(a.max()) <= 1.0 else a
        g = np.clip(a8, 0, 255).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(np.stack([g, g, g], axis=-1)))
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, (0, 0, 0))
        out.paste(rgba.convert("RGB"), (0, 0), rgba.getchannel("A"))
        return out
    return im.convert("RGB")


def _read_regular_file(p: Path, label: str) -> bytes:
    """Read a photo file whole, refusing anything but a regular file (a FIFO would block
    forever, ``/dev/zero`` or ``/dev/urandom`` never end) and anything over
    :data:`MAX_FILE_BYTES`. The size is checked on the open file, and the read is bounded
    too, so a file that grows meanwhile cannot make mkt read without limit."""
    st = p.stat()
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise BadImageError(f"{label}: {kind}, not a photo file")
    fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):  # swapped between the check and the open
            raise BadImageError(f"{label}: not a regular file, not a photo file")
        if st.st_size > MAX_FILE_BYTES:
            raise ImageTooLargeError(
                f"{label}: file too large ({st.st_size} bytes, limit {MAX_FILE_BYTES})")
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ImageTooLargeError(f"{label}: file too large (over {MAX_FILE_BYTES} bytes)")
    return data


def upright_rgb(im: Image.Image, *, draft_size: int | None = None) -> Image.Image:
    """Steps 1-3 of the preprocessing contract on an opened PIL image: JPEG draft decoding
    (only while ``im`` is not yet loaded), EXIF orientation, any mode -> RGB.

    :func:`load_image` and training's datasets both call this, so they cannot drift apart.
    """
    if draft_size and im.format == "JPEG":
        im.draft("RGB", (int(draft_size), int(draft_size)))
    im.load()
    im = ImageOps.exif_transpose(im) or im
    out = _to_rgb(im)
    out.load()
    return out


def load_image(
    src: ImageSource,
    *,
    draft_size: int | None = None,
    max_pixels: int | None = None,
    name: str | None = None,
) -> Image.Image:
    """Decode a photo (path or bytes) to an RGB PIL image with EXIF orientation applied.

    ``draft_size``: when given and the photo is a JPEG, let libjpeg decode at 1/2, 1/4 or 1/8
    scale while both sides stay >= ``draft_size``. A 12 MP phone photo then decodes ~10x
    faster; the letterboxed result differs from a full decode by a few grey levels at most.
    ``max_pixels``: decompression-bomb limit (default :data:`MAX_IMAGE_PIXELS`).
    ``name``: what error messages call the photo (default: the path, or ``<bytes>``).

    Raises :class:`BadImageError` for anything wrong with the input.
    """
    label = _name_of(src, name)
    limit = MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    data = b""
    try:
        if isinstance(src, (bytes, bytearray, memoryview)):
            data = bytes(src)
        else:
            p = Path(os.fspath(src))
            if not p.exists():
                if p.is_symlink():
                    raise BadImageError(
                        f"{label}: broken symbolic link (missing target or a link loop)"
                    )
                raise BadImageError(f"{label}: no such file")
            if p.is_dir():
                raise BadImageError(f"{label}: is a directory, not a photo")
            data = _read_regular_file(p, label)
        if not data:
            raise BadImageError(f"{label}: empty file (0 bytes)")
        fp = io.BytesIO(data)
        with warnings.catch_warnings():
            # We apply our own limit below, from the header; Pillow's own check would warn
            # (or raise its own exception type) instead. Pillow's other warnings on damaged
            # files ("Corrupt EXIF data", "Truncated File Read", ...) are noise on stderr: the
            # photo either decodes or raises BadImageError with the reason.
            warnings.simplefilter("ignore")
            im = Image.open(fp)
            w, h = im.size
            if w <= 0 or h <= 0:
                raise BadImageError(f"{label}: empty image ({w}x{h})")
            if w * h > limit:
                raise ImageTooLargeError(
                    f"{label}: image too large ({w}x{h} = {w * h} pixels, limit {limit})"
                )
            out = upright_rgb(im, draft_size=draft_size)
        return out
    except MktError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{label}: image too large ({e})") from None
    except FileNotFoundError:
        raise BadImageError(f"{label}: no such file") from None
    except PermissionError:
        raise BadImageError(f"{label}: permission denied") from None
    except Image.UnidentifiedImageError:
        raise BadImageError(f"{label}: {_unrecognised(data)}") from None
    except MemoryError:
        raise BadImageError(f"{label}: out of memory decoding the image") from None
    except Exception as e:  # PIL raises many exception types on corrupt data
        reason = str(e) or type(e).__name__
        raise BadImageError(f"{label}: cannot decode image ({reason})") from None


def letterbox(im: Image.Image, size: int) -> np.ndarray:
    """Pad to a centred square on black, then bilinear-resize to ``size``: uint8 HWC RGB.

    Step 4 of the preprocessing contract (:mod:`mkt.runtime.preprocess`). The shared
    224x224 photos are already letterboxed, so this is the identity on them.
    """
    if im.mode != "RGB":
        im = _to_rgb(im)
    w, h = im.size
    if w != h:
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), (0, 0, 0))
        canvas.paste(im, ((side - w) // 2, (side - h) // 2))
        im = canvas
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8).copy()


def load_letterboxed(
    src: ImageSource,
    size: int,
    *,
    draft: bool = True,
    max_pixels: int | None = None,
    name: str | None = None,
) -> np.ndarray:
    """:func:`load_image` + :func:`letterbox`: what the model wants, ``uint8 [size,size,3]``."""
    label = _name_of(src, name)
    im = load_image(
        src, draft_size=size if draft else None, max_pixels=max_pixels, name=label
    )
    try:
        return letterbox(im, size)
    except MktError:
        raise
    except Exception as e:
        raise BadImageError(f"{label}: cannot letterbox image ({e})") from None


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file name has a photo extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "ImageSource",
    "is_image_file",
    "letterbox",
    "load_image",
    "load_letterboxed",
    "upright_rgb",
]
