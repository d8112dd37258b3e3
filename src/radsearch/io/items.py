"""The item model shared by every stage, the one file-kind detector, and pixel loading.

Item ids of file sources are path text with ``%``, ``#`` and undecodable file-name
bytes percent-encoded (``text_id``), so the ``#frame=N`` / ``#slice=N`` separator of
multi-frame DICOM and NIfTI items can never come from a file name.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Decompression-bomb guard: images with more pixels than this are refused.
MAX_PIXELS = 100_000_000


@dataclass(frozen=True)
class ItemRef:
    """A lazily loaded image: a file, or one frame (DICOM) / slice (NIfTI) of it.

    ``id`` is unique within an index and stable across runs (relative path, plus
    ``#frame=N`` / ``#slice=N``); ``source`` is the file path or URL the pixels come from;
    ``kind`` (dicom, nifti, raster) saves sniffing the file again when known.
    """

    id: str
    source: str
    frame: int | None = None
    metadata: dict = field(default_factory=dict, hash=False, compare=False)
    # NIfTI intensity window (low, high); None = automatic (percentiles).
    window: tuple[float, float] | None = None
    kind: str | None = None


def load_pixels(ref: ItemRef) -> np.ndarray:
    """Decode ``ref`` to an ``HxWx3 uint8`` RGB array, or raise ``ImageReadError``."""
    path = ref.source
    kind = ref.kind or file_kind(path)
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


RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + DICOM_SUFFIXES + RASTER_SUFFIXES
_KIND_OF_SUFFIX = {
    **dict.fromkeys(NIFTI_SUFFIXES, "nifti"),
    **dict.fromkeys(DICOM_SUFFIXES, "dicom"),
    **dict.fromkeys(RASTER_SUFFIXES, "raster"),
}


def image_suffix(name: str) -> str:
    """The image suffix ``name`` ends with (lower case, ``.nii.gz`` whole), or ``''``."""
    lower = str(name).lower()
    return next((s for s in IMAGE_SUFFIXES if lower.endswith(s)), "")


def kind_by_name(name: str | Path) -> str | None:
    """'dicom', 'nifti' or 'raster' from the file name alone; None when it cannot say."""
    return _KIND_OF_SUFFIX.get(image_suffix(str(name)))


def has_dicm_magic(path: str | Path) -> bool:
    """Whether a regular file carries the DICOM ``DICM`` magic (others are never opened)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def file_kind(path: str | Path) -> str:
    """'dicom', 'nifti' or 'raster', from the name and, for DICOM, the magic bytes."""
    return kind_by_name(path) or ("dicom" if has_dicm_magic(path) else "raster")


def text_id(text: str, escape: str = "%#") -> str:
    """``text`` with ``escape`` characters and undecodable bytes percent-encoded.

    File names may hold any byte but ``/`` and NUL; this makes ids valid UTF-8 and keeps
    ``#`` for the frame/slice separator. Names without ``%``/``#`` keep their text.
    """
    out = []
    for ch in text:
        if ch in escape or "\udc80" <= ch <= "\udcff":
            out.extend(f"%{b:02X}" for b in os.fsencode(ch))
        else:
            out.append(ch)
    return "".join(out)
