"""The item model shared by every stage, and pixel loading dispatched by file type."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from radsearch.errors import ImageReadError

# Decompression-bomb guard: images with more pixels than this are refused.
MAX_PIXELS = 100_000_000


@dataclass(frozen=True)
class ItemRef:
    """A lazily loaded image: a file, or one frame (DICOM) / slice (NIfTI) of it.

    ``id`` is unique within an index and stable across runs (relative path, plus
    ``#frame=N`` / ``#slice=N``); ``source`` is the file path or URL the pixels come from.
    """

    id: str
    source: str
    frame: int | None = None
    metadata: dict = field(default_factory=dict, hash=False, compare=False)
    # NIfTI intensity window (low, high); None = automatic (percentiles).
    window: tuple[float, float] | None = None


def load_pixels(ref: ItemRef) -> np.ndarray:
    """Decode ``ref`` to an ``HxWx3 uint8`` RGB array, or raise ``ImageReadError``."""
    path = ref.source
    kind = file_kind(path)
    if kind == "dicom":
        from radsearch.io.dicom import read_dicom_frame

        return read_dicom_frame(path, ref.frame or 0)
    if kind == "nifti":
        from radsearch.io.nifti import read_nifti_slice

        return read_nifti_slice(path, ref.frame or 0, window=ref.window)
    from radsearch.io.raster import read_raster

    return read_raster(path)


def read_image(path: str | Path, frame: int = 0) -> np.ndarray:
    """Convenience: decode a file (first frame/slice unless ``frame``) to RGB uint8."""
    return load_pixels(ItemRef(id=str(path), source=str(path), frame=frame))


def file_kind(path: str | Path) -> str:
    """'dicom', 'nifti' or 'raster', from the name and, for DICOM, the magic bytes."""
    name = str(path).lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".dcm", ".dicom")):
        return "dicom"
    if name.endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")):
        return "raster"
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise ImageReadError(path, f"cannot open ({exc.strerror or exc})") from None
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    return "raster"
