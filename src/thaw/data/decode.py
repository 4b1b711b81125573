"""Robust decoding of one image file into an 8-bit RGB PIL image.

Real image folders hold more than clean 8-bit RGB JPEGs: 16-bit PNGs, CMYK JPEGs from print workflows,
palette and alpha images, phone photos rotated by EXIF, truncated downloads, HTML error pages saved as
``.jpg``, and the occasional decompression bomb. ``decode_image`` turns each of them into an RGB image or a
``DecodeError`` whose ``reason`` a person can act on; callers turn the error into a ``Skipped`` record.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

__all__ = ["MAX_IMAGE_PIXELS", "SUPPORTED_FORMATS", "DecodeError", "decode_image", "display_path"]

logger = logging.getLogger(__name__)

#: Default pixel budget of one image: Pillow's own default (about 89 Mpx, a 9459x9459 image).
MAX_IMAGE_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)

#: Pillow formats thaw decodes. Restricting ``Image.open`` to these keeps exotic plugins (EPS runs
#: Ghostscript, for one) out of reach of a file that merely carries an image extension. The JPEG opener also
#: reads the multi-picture (MPO) JPEGs many cameras write.
SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF", "GIF")

# Image.open may warn (DecompressionBombWarning, plugin hints); warnings.catch_warnings swaps the
# process-wide filter list, so the threads of decode_all must not do it concurrently. The lock covers only
# the header parse, not the pixel decoding.
_OPEN_LOCK = threading.Lock()
_PIL_BOMB_PIXELS = re.compile(r"Image size \((\d+) pixels\)")


class DecodeError(Exception):
    """An image file could not be decoded; ``reason`` says why in a few words.

    Args:
        reason: Short human explanation, e.g. "truncated image file".
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def display_path(path: str | os.PathLike[str]) -> str:
    """Return a JSON- and console-safe form of a path.

    File names on POSIX are bytes; ``os.fsdecode`` maps bytes that are not UTF-8 to lone surrogates, which
    cannot be encoded to UTF-8 (json.dumps(..., ensure_ascii=False), a terminal). Those become ``\\xNN``
    escapes of the original byte, and other unprintable characters (newlines, ...) become Python escapes.

    Args:
        path: A path as given by ``os.fsdecode``/``os.scandir``.

    Returns:
        The printable text, e.g. ``data/cats/caf\\xe9.png`` for a Latin-1 encoded name.
    """
    text = os.fspath(path)
    if text.isprintable():
        return text
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # surrogateescape'd byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape", errors="backslashreplace").decode("ascii"))
    return "".join(out)


def _mpx(pixels: int) -> str:
    mpx = pixels / 1e6
    return f"{mpx:.0f}" if mpx >= 10 else f"{mpx:.2g}"


def _too_large(pixels: int, limit: int, size: tuple[int, int] | None = None) -> DecodeError:
    what = f"is {size[0]}x{size[1]} ({_mpx(pixels)} Mpx)" if size else f"has {_mpx(pixels)} Mpx"
    return DecodeError(f"image {what}, over the {_mpx(limit)} Mpx decompression-bomb limit")


