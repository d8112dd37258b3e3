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


def write_nan_affine_nifti(path: Path) -> Path:
    """A NIfTI-1 whose sform (the affine nibabel uses) holds NaN; nibabel cannot write one."""
    write_nifti(path, np.arange(4 * 4 * 3, dtype=np.int16).reshape(4, 4, 3))
    data = bytearray(path.read_bytes())
    data[252:256] = struct.pack("<hh", 0, 1)  # qform_code 0, sform_code 1
    data[280:296] = struct.pack("<4f", float("nan"), 0.0, 0.0, 0.0)  # srow_x
    path.write_bytes(bytes(data))
    return path


def write_huge_nifti2(path: Path, slices: int = 2**31) -> Path:
    """A tiny NIfTI-2 file whose header claims 1x1x``slices`` voxels."""
    import nibabel as nib

    hdr = nib.Nifti2Header()
    hdr.set_data_shape((1, 1, slices))
    hdr.set_data_dtype(np.uint8)
    hdr["vox_offset"] = 544
    path.write_bytes(hdr.binaryblock + b"\0" * 4 + b"\0" * 64)
    return path


def write_huge_frame_dicom(path: Path, frames: int = 2**31 - 1) -> Path:
    """A 2-frame DICOM rewritten to claim ``frames`` frames (a few hundred bytes)."""
    import pydicom

    write_dicom(path, np.zeros((2, 4, 4), np.uint16))
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = frames
    ds.save_as(path)
    return path


def bad_corpus(root: Path) -> dict[str, int]:
    """Good and hostile files under ``root``: {file name: items it should index}.

    Every bad file must be reported (0 items); the good ones index their frames/slices.
    """
    import os

    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(img).save(root / "good.png")
    write_dicom(root / "good2.dcm", rng.integers(0, 4000, (2, 16, 16), dtype=np.uint16))
    write_nifti(root / "good.nii.gz", rng.integers(-1000, 1000, (16, 16, 3), dtype=np.int16))
    Image.fromarray(img).save(os.fsencode(root) + b"/caf\xe9-\xff.png")  # not UTF-8
    expected = {"good.png": 1, "good2.dcm": 2, "good.nii.gz": 3, "caf\udce9-\udcff.png": 1}

    full = (root / "good.png").read_bytes()
    (root / "truncated.png").write_bytes(full[: len(full) // 2])
    write_dicom(root / "truncated.dcm", rng.integers(0, 4000, (16, 16), dtype=np.uint16))
    dcm = (root / "truncated.dcm").read_bytes()
    (root / "truncated.dcm").write_bytes(dcm[: len(dcm) - 300])
    (root / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage garbage " * 20)
    (root / "noext").write_bytes(b"\0" * 128 + b"DICM" + rng.bytes(300))
    (root / "empty.jpg").write_bytes(b"")
    write_nan_affine_nifti(root / "nan_affine.nii")
    write_nifti(root / "no_slices.nii", np.zeros((4, 4, 0), np.int16))
    write_nifti(root / "zero_plane.nii", np.zeros((0, 0, 4), np.int16))
    write_huge_frame_dicom(root / "frames_2e31.dcm")
    write_huge_nifti2(root / "slices_2e31.nii")
    os.mkfifo(root / "pipe.dcm")
    os.mkfifo(root / "pipe")
    bad = [
        "truncated.png", "truncated.dcm", "garbage.dcm", "noext", "empty.jpg",
        "nan_affine.nii", "no_slices.nii", "zero_plane.nii", "frames_2e31.dcm",
        "slices_2e31.nii", "pipe.dcm", "pipe",
    ]  # fmt: skip
    expected.update(dict.fromkeys(bad, 0))
    return expected
