"""PNG/JPEG/TIFF/BMP/GIF reading with Pillow, plus the intensity scaling every reader shares.

Encoders take 8-bit RGB, while radiology rasters are often 16-bit or float greyscale:
those are mapped to 8 bit with robust percentiles so a few hot pixels cannot wash the
image out.
"""

from __future__ import annotations

import os
import re
import stat

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from radsearch.errors import ImageReadError
from radsearch.io import items

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5

# Pillow modes holding more than 8 bits per sample (greyscale).
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# Exceptions Pillow's decoders raise on damaged files.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError)


def robust_range(arr: np.ndarray) -> tuple[float, float]:
    """The 0.5/99.5 percentile range of the finite values, widened to min/max when flat."""
    values = np.asarray(arr, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 0.0
    lo, hi = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if hi <= lo:  # mostly-constant image (e.g. a sparse mask): fall back to the full range
        lo, hi = float(values.min()), float(values.max())
    return float(lo), float(hi)


def window_to_uint8(arr: np.ndarray, low: float, high: float) -> np.ndarray:
    """Linearly map ``[low, high]`` to ``[0, 255]``, clipping outside; NaN becomes 0."""
    data = np.asarray(arr, dtype=np.float64)
    if high <= low:
        out = np.where(data > low, 255.0, 0.0)
    else:
        out = (data - low) * (255.0 / (high - low))
    out = np.nan_to_num(out, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map any greyscale array to uint8 by its robust percentile range."""
    lo, hi = robust_range(arr)
    return window_to_uint8(arr, lo, hi)


def grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    """Replicate an ``HxW`` uint8 image to ``HxWx3`` (encoders expect three channels)."""
    return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))


def too_large_reason(width: int, height: int) -> str | None:
    """The refusal reason when a ``width x height`` image exceeds ``items.MAX_PIXELS``."""
    if width * height > items.MAX_PIXELS:
        return f"image too large: {width}x{height} pixels > limit {items.MAX_PIXELS}"
    return None


def check_file(path: str | os.PathLike) -> None:
    """Fail early with a plain reason for missing, non-regular and empty files.

    Only regular files are ever opened: reading a FIFO or a device would block forever.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except OSError as exc:
        raise ImageReadError(path, f"cannot open ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageReadError(path, "is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise ImageReadError(path, f"not a regular file ({_file_type(st.st_mode)})")
    if st.st_size == 0:
        raise ImageReadError(path, "zero-byte file")


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


def _decode_reason(exc: BaseException) -> str:
    text = str(exc)
    if "truncated" in text.lower() or isinstance(exc, EOFError):
        return "truncated image data"
    return f"corrupt image data ({type(exc).__name__}: {text})" if text else "corrupt image data"


def read_raster(path: str | os.PathLike) -> np.ndarray:
    """Decode a raster file to ``HxWx3 uint8`` RGB, or raise ``ImageReadError``.

    The pixel cap is checked on the header before any pixel is decoded, so a hostile
    50,000 x 50,000 PNG fails in microseconds instead of allocating gigabytes.
    """
    check_file(path)
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as exc:
        # Pillow's own (larger) guard fired inside open(): report it in our terms.
        m = re.search(r"\((\d+) pixels\)", str(exc))
        count = m.group(1) if m else "?"
        raise ImageReadError(
            path, f"image too large: {count} pixels > limit {items.MAX_PIXELS}"
        ) from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image (cannot identify format)") from None
    except _DECODE_ERRORS as exc:
        raise ImageReadError(path, _decode_reason(exc)) from None
    with img:
        reason = too_large_reason(*img.size)
        if reason:
            raise ImageReadError(path, reason)
        try:
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
        except Image.DecompressionBombError as exc:
            raise ImageReadError(path, f"image too large: {exc}") from None
        except _DECODE_ERRORS as exc:
            raise ImageReadError(path, _decode_reason(exc)) from None


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow mode to ``HxWx3 uint8`` RGB: wide greyscale scaled, alpha over black."""
    mode = img.mode
    if mode in _WIDE_MODES:
        grey = np.asarray(img)
        if grey.ndim == 3:  # defensive: some plugins give HxWx1
            grey = grey[:, :, 0]
        return grey_to_rgb(scale_to_uint8(grey))
    has_alpha = "A" in mode or "a" in mode or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        alpha = rgba[:, :, 3:4]
        rgb = (rgba[:, :, :3] * alpha + 127) // 255
        return np.ascontiguousarray(rgb.astype(np.uint8))
    if mode != "RGB":
        img = img.convert("RGB")  # L/1/P replicate or expand; CMYK/YCbCr/LAB convert
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
