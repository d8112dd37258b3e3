"""Uploaded query images: decoded safely when a hostile client chooses every byte.

``radsearch serve`` stores each upload in a private temporary folder and asks this
module for pixels. Four rules keep a server up whatever arrives:

- the file kind comes from io's own detector (``items.file_kind``, by name and DICOM
  magic); the client's name contributes only a sanitised extension, never a path;
- the image size is read from the header first, so an image over the pixel cap (a
  decompression bomb: a 90 KB PNG of 81 Mpx) is refused before any pixel is decoded;
- decoding runs inside a memory budget: rasters larger than ``REDUCE_SIDE`` are reduced
  while loading (a 16-bit 7000 x 7000 PNG costs ~130 MB instead of ~1.8 GB), every
  decode reserves its estimated working memory from a shared ``DecodeBudget`` and waits
  for room, and one that could not fit in the whole budget is refused;
- whatever a decoder raises on a malformed file becomes ``ImageReadError`` with the
  reason (HTTP 422), never an internal error.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from radsearch.errors import ImageReadError

log = logging.getLogger("radsearch.io.upload")

# Rasters with a longer side are box-reduced on load by an integer factor; every
# encoder's input is far smaller (224-518 px), and the preview is 384 px.
REDUCE_SIDE = 1024
# Measured working memory per decoded pixel (bytes), full-resolution paths: the readers
# go through float64 for windowing and percentiles (benchmarks/serve_memory.py).
RASTER_BYTES_PER_PIXEL = 40
DICOM_BYTES_PER_SAMPLE = 36
NIFTI_BYTES_PER_VOXEL = 20
DEFAULT_DECODE_MEMORY = 768 * 2**20
DEFAULT_DECODE_CONCURRENCY = 2
_SUFFIX = re.compile(r"(?:\.[a-z0-9]{1,8}){1,2}$")


@dataclass(frozen=True)
class Probe:
    """What the header says about an upload: kind, largest plane and decode cost."""

    kind: str
    width: int
    height: int
    cost: int  # estimated peak working memory of the decode, bytes


def display_name(filename: str | None) -> str:
    """The client's file name as it may appear in answers: base name, printable, short."""
    name = os.path.basename((filename or "").replace("\\", "/")) or "upload"
    return "".join(c for c in name if c.isprintable())[:200]


def client_suffix(filename: str | None) -> str:
    """The extension of the client's name (``.png``, ``.nii.gz``) if it looks like one."""
    m = _SUFFIX.search(display_name(filename).lower())
    return m.group(0) if m else ""


class DecodeBudget:
    """Admission for decodes: at most ``concurrency`` at once, within ``total`` bytes.

    A decode reserves its estimated cost and waits while the pool is short; a cost over
    the whole pool is refused at once, as that image could never be decoded here.
    """

    def __init__(
        self, total: int = DEFAULT_DECODE_MEMORY, concurrency: int = DEFAULT_DECODE_CONCURRENCY
    ):
        self.total = int(total)
        self.concurrency = max(1, int(concurrency))
        self._used = 0
        self._running = 0
        self._cond = threading.Condition()

    @contextmanager
    def reserve(self, name: str, cost: int):
        if cost > self.total:
            raise ImageReadError(
                name,
                f"decoding needs about {cost / 2**20:.0f} MB, more than the decode budget of "
                f"{self.total / 2**20:.0f} MB (radsearch serve --decode-memory-mb)",
            )
        with self._cond:
            self._cond.wait_for(
                lambda: self._running < self.concurrency and self._used + cost <= self.total
            )
            self._used += cost
            self._running += 1
        try:
            yield
        finally:
            _release_freed_heap()
            with self._cond:
                self._used -= cost
                self._running -= 1
                self._cond.notify_all()


