"""A corpus of hostile and broken image files, built on demand in a folder.

Shared by the tests that must survive any input: indexing (every file ends indexed or
reported) and the server (every upload answers 4xx with a reason, never 5xx). Each
entry is a file an archive or a client can really produce; ``REASONS`` names the
ones whose refusal reason a test checks.
"""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np

from io_fixtures import patch_png_size, write_dicom, write_nifti

# name -> a word the refusal reason must contain (case-insensitive).
REASONS = {
    "palette-no-lut.dcm": "palette",
    "unknown-syntax.dcm": "transfer syntax",
    "nan-affine.nii.gz": "affine",
}


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _dicoms(folder: Path) -> None:
    grey = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    write_dicom(
        folder / "palette-no-lut.dcm",
        grey.astype(np.uint8).astype(np.uint16),
        photometric="PALETTE COLOR",
    )
    path = write_dicom(folder / "unknown-syntax.dcm", grey)
    data = path.read_bytes()  # re-label the transfer syntax with a private, unknown UID
    old = b"1.2.840.10008.1.2.1\0"
    path.write_bytes(data.replace(old, b"1.2.3.4.5.6.7.8.9.1\0", 1))
    write_dicom(folder / "frames-2g.dcm", grey, NumberOfFrames=2**31 - 1)
    (folder / "preamble-garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
    path = write_dicom(folder / "truncated-pixels.dcm", np.zeros((256, 256), np.uint16))
    path.write_bytes(path.read_bytes()[:-60_000])
    path = write_dicom(folder / "no-pixels.dcm", grey)
    from pydicom import dcmread

    ds = dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    (folder / "png-named.dcm").write_bytes(_png(grey.astype(np.uint8)))


def _nifti2_header(shape: tuple[int, ...]) -> bytes:
    """A NIfTI-2 header (540 bytes + extension flag) claiming ``shape``, with no data."""
    import nibabel as nib

    hdr = nib.Nifti2Header()
    hdr.set_data_dtype(np.int16)
    hdr["dim"][: len(shape) + 1] = [len(shape), *shape]
    hdr["vox_offset"] = 544
    return hdr.binaryblock + b"\0" * 4


def _nan_affine_nifti(vol: np.ndarray) -> bytes:
    """A NIfTI-1 file whose sform holds NaN (nibabel refuses to write one itself)."""
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(vol.dtype)
    hdr.set_data_shape(vol.shape)
    hdr["vox_offset"] = 352
    hdr["qform_code"], hdr["sform_code"] = 0, 1
    hdr["srow_x"] = [np.nan, 0, 0, 0]
    hdr["srow_y"] = [0, 1, 0, 0]
    hdr["srow_z"] = [0, 0, 1, 0]
    return hdr.binaryblock + b"\0" * 4 + vol.tobytes(order="F")


def _niftis(folder: Path) -> None:
    vol = np.arange(32 * 32 * 4, dtype=np.int16).reshape(32, 32, 4)
    (folder / "nan-affine.nii.gz").write_bytes(gzip.compress(_nan_affine_nifti(vol)))
    write_nifti(folder / "zero-slices.nii", np.zeros((32, 32, 0), np.int16))
    write_nifti(folder / "zero-plane.nii", np.zeros((0, 0, 4), np.int16))
    (folder / "nifti2-2g-slices.nii").write_bytes(_nifti2_header((64, 64, 2**31 - 1)))
    good = gzip.compress(Path(write_nifti(folder / "tmp.nii", vol)).read_bytes())
    (folder / "tmp.nii").unlink()
    (folder / "truncated.nii.gz").write_bytes(good[: len(good) // 2])
    (folder / "garbage.nii").write_bytes(bytes(range(256)) * 8)
    (folder / "not-gzip.nii.gz").write_bytes(b"plain text, not gzip")


def _rasters(folder: Path) -> None:
    good = _png(np.full((64, 64), 100, np.uint8))
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("this is not an image")
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "truncated.jpg").write_bytes(_jpeg()[:200])
    (folder / "png-magic-only.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    bomb = folder / "bomb.png"  # 60,000 x 60,000 claimed in a 1 KB file
    bomb.write_bytes(good)
    patch_png_size(bomb, 60_000, 60_000)
    (folder / "zero-size.gif").write_bytes(b"GIF89a\0\0\0\0\0\0\0;")
    (folder / "tiff-bad-ifd.tif").write_bytes(b"II*\0" + struct.pack("<I", 2**31) + b"\0" * 16)
    (folder / "no-extension").write_bytes(b"\0\1\2\3 garbage")


def write_bad_inputs(folder: Path) -> list[Path]:
    """Write the corpus into ``folder`` (created); returns the files, sorted."""
    folder.mkdir(parents=True, exist_ok=True)
    _dicoms(folder)
    _niftis(folder)
    _rasters(folder)
    return sorted(p for p in folder.iterdir() if p.is_file())
