"""DICOM reading with pydicom (>= 3): one frame to 8-bit RGB, and header-only metadata.

Greyscale frames go through the display pipeline a radiologist's viewer applies
(modality rescale, then the stored VOI LUT or window, then MONOCHROME1 inversion), so
that the encoder sees what a human would; files without a window fall back to robust
percentiles. Only the requested frame is decoded, so multi-frame files stay cheap.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from radsearch.errors import ImageReadError
from radsearch.io.raster import (
    check_file,
    grey_to_rgb,
    scale_to_uint8,
    too_large_reason,
    window_to_uint8,
)

METADATA_KEYS = (
    "modality",
    "body_part",
    "study_uid",
    "series_uid",
    "sop_uid",
    "patient_id",
    "patient_name",
    "patient_birth_date",
    # What a reader needs to recognise a series and order its slices.
    "study_description",
    "series_description",
    "series_number",
    "instance_number",
    "slice_location",
    "image_position",
    "pixel_spacing",
    "slice_thickness",
)
_KEYWORDS = {
    "modality": "Modality",
    "body_part": "BodyPartExamined",
    "study_uid": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID",
    "sop_uid": "SOPInstanceUID",
    "patient_id": "PatientID",
    "patient_name": "PatientName",
    "patient_birth_date": "PatientBirthDate",
    "study_description": "StudyDescription",
    "series_description": "SeriesDescription",
    "series_number": "SeriesNumber",
    "instance_number": "InstanceNumber",
    "slice_location": "SliceLocation",
    "image_position": "ImagePositionPatient",
    "pixel_spacing": "PixelSpacing",
    "slice_thickness": "SliceThickness",
}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
INSTALL_HINT = "pip install 'radsearch[dicom]' (pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)"


def _pydicom():
    import pydicom

    if int(pydicom.__version__.split(".")[0]) < 3:
        raise ImageReadError("pydicom", f"pydicom>=3 is required, found {pydicom.__version__}")
    return pydicom


def read_dicom_header(path: str | os.PathLike, *, with_pixel_tags: bool = False):
    """Parse the header only; ``with_pixel_tags`` also records (without reading) pixel data.

    ``stop_before_pixels`` is the cheap path used when enumerating sources; the decoder
    needs to know whether pixel data exists, which a deferred read tells for little cost.
    """
    check_file(path)
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    try:
        if with_pixel_tags:
            return pydicom.dcmread(path, defer_size="64 KB")
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        raise ImageReadError(path, "not a DICOM file (no DICM header)") from None
    except Exception as exc:  # pydicom raises many types on damaged files
        raise ImageReadError(path, f"cannot parse DICOM ({type(exc).__name__}: {exc})") from None


def _text(ds, keyword: str) -> str:
    """A header value as text; multi-valued ones (pixel spacing, position) joined by ``\\``
    as DICOM itself writes them."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def _frame_count(ds) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def check_frame_count(ds, path: str | os.PathLike) -> int:
    """The frame count, refused when the file is too small to hold that many frames.

    Checked against the file size before any per-frame work: native pixel data needs
    every frame's bytes, encapsulated (compressed) data at least an 8-byte item per
    frame. A 2 KB file claiming 2^31 frames is refused instead of enumerated. The one
    check for every reader: indexing, decoding and the server's uploads.
    """
    frames = _frame_count(ds)
    if frames == 1:
        return 1
    size = os.stat(path).st_size
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    per_frame = 8
    if ts is not None and ts.is_transfer_syntax and not ts.is_compressed:
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        bits = int(ds.get("BitsAllocated") or 8) * int(ds.get("SamplesPerPixel") or 1)
        per_frame = max(1, rows * cols * bits // 8)
    if frames * per_frame > size:
        raise ImageReadError(
            path, f"header claims {frames} frames but the file ({size} bytes) cannot hold them"
        )
    return frames


def metadata_from_header(ds) -> dict[str, Any]:
    """Search-relevant fields of a parsed header (strings, '' when absent) + frame count."""
    meta: dict[str, Any] = {key: _text(ds, kw) for key, kw in _KEYWORDS.items()}
    meta["number_of_frames"] = _frame_count(ds)
    return meta


def dicom_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Header-only metadata: ``METADATA_KEYS`` as strings plus ``number_of_frames`` (int)."""
    return metadata_from_header(read_dicom_header(path))


def dicom_frame_count(path: str | os.PathLike) -> int:
    """Number of frames (1 for single-frame files), read from the header only and
    checked against the file's size (:func:`check_frame_count`)."""
    return check_frame_count(read_dicom_header(path), path)


def _fg_item(ds, frame: int, sequence: str):
    """First item of a functional-group ``sequence`` for ``frame`` (per-frame wins over shared).

    Enhanced CT/MR keep rescale and window there instead of at the top level.
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        seq = per_frame[frame].get(sequence)
        if seq:
            return seq[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        seq = shared[0].get(sequence)
        if seq:
            return seq[0]
    return None


def _first_float(value) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _modality_values(arr: np.ndarray, ds, frame: int) -> np.ndarray:
    """Stored values to modality units (e.g. Hounsfield) via LUT or slope/intercept."""
    if ds.get("ModalityLUTSequence"):
        from pydicom.pixels import apply_modality_lut

        return apply_modality_lut(arr, ds).astype(np.float64)
    slope = _first_float(ds.get("RescaleSlope"))
    intercept = _first_float(ds.get("RescaleIntercept"))
    if slope is None and intercept is None:
        item = _fg_item(ds, frame, "PixelValueTransformationSequence")
        if item is not None:
            slope = _first_float(item.get("RescaleSlope"))
            intercept = _first_float(item.get("RescaleIntercept"))
    out = arr.astype(np.float64)
    if slope is not None and slope != 0:
        out *= slope
    if intercept:
        out += intercept
    return out


def apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR"):
    """DICOM PS3.3 C.11.2.1.2 window to uint8 (LINEAR, LINEAR_EXACT or SIGMOID)."""
    x = np.asarray(values, dtype=np.float64)
    function = (function or "LINEAR").strip().upper()
    if function == "SIGMOID":
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT":
        y = np.clip((x - center) / width + 0.5, 0.0, 1.0)
    else:
        if width <= 1:
            return np.where(x > center - 0.5, 255, 0).astype(np.uint8)
        y = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)


def _voi_to_uint8(values: np.ndarray, ds, frame: int) -> np.ndarray:
    """VOI LUT, else window centre/width, else robust percentiles."""
    if ds.get("VOILUTSequence"):
        from pydicom.pixels import apply_voi

        item = ds.VOILUTSequence[0]
        bits = int(item.LUTDescriptor[2]) if "LUTDescriptor" in item else 16
        out = apply_voi(values, ds, index=0).astype(np.float64)
        return window_to_uint8(out, 0.0, float(2**bits - 1))
    source = ds
    center = _first_float(ds.get("WindowCenter"))
    width = _first_float(ds.get("WindowWidth"))
    if center is None or width is None:
        item = _fg_item(ds, frame, "FrameVOILUTSequence")
        if item is not None:
            source = item
            center = _first_float(item.get("WindowCenter"))
            width = _first_float(item.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        function = str(source.get("VOILUTFunction") or "LINEAR")
        return apply_window(values, center, width, function)
    return scale_to_uint8(values)


def _colour_to_uint8(arr: np.ndarray, ds) -> np.ndarray:
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr[:, :, :3])
    bits = int(ds.get("BitsStored") or 16)
    return window_to_uint8(arr[:, :, :3], 0.0, float(2**bits - 1))


def _undecodable(ts) -> str:
    return (
        f"compressed transfer syntax {ts.name} ({ts}) and no installed decoder can "
        f"read it; {INSTALL_HINT}"
    )


def read_dicom_frame(path: str | os.PathLike, frame: int = 0) -> np.ndarray:
    """Decode frame ``frame`` of a DICOM file to ``HxWx3 uint8`` RGB, or raise ``ImageReadError``."""
    ds = read_dicom_header(path, with_pixel_tags=True)
    if not any(kw in ds for kw in _PIXEL_KEYWORDS):
        damaged = "" if "SOPClassUID" in ds else " (damaged header: no SOP Class UID)"
        raise ImageReadError(path, f"DICOM has no pixel data{damaged}")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    reason = too_large_reason(cols, rows)
    if reason:
        raise ImageReadError(path, reason)
    n_frames = check_frame_count(ds, path)
    if not 0 <= frame < n_frames:
        raise ImageReadError(path, f"frame {frame} out of range (file has {n_frames})")

    from pydicom.pixels import get_decoder, pixel_array

    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is None:
        raise ImageReadError(path, "DICOM has no transfer syntax in its file meta")
    if ts.is_compressed:
        try:
            decoder = get_decoder(ts)
        except NotImplementedError:
            raise ImageReadError(path, f"unsupported transfer syntax {ts.name} ({ts})") from None
        if not decoder.is_available:
            raise ImageReadError(path, _undecodable(ts))
    try:
        arr = pixel_array(os.fspath(path), index=frame if n_frames > 1 else None)
    except RuntimeError as exc:
        if "missing dependencies" in str(exc) or "plugin" in str(exc):
            raise ImageReadError(path, _undecodable(ts)) from None
        raise ImageReadError(path, f"cannot decode pixel data ({exc})") from None
    except Exception as exc:  # damaged or inconsistent pixel data
        raise ImageReadError(
            path, f"cannot decode pixel data ({type(exc).__name__}: {exc})"
        ) from None

    photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip().upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(arr, ds)
        if rgb.dtype != np.uint8:
            rgb = (rgb >> 8).astype(np.uint8)  # 16-bit palette entries
        return np.ascontiguousarray(rgb[:, :, :3])
    if arr.ndim == 3:  # RGB; YBR was converted to RGB by pixel_array
        return _colour_to_uint8(arr, ds)
    grey = _voi_to_uint8(_modality_values(arr, ds, frame), ds, frame)
    if photometric == "MONOCHROME1":  # low values are white
        grey = 255 - grey
    return grey_to_rgb(grey)
