"""Sources: folders, CSV manifests and single files enumerated as ItemRefs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from io_fixtures import write_dicom, write_nifti
from radsearch.errors import SourceError
from radsearch.io import dicom, nifti, raster
from radsearch.io.sources import iter_source, parse_where

RADBENCH = Path(__file__).resolve().parents[2] / "shared" / "radbench"


def png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4), value, dtype=np.uint8)).save(path)
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def no_decoding(monkeypatch):
    """Make any pixel decoding during enumeration fail loudly."""

    def boom(*args, **kwargs):
        raise AssertionError("pixels decoded during enumeration")

    monkeypatch.setattr(raster, "read_raster", boom)
    monkeypatch.setattr(dicom, "read_dicom_frame", boom)
    monkeypatch.setattr(nifti, "read_nifti_slice", boom)


@pytest.fixture
def archive(tmp_path):
    root = tmp_path / "archive"
    png(root / "normal" / "b.png")
    png(root / "normal" / "a.png")
    png(root / "tumour" / "sub" / "c.png")
    png(root / "top.png")
    png(root / ".hidden" / "h.png")
    png(root / "normal" / ".dot.png")
    (root / "notes.txt").write_text("not an image")
    write_dicom(root / "ct" / "mf.dcm", np.zeros((3, 2, 2)), Modality="CT")
    single = write_dicom(root / "ct" / "one.dcm", np.zeros((2, 2)), Modality="MR")
    (root / "ct" / "IM0001").write_bytes(single.read_bytes())
    (root / "ct" / "1.2.840.99").write_bytes(single.read_bytes())
    write_nifti(root / "vol" / "v.nii.gz", np.zeros((3, 3, 5), dtype=np.float32))
    return root


def test_folder_enumeration(archive, no_decoding):
    refs = list(iter_source(archive, label_from_folder=True))
    ids = [r.id for r in refs]
    assert ids == [
        "ct/1.2.840.99",
        "ct/IM0001",
        "ct/mf.dcm#frame=0",
        "ct/mf.dcm#frame=1",
        "ct/mf.dcm#frame=2",
        "ct/one.dcm",
        "normal/a.png",
        "normal/b.png",
        "top.png",
        "tumour/sub/c.png",
        *[f"vol/v.nii.gz#slice={n}" for n in range(5)],
    ]
    by_id = {r.id: r for r in refs}
    assert by_id["normal/a.png"].metadata == {"label": "normal"}
    assert by_id["tumour/sub/c.png"].metadata["label"] == "sub"  # immediate parent
    assert by_id["top.png"].metadata["label"] == ""
    assert by_id["normal/a.png"].source == str(archive / "normal" / "a.png")
    assert by_id["normal/a.png"].frame is None
    frame = by_id["ct/mf.dcm#frame=2"]
    assert frame.frame == 2
    assert frame.metadata["modality"] == "CT" and frame.metadata["number_of_frames"] == "3"
    assert frame.metadata["patient_id"] == "P001" and frame.metadata["label"] == "ct"
    assert "patient_name" not in frame.metadata and "patient_birth_date" not in frame.metadata
    assert by_id["ct/one.dcm"].frame is None and by_id["ct/one.dcm"].metadata["modality"] == "MR"
    assert by_id["vol/v.nii.gz#slice=4"].frame == 4
    assert all(isinstance(v, str) for r in refs for v in r.metadata.values())
    assert ids == [r.id for r in iter_source(archive, label_from_folder=True)]  # deterministic


def test_folder_without_labels(archive):
    refs = list(iter_source(archive))
    assert "label" not in next(r for r in refs if r.id == "top.png").metadata


def test_folder_where_filters(archive):
    ct = [r.id for r in iter_source(archive, where={"modality": "CT"})]
    assert ct == [f"ct/mf.dcm#frame={n}" for n in range(3)]
    both = [r.id for r in iter_source(archive, where={"modality": "CT,MR"})]
    assert len(both) == 6
    labelled = [
        r.id for r in iter_source(archive, label_from_folder=True, where={"label": "normal,sub"})
    ]
    assert labelled == ["normal/a.png", "normal/b.png", "tumour/sub/c.png"]
    with pytest.raises(SourceError, match="cannot filter on 'colour'"):
        iter_source(archive, where={"colour": "red"})
    with pytest.raises(SourceError, match="split"):
        iter_source(archive, split="train")


def test_folder_skips_non_image_dicom(tmp_path):
    ds_path = write_dicom(tmp_path / "img.dcm", np.zeros((2, 2)))
    import pydicom

    ds = pydicom.dcmread(ds_path)
    for kw in ("PixelData", "Rows", "Columns"):
        delattr(ds, kw)
    ds.save_as(tmp_path / "report.dcm")
    assert [r.id for r in iter_source(tmp_path)] == ["img.dcm"]


def test_nifti_step_range_window(tmp_path, no_decoding):
    write_nifti(tmp_path / "v.nii", np.zeros((2, 2, 10), dtype=np.float32))
    refs = list(iter_source(tmp_path, nifti_step=3))
    assert [r.frame for r in refs] == [0, 3, 6, 9]
    refs = list(iter_source(tmp_path, nifti_range=(2, 8), nifti_step=2, nifti_window="lung"))
    assert [r.id for r in refs] == ["v.nii#slice=2", "v.nii#slice=4", "v.nii#slice=6"]
    assert all(r.window == (-1350.0, 150.0) for r in refs)
    refs = list(iter_source(tmp_path / "v.nii", nifti_window=(0, 100)))
    assert len(refs) == 10 and refs[0].window == (0.0, 100.0)
    with pytest.raises(SourceError):
        iter_source(tmp_path, nifti_step=0)


def test_single_file_and_missing(tmp_path):
    path = png(tmp_path / "x.png")
    refs = list(iter_source(path))
    assert [(r.id, r.source) for r in refs] == [("x.png", str(path))]
    with pytest.raises(SourceError) as exc:
        iter_source(tmp_path / "gone")
    assert str(exc.value) == f"{tmp_path / 'gone'}: no such file or folder"


def test_csv_manifest(tmp_path, no_decoding):
    data = tmp_path / "data"
    png(data / "img" / "a.png")
    png(data / "img" / "b.png")
    absolute = png(tmp_path / "elsewhere" / "c.png")
    manifest = write_csv(
        data / "m.csv",
        ["filepath", "label", "split", "modality"],
        [
            ["img/a.png", "pneumonia", "train", "CR"],
            ["img/b.png", "normal", "test", "CT"],
            [str(absolute), "normal", "train", "CT"],
        ],
    )
    refs = list(iter_source(manifest))
    assert [r.id for r in refs] == ["img/a.png", "img/b.png", str(absolute)]  # row order
    assert refs[0].source == str(data / "img" / "a.png")
    assert refs[2].source == str(absolute)
    assert refs[0].metadata == {"label": "pneumonia", "split": "train", "modality": "CR"}

    assert [r.id for r in iter_source(manifest, split="train")] == ["img/a.png", str(absolute)]
    assert [r.id for r in iter_source(manifest, where={"modality": "CT"})] == [
        "img/b.png",
        str(absolute),
    ]
    both = iter_source(manifest, split="train", where={"label": "normal", "modality": "CT,MR"})
    assert [r.id for r in both] == [str(absolute)]

    other_root = tmp_path / "mirror"
    png(other_root / "img" / "a.png")
    refs = list(iter_source(manifest, root=other_root))
    assert refs[0].source == str(other_root / "img" / "a.png")


def test_csv_errors(tmp_path):
    bad = write_csv(tmp_path / "bad.csv", ["file", "label"], [["a.png", "x"]])
    with pytest.raises(SourceError) as exc:
        iter_source(bad)
    assert str(bad) in str(exc.value) and "file, label" in str(exc.value)
    assert "filepath" in str(exc.value)

    dup = write_csv(tmp_path / "dup.csv", ["filepath"], [["a.png"], ["b.png"], ["a.png"]])
    with pytest.raises(SourceError, match="duplicate filepath 'a.png'"):
        iter_source(dup)

    nosplit = write_csv(tmp_path / "ns.csv", ["filepath", "label"], [["a.png", "x"]])
    with pytest.raises(SourceError, match="'split' column"):
        iter_source(nosplit, split="train")
    with pytest.raises(SourceError, match="cannot filter on 'anatomy'"):
        iter_source(nosplit, where={"anatomy": "chest"})

    empty = write_csv(tmp_path / "empty.csv", ["filepath", "label"], [["", "x"]])
    with pytest.raises(SourceError, match="line 2"):
        iter_source(empty)


@pytest.mark.parametrize("column", ["path", "image_path", "filepath"])
def test_csv_path_column_aliases(tmp_path, column):
    manifest = write_csv(tmp_path / "m.csv", [column, "x"], [["a.png", "1"]])
    refs = list(iter_source(manifest))
    assert refs[0].id == "a.png" and refs[0].metadata == {"x": "1"}


def test_paper_one_hot_csv(tmp_path):
    manifest = write_csv(
        tmp_path / "paper.csv",
        ["image_path", "Atelectasis", "Effusion", "No Finding", "age", "split"],
        [
            ["a.png", "1", "1.0", "0", "54", "train"],
            ["b.png", "0", "0.0", "1", "61", "train"],
            ["c.png", "0", "1", "0.0", "0", "test"],
            ["d.png", "0", "0", "0", "1", "test"],
        ],
    )
    refs = {r.id: r.metadata for r in iter_source(manifest)}
    assert refs["a.png"]["label"] == "Atelectasis|Effusion"
    assert refs["b.png"]["label"] == "No Finding"
    assert refs["c.png"]["label"] == "Effusion"
    assert refs["d.png"]["label"] == ""
    assert refs["a.png"]["Atelectasis"] == "1" and refs["a.png"]["age"] == "54"
    only_effusion = iter_source(manifest, where={"label": "Effusion"})
    assert [r.id for r in only_effusion] == ["c.png"]


def test_one_hot_not_derived_when_label_present_or_single_column(tmp_path):
    with_label = write_csv(
        tmp_path / "l.csv", ["filepath", "label", "a", "b"], [["x.png", "given", "1", "0"]]
    )
    assert next(iter_source(with_label)).metadata["label"] == "given"
    single = write_csv(tmp_path / "s.csv", ["filepath", "flag", "name"], [["x.png", "1", "q"]])
    assert "label" not in next(iter_source(single)).metadata


def test_csv_dicom_rows_merge_header_with_csv_winning(tmp_path):
    write_dicom(tmp_path / "mf.dcm", np.zeros((2, 2, 2)), Modality="CT")
    write_dicom(tmp_path / "s.dcm", np.zeros((2, 2)), Modality="CT")
    manifest = write_csv(
        tmp_path / "m.csv",
        ["filepath", "modality", "label"],
        [["mf.dcm", "", "x"], ["s.dcm", "MR", "y"]],
    )
    refs = list(iter_source(manifest))
    assert [r.id for r in refs] == ["mf.dcm#frame=0", "mf.dcm#frame=1", "s.dcm"]
    assert refs[0].metadata["modality"] == ""  # the CSV column wins, even when empty
    assert refs[2].metadata["modality"] == "MR"
    assert refs[2].metadata["sop_uid"] and refs[2].metadata["label"] == "y"
    assert [r.id for r in iter_source(manifest, where={"patient_id": "P001", "label": "y"})] == [
        "s.dcm"
    ]


def test_missing_csv_files_still_enumerate(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", ["filepath"], [["gone.dcm"], ["gone.png"]])
    refs = list(iter_source(manifest))
    assert [r.id for r in refs] == ["gone.dcm", "gone.png"]


def test_parse_where():
    assert parse_where(["modality=CT", "anatomy = chest", "modality=MR"]) == {
        "modality": "CT,MR",
        "anatomy": "chest",
    }
    assert parse_where(None) == {}
    assert parse_where(["note=a=b"]) == {"note": "a=b"}
    with pytest.raises(SourceError):
        parse_where(["modality"])
    with pytest.raises(SourceError):
        parse_where(["=CT"])


@pytest.mark.radbench
def test_radbench_train_split():
    manifest = RADBENCH / "radbench.csv"
    if not manifest.exists():
        pytest.skip("../shared/radbench not present")
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    expected = [r for r in rows if r["split"] == "train"]
    refs = list(iter_source(manifest, split="train"))
    assert len(refs) == len(expected) > 0
    assert [r.id for r in refs] == [r["filepath"] for r in expected]
    first = refs[0]
    for key in ("label", "modality", "anatomy", "patient_id"):
        assert first.metadata[key] == expected[0][key]
    assert Path(first.source).exists()
    assert first.source == str(RADBENCH / expected[0]["filepath"])
