"""NIfTI reading with nibabel: axial slices of the canonical (RAS+) volume as 8-bit RGB.

Volumes come in any voxel orientation; indexing slices of the closest canonical
orientation makes ``#slice=N`` mean the same thing for every file (N grows towards the
head). Only the requested slice is read from disk; the orientation is applied to that
slab, which gives the same pixels as ``nib.as_closest_canonical`` without loading the
whole volume per slice. Slices are displayed like DICOM axial images: anterior up,
patient right on the image left.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from radsearch.errors import ImageReadError, SourceError
from radsearch.io.raster import (
    check_file,
    grey_to_rgb,
    robust_range,
    too_large_reason,
    window_to_uint8,
)

# Centre/width presets (scanner units, e.g. Hounsfield) for ``--nifti-window``.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "abdomen": (40.0, 400.0),
    "soft": (40.0, 400.0),
}
# Percentiles of more than this many voxels are estimated on an even subsample.
_MAX_PERCENTILE_VOXELS = 4_000_000
# Deflate never expands data more than ~1032x: a .nii.gz cannot hold more than this
# many times its own size, whatever its header claims.
_MAX_GZIP_RATIO = 1100


def parse_window(text: str | None) -> tuple[float, float] | None:
    """``"lung"`` / ``"-1000,400"`` -> ``(low, high)``; ``None``/``""``/``"auto"`` -> ``None``."""
    if text is None:
        return None
    key = str(text).strip().lower()
    if key in ("", "auto"):
        return None
    if key in WINDOW_PRESETS:
        centre, width = WINDOW_PRESETS[key]
        return centre - width / 2, centre + width / 2
    parts = key.split(",")
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        presets = ", ".join(sorted(WINDOW_PRESETS))
        raise SourceError(
            f"bad window {text!r}: expected LOW,HIGH or one of {presets}, auto"
        ) from None
    if not high > low:
        raise SourceError(f"bad window {text!r}: HIGH must be greater than LOW")
    return low, high


def _load(path):
    check_file(path)
    import nibabel as nib

    try:
        img = nib.load(os.fspath(path))
    except Exception as exc:  # nibabel raises ImageFileError, gzip/zlib/EOF errors...
        raise ImageReadError(path, f"cannot read NIfTI ({type(exc).__name__}: {exc})") from None
    if len(img.shape) < 2:
        raise ImageReadError(path, f"NIfTI has {len(img.shape)} dimension(s), need 2 to 4")
    _check_header(img, path)
    return img


def _check_header(img, path) -> None:
    """Refuse headers no image can have, before anything is allocated or iterated:
    an empty axis, a non-finite affine, or more voxels than the file can hold."""
    shape = tuple(int(n) for n in img.shape)
    if min(shape) <= 0:
        raise ImageReadError(path, f"NIfTI is empty (shape {'x'.join(map(str, shape))})")
    if not np.isfinite(np.asarray(img.affine, dtype=np.float64)).all():
        raise ImageReadError(path, "NIfTI affine is not finite (NaN or infinity)")
    if len(shape) >= 3:
        reason = too_large_reason(*sorted(shape[:3], reverse=True)[:2])
        if reason:
            raise ImageReadError(path, reason)
    size = os.stat(path).st_size
    need = int(np.prod(shape, dtype=object)) * img.get_data_dtype().itemsize
    offset = int(img.header.get("vox_offset", 0) or 0)
    compressed = str(path).lower().endswith(".gz")
    room = size * _MAX_GZIP_RATIO if compressed else size - offset
    if need > room:
        raise ImageReadError(
            path,
            f"NIfTI header claims {'x'.join(map(str, shape))} voxels ({need} bytes) "
            f"but the file holds {size} bytes",
        )


def _orientation(img) -> np.ndarray:
    """nibabel orientation (input axis -> RAS axis, flip) of the three spatial axes."""
    import nibabel as nib

    try:
        ornt = nib.orientations.io_orientation(img.affine)
    except (np.linalg.LinAlgError, ValueError):
        ornt = np.full((3, 2), np.nan)
    if np.isnan(ornt).any():  # degenerate affine: keep voxel order
        ornt = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    return ornt


def _axial_axis(img) -> tuple[int, bool]:
    """(input axis that becomes RAS z, whether it is reversed)."""
    if len(img.shape) == 2:
        return 2, False
    ornt = _orientation(img)
    axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    return axis, ornt[axis, 1] < 0


def nifti_slice_count(path: str | os.PathLike) -> int:
    """Axial slices in the canonical orientation, from the header only."""
    img = _load(path)
    if len(img.shape) == 2:
        return 1
    axis, _ = _axial_axis(img)
    return int(img.shape[axis])


def _volume_stats_key(path) -> tuple[str, int]:
    st = os.stat(path)
    return os.path.abspath(path), st.st_mtime_ns


@functools.lru_cache(maxsize=64)
def _auto_window(abspath: str, mtime_ns: int) -> tuple[float, float]:
    """0.5/99.5 percentiles of the first volume; cached so slices share one window."""
    img = _load(abspath)
    data = img.dataobj
    if len(img.shape) >= 4:
        vol = np.asarray(data[..., 0], dtype=np.float64)
    else:
        vol = np.asarray(data, dtype=np.float64)
    flat = vol.ravel()
    if flat.size > _MAX_PERCENTILE_VOXELS:
        flat = flat[:: flat.size // _MAX_PERCENTILE_VOXELS + 1]
    return robust_range(flat)


def read_nifti_slice(
    path: str | os.PathLike, index: int = 0, window: tuple[float, float] | None = None
) -> np.ndarray:
    """Axial slice ``index`` as ``HxWx3 uint8``; ``window`` (low, high) or automatic."""
    img = _load(path)
    shape = img.shape
    if len(shape) == 2:
        if index != 0:
            raise ImageReadError(path, f"slice {index} out of range (volume has 1)")
        try:
            slab = np.asarray(img.dataobj, dtype=np.float64)[:, :, None]
        except Exception as exc:
            raise ImageReadError(path, f"cannot read NIfTI data ({exc})") from None
        ornt = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
    else:
        axis, reversed_ = _axial_axis(img)
        count = int(shape[axis])
        if not 0 <= index < count:
            raise ImageReadError(path, f"slice {index} out of range (volume has {count})")
        plane = [n for i, n in enumerate(shape[:3]) if i != axis]
        reason = too_large_reason(plane[0], plane[1])
        if reason:
            raise ImageReadError(path, reason)
        stored = count - 1 - index if reversed_ else index
        slicer: list = [slice(None)] * 3
        slicer[axis] = slice(stored, stored + 1)
        if len(shape) >= 4:
            slicer += [0] * (len(shape) - 3)  # first volume of 4-D (and higher) data
        try:
            slab = np.asarray(img.dataobj[tuple(slicer)], dtype=np.float64)
        except Exception as exc:  # truncated or corrupt data block
            raise ImageReadError(
                path, f"cannot read NIfTI data ({type(exc).__name__}: {exc})"
            ) from None
        ornt = _orientation(img)
    import nibabel as nib

    canonical = nib.orientations.apply_orientation(slab, ornt)[:, :, 0]  # [x (R), y (A)]
    # Rows from anterior to posterior, columns from patient right to left.
    display = canonical[::-1, ::-1].T
    if window is None:
        low, high = _auto_window(*_volume_stats_key(path))
    else:
        low, high = float(window[0]), float(window[1])
    return grey_to_rgb(window_to_uint8(display, low, high))
