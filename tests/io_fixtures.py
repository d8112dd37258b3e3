"""Builders of small synthetic image files (PNG, DICOM, NIfTI) for the io tests."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def patch_png_size(path: Path, width: int, height: int) -> None:
    """Rewrite a PNG's IHDR width/height (and its CRC) without touching the pixel data.

    Gives a valid-looking header for a huge image in a few bytes, to test that the
    size cap fires before decoding.
    """
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:20] = struct.pack(">I", width)
    data[20:24] = struct.pack(">I", height)
    crc = zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF
    data[29:33] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    signed: bool = False,
    **attrs,
) -> Path:
    """Write ``pixels`` (HxW or FxHxW integer array, or HxWx3 uint8) as explicit-VR LE DICOM.

    Extra keyword arguments become dataset attributes (e.g. ``RescaleSlope=2``).
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.PatientID = "P001"
    ds.PatientName = "Doe^Jane"
    ds.PatientBirthDate = "19700101"
    if photometric == "RGB":
        arr = np.ascontiguousarray(pixels, dtype=np.uint8)
        ds.SamplesPerPixel = 3
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        rows, cols = arr.shape[:2]
    else:
        arr = np.ascontiguousarray(pixels, dtype=np.int16 if signed else np.uint16)
        ds.SamplesPerPixel = 1
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        rows, cols = arr.shape[-2:]
        if arr.ndim == 3:
            ds.NumberOfFrames = arr.shape[0]
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = rows, cols
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def write_nifti(path: Path, volume: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Save ``volume`` as NIfTI-1 (``.nii`` or ``.nii.gz``) with ``affine`` (identity default)."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(volume), np.eye(4) if affine is None else affine)
    nib.save(img, str(path))
    return path
