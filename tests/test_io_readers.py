"""Readers: raster (Pillow), DICOM (pydicom), NIfTI (nibabel) -> HxWx3 uint8 RGB."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from io_fixtures import patch_png_size, write_dicom, write_nifti
from radsearch.errors import ImageReadError, SourceError
from radsearch.io import items
from radsearch.io.dicom import dicom_frame_count, dicom_metadata, read_dicom_frame
from radsearch.io.items import ItemRef, load_pixels, read_image
from radsearch.io.nifti import nifti_slice_count, parse_window, read_nifti_slice
from radsearch.io.raster import read_raster

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")


def dicom_sample(name: str):
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available (pip install pydicom-data)")
    return path


def assert_rgb(arr: np.ndarray, shape: tuple[int, int]) -> None:
    assert arr.dtype == np.uint8
    assert arr.shape == (*shape, 3)


def assert_grey(arr: np.ndarray) -> np.ndarray:
    assert (arr[:, :, 0] == arr[:, :, 1]).all() and (arr[:, :, 0] == arr[:, :, 2]).all()
    return arr[:, :, 0]


def reason_of(excinfo) -> str:
    return excinfo.value.reason


# ---------------------------------------------------------------- raster


def test_16bit_png_ramp_is_scaled_linearly(tmp_path):
    ramp = np.linspace(0, 65535, 256).round().astype(np.uint16)
    path = tmp_path / "ramp16.png"
    Image.fromarray(np.tile(ramp, (8, 1))).save(path)
    assert Image.open(path).mode.startswith("I")  # really stored as 16 bit
    out = read_raster(path)
    assert_rgb(out, (8, 256))
    row = assert_grey(out)[0].astype(int)
    assert (np.diff(row) >= 0).all()
    assert row[0] == 0 and row[-1] == 255
    assert abs(row[128] - 128) <= 3


def test_16bit_png_hot_pixel_does_not_wash_out(tmp_path):
    img = np.tile(np.linspace(0, 1000, 200).astype(np.uint16), (200, 1))
    img[0, 0] = 65535  # one hot pixel; min/max scaling would map 1000 to ~4
    path = tmp_path / "hot.png"
    Image.fromarray(img).save(path)
    grey = assert_grey(read_raster(path))
    assert grey[100, -1] == 255
    assert 120 <= grey[100, 100] <= 135


def test_float_tiff_is_scaled(tmp_path):
    ramp = np.tile(np.linspace(-1000.0, 1000.0, 100, dtype=np.float32), (4, 1))
    path = tmp_path / "float.tif"
    Image.fromarray(ramp, mode="F").save(path)
    grey = assert_grey(read_raster(path))
    assert grey[0, 0] == 0 and grey[0, -1] == 255
    assert (np.diff(grey[0].astype(int)) >= 0).all()


def test_rgba_composited_on_black(tmp_path):
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[0, :, 3] = 255
    rgba[1, 0, 3] = 0
    rgba[1, 1:, 3] = 128
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    out = read_raster(path)
    assert_rgb(out, (2, 3))
    assert out[0, 0].tolist() == [200, 100, 50]
    assert out[1, 0].tolist() == [0, 0, 0]
    assert out[1, 1].tolist() == [100, 50, 25]


def test_la_greyscale_alpha(tmp_path):
    la = np.array([[[90, 255], [90, 0]]], dtype=np.uint8)
    path = tmp_path / "la.png"
    Image.fromarray(la, mode="LA").save(path)
    out = read_raster(path)
    assert out[0, 0].tolist() == [90, 90, 90]
    assert out[0, 1].tolist() == [0, 0, 0]


def test_palette_image(tmp_path):
    img = Image.new("P", (4, 2))
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2, 1, 2, 2, 1, 0])
    path = tmp_path / "pal.png"
    img.save(path)
    out = read_raster(path)
    assert_rgb(out, (2, 4))
    assert out[0, 1].tolist() == [255, 0, 0]
    assert out[0, 2].tolist() == [0, 255, 0]
    assert out[1, 3].tolist() == [0, 0, 0]


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([10, 20, 30, 255, 255, 255] + [0] * (256 * 3 - 6))
    img.putdata([0, 1])
    path = tmp_path / "palt.png"
    img.save(path, transparency=1)
    out = read_raster(path)
    assert out[0, 0].tolist() == [10, 20, 30]
    assert out[0, 1].tolist() == [0, 0, 0]  # transparent entry over black


def test_greyscale_replicated(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.full((5, 7), 77, dtype=np.uint8), mode="L").save(path)
    out = read_raster(path)
    assert_rgb(out, (5, 7))
    assert (out == 77).all()


@pytest.mark.parametrize("suffix", [".tif", ".bmp", ".gif"])
def test_lossless_formats(tmp_path, suffix):
    rgb = np.zeros((6, 4, 3), dtype=np.uint8)
    rgb[:, :2] = (255, 0, 0)
    rgb[:, 2:] = (0, 0, 255)
    path = tmp_path / f"img{suffix}"
    Image.fromarray(rgb).save(path)
    out = read_raster(path)
    assert_rgb(out, (6, 4))
    assert (out == rgb).all()


def test_jpeg(tmp_path):
    path = tmp_path / "img.jpg"
    Image.fromarray(np.full((16, 16, 3), (30, 120, 220), dtype=np.uint8)).save(path, quality=95)
    out = read_raster(path)
    assert_rgb(out, (16, 16))
    assert np.abs(out.astype(int) - (30, 120, 220)).max() <= 4


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs 90 degrees clockwise
    path = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    out = read_raster(path)
    assert out.shape == (40, 20, 3)
    assert out[:20].mean() > 200 and out[20:].mean() < 50  # white half now on top


def test_zero_byte(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError) as exc:
        read_raster(path)
    assert reason_of(exc) == "zero-byte file"


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError) as exc:
        read_image(tmp_path / "nope.png")
    assert reason_of(exc) == "no such file"


def test_text_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello, not an image\n")
    with pytest.raises(ImageReadError) as exc:
        read_raster(path)
    assert reason_of(exc) == "not an image (cannot identify format)"
    assert str(exc.value).startswith(str(path))


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated(tmp_path, suffix):
    rng = np.random.default_rng(0)
    path = tmp_path / f"noise{suffix}"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as exc:
        read_raster(path)
    assert reason_of(exc) == "truncated image data"


def test_huge_png_header_fails_fast(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("L", (1, 1)).save(path)
    patch_png_size(path, 50_000, 50_000)
    start = time.perf_counter()
    with pytest.raises(ImageReadError) as exc:
        read_raster(path)
    assert time.perf_counter() - start < 1.0
    assert reason_of(exc).startswith("image too large")
    assert str(items.MAX_PIXELS) in reason_of(exc)


def test_pixel_cap_checked_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.new("L", (20, 10)).save(path)
    monkeypatch.setattr(items, "MAX_PIXELS", 199)
    with pytest.raises(ImageReadError) as exc:
        read_raster(path)
    assert reason_of(exc) == "image too large: 20x10 pixels > limit 199"
    monkeypatch.setattr(items, "MAX_PIXELS", 200)
    assert read_raster(path).shape == (10, 20, 3)


# ---------------------------------------------------------------- DICOM


def test_ct_small_rescaled_and_scaled():
    path = dicom_sample("CT_small.dcm")
    out = read_dicom_frame(path, 0)
    assert_rgb(out, (128, 128))
    grey = assert_grey(out).astype(float)
    raw = pydicom.dcmread(path).pixel_array.astype(float)
    assert grey.min() == 0 and grey.max() == 255
    assert np.corrcoef(grey.ravel(), raw.ravel())[0, 1] > 0.95


def test_mr_small_uses_stored_window():
    path = dicom_sample("MR_small.dcm")
    ds = pydicom.dcmread(path)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    assert "RescaleSlope" not in ds
    x = ds.pixel_array.astype(float)
    expected = np.rint(np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1) * 255)
    grey = assert_grey(read_dicom_frame(path, 0))
    assert (grey == expected).all()


def test_rescale_then_window_exact(tmp_path):
    stored = np.array([[475, 488, 500], [512, 525, 600]])
    path = write_dicom(
        tmp_path / "rw.dcm",
        stored,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=0.5,
        WindowWidth=101,
    )
    # HU = 2*stored - 1000 -> [-50, -24, 0], [24, 50, 200]
    grey = assert_grey(read_image(path))
    assert grey.tolist() == [[0, 66, 128], [189, 255, 255]]


def test_signed_pixels_with_window(tmp_path):
    stored = np.array([[-100, 0, 100]])
    path = write_dicom(tmp_path / "s.dcm", stored, signed=True, WindowCenter=0.5, WindowWidth=201)
    assert assert_grey(read_image(path)).tolist() == [[0, 128, 255]]


def test_monochrome1_inverted_exactly(tmp_path):
    stored = np.arange(0, 1200, 10).reshape(10, 12)
    m2 = assert_grey(read_image(write_dicom(tmp_path / "m2.dcm", stored)))
    m1 = assert_grey(
        read_image(write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1"))
    )
    assert (m1.astype(int) + m2.astype(int) == 255).all()
    assert m2[0, 0] == 0 and m2[-1, -1] == 255


def test_no_window_uses_robust_percentiles(tmp_path):
    stored = np.tile(np.arange(0, 4000, 20), (200, 1))
    stored[0, 0] = 60000
    grey = assert_grey(read_image(write_dicom(tmp_path / "p.dcm", stored)))
    assert grey[50, 0] == 0 and grey[50, -1] == 255


def test_synthetic_multiframe_decodes_requested_frame(tmp_path):
    frames = np.stack([np.full((4, 5), 100 * f) for f in range(4)])
    path = write_dicom(tmp_path / "mf.dcm", frames, WindowCenter=500, WindowWidth=1001)
    assert dicom_frame_count(path) == 4
    for f in range(4):
        grey = assert_grey(read_dicom_frame(path, f))
        expected = np.rint(np.clip((100 * f - 499.5) / 1000 + 0.5, 0, 1) * 255)
        assert (grey == expected).all()
    with pytest.raises(ImageReadError) as exc:
        read_dicom_frame(path, 4)
    assert "out of range" in reason_of(exc)


def test_emri_multiframe():
    path = dicom_sample("emri_small.dcm")
    assert dicom_frame_count(path) == 10
    first, last = read_dicom_frame(path, 0), read_dicom_frame(path, 9)
    assert_rgb(first, (64, 64))
    assert not np.array_equal(first, last)
    assert np.array_equal(load_pixels(ItemRef("x#frame=9", path, 9)), last)


def test_rgb_dicom_exact(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    path = write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB")
    assert (read_image(path) == rgb).all()


def test_rgb_and_ybr_testfiles():
    rgb_path = dicom_sample("SC_rgb.dcm")
    out = read_image(rgb_path)
    assert (out == pydicom.dcmread(rgb_path).pixel_array).all()
    ybr = read_image(dicom_sample("SC_ybr_full_uncompressed.dcm"))
    assert ybr.shape == out.shape
    assert np.abs(ybr.astype(int) - out.astype(int)).mean() < 3  # YBR converted to RGB


def test_us_rgb():
    out = read_image(dicom_sample("US1_UNCR.dcm"))
    assert_rgb(out, (480, 640))
    assert not (out[:, :, 0] == out[:, :, 1]).all() or out.std() > 0


def test_monochrome1_testfile_is_inverted():
    path = dicom_sample("RG1_UNCR.dcm")
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    grey = assert_grey(read_image(path)).astype(float)
    raw = pydicom.dcmread(path).pixel_array.astype(float)
    assert np.corrcoef(grey.ravel()[::97], raw.ravel()[::97])[0, 1] < -0.9


def test_rle_matches_uncompressed():
    assert np.array_equal(
        read_image(dicom_sample("MR_small_RLE.dcm")), read_image(dicom_sample("MR_small.dcm"))
    )


def test_jpeg2000_decoded_when_plugin_installed():
    from pydicom.pixels import get_decoder

    path = dicom_sample("MR_small_jp2klossless.dcm")
    ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if not get_decoder(ts).is_available:
        pytest.skip("no JPEG 2000 decoder installed")
    assert np.array_equal(read_image(path), read_image(dicom_sample("MR_small.dcm")))


def test_jpeg2000_without_decoder_names_syntax_and_extra(monkeypatch):
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000Lossless

    path = dicom_sample("MR_small_jp2klossless.dcm")
    monkeypatch.setattr(get_decoder(JPEG2000Lossless), "_available", {})
    with pytest.raises(ImageReadError) as exc:
        read_image(path)
    reason = reason_of(exc)
    assert "JPEG 2000" in reason and "1.2.840.10008.1.2.4.90" in reason
    assert "radsearch[dicom]" in reason and "pylibjpeg-openjpeg" in reason


def test_dicom_without_pixel_data(tmp_path):
    ds = pydicom.dcmread(dicom_sample("CT_small.dcm"))
    del ds.PixelData
    path = tmp_path / "nopix.dcm"
    ds.save_as(path)
    with pytest.raises(ImageReadError) as exc:
        read_image(path)
    assert reason_of(exc) == "DICOM has no pixel data"


def test_dicom_too_large_before_decoding(tmp_path):
    path = write_dicom(tmp_path / "big.dcm", np.zeros((2, 2)), Rows=50_000, Columns=50_000)
    with pytest.raises(ImageReadError) as exc:
        read_image(path)
    assert reason_of(exc) == f"image too large: 50000x50000 pixels > limit {items.MAX_PIXELS}"


@pytest.mark.parametrize("content", [b"", b"this is not DICOM at all" * 20])
def test_not_dicom(tmp_path, content):
    path = tmp_path / "fake.dcm"
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as exc:
        read_image(path)
    assert reason_of(exc) in ("zero-byte file", "not a DICOM file (no DICM header)")


def test_extensionless_dicom_dispatched_by_magic(tmp_path):
    src = write_dicom(tmp_path / "a.dcm", np.arange(12).reshape(3, 4))
    plain = tmp_path / "IM0001"
    plain.write_bytes(src.read_bytes())
    assert np.array_equal(read_image(plain), read_image(src))


def test_dicom_metadata(tmp_path):
    meta = dicom_metadata(dicom_sample("CT_small.dcm"))
    assert meta["modality"] == "CT"
    assert meta["number_of_frames"] == 1
    for key in (
        "modality",
        "body_part",
        "study_uid",
        "series_uid",
        "sop_uid",
        "patient_id",
        "patient_name",
        "patient_birth_date",
    ):
        assert isinstance(meta[key], str)
    path = write_dicom(tmp_path / "m.dcm", np.zeros((2, 2)), BodyPartExamined="CHEST")
    meta = dicom_metadata(path)
    assert meta["patient_id"] == "P001"
    assert meta["patient_name"] == "Doe^Jane"
    assert meta["patient_birth_date"] == "19700101"
    assert meta["body_part"] == "CHEST"
    assert meta["sop_uid"] == str(pydicom.dcmread(path).SOPInstanceUID)
    assert dicom_metadata(write_dicom(tmp_path / "n.dcm", np.zeros((2, 2))))["body_part"] == ""


# ---------------------------------------------------------------- NIfTI


X, Y, Z = 6, 5, 4


def pattern_volume() -> np.ndarray:
    x, y, z = np.meshgrid(np.arange(X), np.arange(Y), np.arange(Z), indexing="ij")
    return (50 * z + 10 * y + x).astype(np.float32)  # max 195: window (0, 255) is identity


def test_nifti_slice_exact_and_oriented(tmp_path):
    vol = pattern_volume()
    path = write_nifti(tmp_path / "v.nii", vol)
    assert nifti_slice_count(path) == Z
    out = read_nifti_slice(path, 2, window=(0, 255))
    assert_rgb(out, (Y, X))
    grey = assert_grey(out)
    # Anterior (max y) on the top row, patient right (max x) on the left column.
    assert grey[0, 0] == vol[X - 1, Y - 1, 2]
    assert grey[Y - 1, X - 1] == vol[0, 0, 2]
    expected = vol[::-1, ::-1, 2].T
    assert (grey == expected).all()


def test_nifti_reoriented_matches_canonical(tmp_path):
    vol = pattern_volume()
    # Stored as (z, x, y) with z reversed and x flipped (an LPI-like layout).
    stored = np.transpose(vol, (2, 0, 1))[::-1, ::-1, :].copy()
    affine = np.zeros((4, 4))
    affine[2, 0] = -1.0  # voxel axis 0 -> -z
    affine[0, 1] = -1.0  # voxel axis 1 -> -x
    affine[1, 2] = 1.0  # voxel axis 2 -> +y
    affine[3, 3] = 1.0
    path = write_nifti(tmp_path / "r.nii.gz", stored, affine)
    canonical = nib.as_closest_canonical(nib.load(path)).get_fdata()
    assert nifti_slice_count(path) == Z
    for k in range(Z):
        grey = assert_grey(read_nifti_slice(path, k, window=(0, 255)))
        assert (grey == np.rint(canonical[::-1, ::-1, k].T)).all()
        assert (grey == vol[::-1, ::-1, k].T).all()


def test_nifti_window_and_auto(tmp_path):
    vol = pattern_volume()
    path = write_nifti(tmp_path / "w.nii", vol)
    clipped = assert_grey(read_nifti_slice(path, 0, window=(10.0, 20.0)))
    v = vol[::-1, ::-1, 0].T
    assert (clipped[v <= 10] == 0).all() and (clipped[v >= 20] == 255).all()
    from radsearch.io import nifti

    nifti._auto_window.cache_clear()
    auto0 = assert_grey(read_nifti_slice(path, 0))
    auto3 = assert_grey(read_nifti_slice(path, Z - 1))
    assert nifti._auto_window.cache_info().hits >= 1  # one window for the whole volume
    assert auto0.min() == 0 and auto3.max() == 255  # extremes of the volume
    assert auto0.max() < 255 and auto3.min() > 0


def test_nifti_4d_uses_first_volume(tmp_path):
    vol = pattern_volume()
    path = write_nifti(tmp_path / "t.nii", np.stack([vol, 255 - vol], axis=-1))
    assert nifti_slice_count(path) == Z
    grey = assert_grey(read_nifti_slice(path, 1, window=(0, 255)))
    assert (grey == vol[::-1, ::-1, 1].T).all()


def test_nifti_errors(tmp_path):
    path = write_nifti(tmp_path / "e.nii", pattern_volume())
    with pytest.raises(ImageReadError) as exc:
        read_nifti_slice(path, Z)
    assert "out of range" in reason_of(exc)
    bad = tmp_path / "bad.nii"
    bad.write_text("not nifti" * 100)
    with pytest.raises(ImageReadError):
        read_nifti_slice(bad, 0)
    with pytest.raises(ImageReadError) as exc:
        nifti_slice_count(tmp_path / "missing.nii.gz")
    assert reason_of(exc) == "no such file"


def test_load_pixels_passes_nifti_window(tmp_path):
    path = write_nifti(tmp_path / "l.nii.gz", pattern_volume())
    ref = ItemRef("l.nii.gz#slice=3", str(path), 3, window=(0.0, 255.0))
    assert np.array_equal(load_pixels(ref), read_nifti_slice(path, 3, window=(0, 255)))


def test_parse_window():
    assert parse_window("brain") == (0.0, 80.0)
    assert parse_window("lung") == (-1350.0, 150.0)
    assert parse_window("bone") == (-500.0, 1300.0)
    assert parse_window("abdomen") == parse_window("soft") == (-160.0, 240.0)
    assert parse_window("-1000, 400") == (-1000.0, 400.0)
    assert parse_window("auto") is None and parse_window(None) is None
    for bad in ("liver", "5,1", "1,2,3"):
        with pytest.raises(SourceError):
            parse_window(bad)


def test_upload_frame_count_is_the_readers_check(tmp_path):
    """The server's upload probe (and the study route's frame count) refuse an
    impossible frame count with io's own rule."""
    from radsearch.io.dicom import check_frame_count, read_dicom_header
    from radsearch.io.upload import DecodeBudget, read_upload

    grey = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    path = write_dicom(tmp_path / "frames.dcm", grey, NumberOfFrames=2**31 - 1)
    with pytest.raises(ImageReadError) as io_err:
        check_frame_count(read_dicom_header(path), path)
    with open(path, "rb") as fh, pytest.raises(ImageReadError) as up_err:
        read_upload(fh, "frames.dcm", max_pixels=10**8, budget=DecodeBudget())
    assert "cannot hold them" in io_err.value.reason
    assert up_err.value.reason == io_err.value.reason.replace(str(path), "upload")
    with pytest.raises(ImageReadError) as count_err:
        dicom_frame_count(path)
    assert count_err.value.reason == io_err.value.reason