def _release_freed_heap() -> None:
    """Hand the heap a finished decode freed back to the OS (glibc ``malloc_trim``).

    A large decode's temporaries are freed into the arena of the thread that ran it;
    the next decode, on another request thread and arena, cannot reuse them, so without
    a trim the process's peak grows with the number of threads that ever decoded, not
    with the decodes the budget lets run at once. Elsewhere (no glibc) a no-op."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = None


def _reduced_side(width: int, height: int) -> tuple[int, int, int]:
    factor = max(1, math.ceil(max(width, height) / REDUCE_SIDE))
    return factor, max(1, width // factor), max(1, height // factor)


def _probe_raster(path: str) -> Probe:
    from PIL import Image

    try:
        img = Image.open(path)
    except Image.DecompressionBombError as exc:  # over twice Pillow's own cap
        m = re.search(r"\((\d+) pixels\)", str(exc))
        return Probe("raster", int(m.group(1)) if m else 2**40, 1, 0)
    with img:
        width, height = img.size
        bands = len(img.getbands())
        sample = 4 if img.mode in ("I", "F", "RGBX", "CMYK") else 2 if "16" in img.mode else 1
    factor, w, h = _reduced_side(width, height)
    raw = width * height * bands * sample if factor > 1 else 0
    return Probe("raster", width, height, raw + w * h * RASTER_BYTES_PER_PIXEL)


def _probe_dicom(path: str) -> Probe:
    from radsearch.io.dicom import check_frame_count, read_dicom_header

    ds = read_dicom_header(path)
    width, height = int(ds.get("Columns") or 0), int(ds.get("Rows") or 0)
    samples = int(ds.get("SamplesPerPixel") or 1)
    check_frame_count(ds, path)  # io's own rule: a frame count the file cannot hold
    return Probe("dicom", width, height, width * height * samples * DICOM_BYTES_PER_SAMPLE)


def _probe_nifti(path: str) -> Probe:
    import nibabel as nib

    shape = [int(s) for s in nib.load(path).shape[:3]]
    if len(shape) < 2:
        raise ImageReadError(path, f"NIfTI has {len(shape)} dimension(s), need 2 to 4")
    width, height = sorted(shape, reverse=True)[:2]  # the largest plane of any direction
    voxels = math.prod(shape)  # the automatic window reads the whole first volume
    return Probe("nifti", width, height, voxels * NIFTI_BYTES_PER_VOXEL)


_PROBES = {"raster": _probe_raster, "dicom": _probe_dicom, "nifti": _probe_nifti}


def probe(path: str, kind: str) -> Probe:
    """Read only the header of ``path`` (an upload of ``kind``): size and decode cost."""
    return _PROBES[kind](path)


def _read_raster_reduced(path: str) -> np.ndarray:
    """A raster as RGB uint8, box-reduced on load when larger than ``REDUCE_SIDE``."""
    from PIL import Image, ImageOps

    from radsearch.io.raster import _to_rgb  # the readers' one mode conversion

    with Image.open(path) as img:
        factor, w, h = _reduced_side(*img.size)
        img.draft(img.mode, (w, h))  # JPEG: decode at the reduced scale (DCT scaling)
        img.load()
        if img.size != (w, h):
            img = img.resize((w, h), Image.Resampling.BOX)
        return _to_rgb(ImageOps.exif_transpose(img))


def _decode(path: str, found: Probe, frame: int | None) -> np.ndarray:
    from radsearch.io.items import ItemRef, load_pixels

    if found.kind == "raster" and max(found.width, found.height) > REDUCE_SIDE:
        return _read_raster_reduced(path)
    if found.kind == "nifti" and frame is None:
        from radsearch.io.nifti import nifti_slice_count

        frame = nifti_slice_count(path) // 2  # middle axial slice
    return load_pixels(ItemRef(id=path, source=path, frame=frame or 0))


def _reason(exc: BaseException, path: str) -> str:
    if isinstance(exc, ImageReadError):
        return exc.reason.replace(path, "upload")
    if isinstance(exc, MemoryError):
        return "not enough memory to decode this image"
    text = str(exc).replace(path, "upload").splitlines()[0][:200] if str(exc) else ""
    return f"cannot decode ({type(exc).__name__}{': ' + text if text else ''})"


def _check_pixels(name: str, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageReadError(name, f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageReadError(
            name,
            f"image too large: {width}x{height} pixels > limit {max_pixels} "
            "(radsearch serve --max-pixels)",
        )


def _save(stream: BinaryIO, folder: str, filename: str | None) -> str:
    path = os.path.join(folder, "query" + client_suffix(filename))
    with open(path, "wb") as fh:
        shutil.copyfileobj(stream, fh, 1 << 20)
    return path


def read_upload(
    stream: BinaryIO,
    filename: str | None,
    *,
    frame: int | None = None,
    max_pixels: int,
    budget: DecodeBudget,
) -> np.ndarray:
    """Pixels (``HxWx3 uint8``) of an uploaded file, or ``ImageReadError`` naming it.

    ``frame``: DICOM frame or NIfTI slice (default: first frame, middle slice).
    """
    from radsearch.io.items import file_kind

    name = display_name(filename)
    folder = tempfile.mkdtemp(prefix="radsearch-query-")
    try:
        path = _save(stream, folder, filename)
        try:
            if os.path.getsize(path) == 0:
                raise ImageReadError(name, "empty upload")
            found = probe(path, file_kind(path))
            _check_pixels(name, found.width, found.height, max_pixels)
            with budget.reserve(name, found.cost):
                pixels = _decode(path, found, frame)
        except Exception as exc:  # hostile bytes: any decoder error is the file's fault
            log.debug("upload %s failed to decode", name, exc_info=True)
            raise ImageReadError(name, _reason(exc, path)) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    _check_pixels(name, pixels.shape[1], pixels.shape[0], max_pixels)
    return pixels