def _sniff_not_image(path: str | os.PathLike[str]) -> str:
    """Reason for a file Pillow could not identify, from its first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        return f"cannot read file ({exc.strerror or exc})"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if stripped.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")) or b"<html" in stripped:
        return "not an image (looks like text/HTML)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # A multi-byte character cut at byte 512 still counts as text.
        text = head[:-4].decode("utf-8", errors="replace")
    if text and sum(ch.isprintable() or ch in "\t\r\n" for ch in text) >= 0.95 * len(text):
        return "not an image (looks like text/HTML)"
    # Something Pillow knows but thaw does not accept (PSD, ICO, EPS, ...)? Identify it for the message.
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                fmt = im.format
    except Exception:  # noqa: BLE001 - any failure just means "unknown"
        fmt = None
    supported = ", ".join(SUPPORTED_FORMATS)
    if fmt:
        return f"unsupported image format {fmt} (supported: {supported})"
    return f"not a recognised image format (supported: {supported})"


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, scaling high bit depths and compositing alpha on white."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_depth_to_rgb(im)
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in im.info)
    if (mode in ("L", "P", "1") and not has_alpha) or mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return im.convert("RGB")
    if has_alpha:
        # Transparent areas are composited on white rather than dropped to whatever colour the hidden RGB
        # holds (often black, sometimes garbage): product photos and logos with transparency are drawn
        # for a white page, and a stable background keeps the decoded image deterministic.
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")


def _high_depth_to_rgb(im: Image.Image) -> Image.Image:
    """Scale 16/32-bit integer and float grayscale to 8 bits (Pillow's convert clips instead of scaling).

    16-bit modes map 0..65535 onto 0..255. Mode "I" holds 16-bit data on older Pillow versions, so values
    within 0..65535 get the same scale; other integer or float ranges are stretched min..max, except floats
    already in 0..1, which are scaled by 255.
    """
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        scaled = arr.astype(np.float32) / 257.0
    else:
        data = arr.astype(np.float64)
        finite = data[np.isfinite(data)]
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 0.0
        if im.mode == "I" and lo >= 0 and hi <= 65535:
            scaled = data / 257.0
        elif im.mode == "F" and lo >= 0 and hi <= 1:
            scaled = data * 255.0
        elif hi > lo:
            scaled = (data - lo) * (255.0 / (hi - lo))
        else:
            scaled = np.zeros_like(data)
        scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def _open(path: str | os.PathLike[str], max_pixels: int) -> ImageFile.ImageFile:
    """Open (header only) and check the pixel budget before any pixel is decoded."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            # Pillow warns (DecompressionBombWarning) between its limit and twice it; our own check below
            # decides, so the warning would only be noise (or an exception under -W error).
            warnings.simplefilter("ignore")
            im = Image.open(path, formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError as exc:
        # Pillow refuses sizes over twice its limit before handing back the header; it gives the pixel
        # count only in its message.
        match = _PIL_BOMB_PIXELS.search(str(exc))
        pixels = int(match.group(1)) if match else 2 * MAX_IMAGE_PIXELS + 1
        raise _too_large(pixels, min(max_pixels, pixels - 1)) from None
    except UnidentifiedImageError:
        raise DecodeError(_sniff_not_image(path)) from None
    width, height = im.size
    if width * height > max_pixels:
        im.close()
        raise _too_large(width * height, max_pixels, (width, height))
    if width <= 0 or height <= 0:
        im.close()
        raise DecodeError(f"image has an invalid size {width}x{height}")
    return im


def decode_image(path: str | os.PathLike[str], max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image file into an 8-bit RGB image, upright as the EXIF orientation says.

    Accepts JPEG (and MPO), PNG, BMP, WebP, TIFF and GIF (first frame). Grayscale, palette, CMYK, 16-bit and
    float images are converted to RGB with their full range scaled to 8 bits; alpha is composited on white.

    Args:
        path: File to decode (a ``str`` from ``os.fsdecode`` may hold surrogate-escaped bytes).
        max_pixels: Refuse images with more pixels than this, checked from the header before any pixel is
            decoded (a guard against decompression bombs; Pillow's global limit is left untouched).

    Returns:
        A new RGB image, independent of the file (the file is closed).

    Raises:
        DecodeError: For any file that cannot become an image, with a short ``reason``.

    Example:
        >>> try:
        ...     img = decode_image("data/train/cats/1.jpg")
        ... except DecodeError as err:
        ...     print(err.reason)
    """
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except OSError as exc:
        raise DecodeError(f"cannot read file ({exc.strerror or exc})") from None
    if size == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        with _open(path, max_pixels) as im:
            im.load()
            # exif_transpose returns a new image (a copy when no rotation is needed).
            upright = ImageOps.exif_transpose(im)
        return _to_rgb(upright)
    except DecodeError:
        raise
    except Image.DecompressionBombError:  # pragma: no cover - _open checks first; kept as a second fence
        raise DecodeError(f"image is over the {_mpx(max_pixels)} Mpx decompression-bomb limit") from None
    except IsADirectoryError:
        raise DecodeError("is a directory, not a file") from None
    except PermissionError:
        raise DecodeError("permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        message = str(exc)
        if "truncated" in message or isinstance(exc, EOFError):
            raise DecodeError("truncated image file") from None
        logger.debug("decode failed for %s", display_path(os.fspath(path)), exc_info=True)
        raise DecodeError(f"cannot decode image ({message or type(exc).__name__})") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file, never a crash of the run
        logger.debug("decode failed for %s", display_path(os.fspath(path)), exc_info=True)
        raise DecodeError(f"cannot decode image ({type(exc).__name__}: {exc})") from None
