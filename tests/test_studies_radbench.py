"""End to end on real slices: one RadBench kidney-CT group written as a DICOM series
and others as NIfTI volumes are indexed as one study each; a study search with the
other half of a group (a DICOM series folder, or a NIfTI volume) returns its study."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from PIL import Image

from io_fixtures import write_dicom, write_nifti
from radsearch.cli import main
from radsearch.index import Index
from radsearch.studies import STUDY_COLUMN

# Four kidney-CT groups: the first becomes a DICOM series, the others NIfTI volumes.
GROUPS = ("kidney_ct-nd1052", "kidney_ct-nd459", "kidney_ct-nd517", "kidney_ct-nd866")
SLICES = 12  # a contiguous run from the middle of each group; even -> index, odd -> query
SPACING, THICKNESS = 0.7, 2.5


def group_slices(radbench_dir, group):
    """The group's images in slice order (the number in the source file name)."""
    with open(radbench_dir / "radbench.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["group_id"] == group]
    rows.sort(key=lambda r: int(re.search(r"\((\d+)\)", r["source"]).group(1)))
    mid = len(rows) // 2 - SLICES // 2
    run = rows[mid : mid + SLICES]
    return [np.asarray(Image.open(radbench_dir / r["filepath"]).convert("L")) for r in run]


def write_series(folder, slices):
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    for n, img in enumerate(slices):
        z = n * THICKNESS
        write_dicom(
            folder / f"IM{n:04d}.dcm",
            img.astype(np.uint16),
            Modality="CT",
            StudyInstanceUID=study,
            SeriesInstanceUID=series,
            StudyDescription="CT abdomen",
            SeriesDescription="kidney axial",
            SeriesNumber=2,
            InstanceNumber=n + 1,
            ImagePositionPatient=[0.0, 0.0, z],
            SliceLocation=z,
            PixelSpacing=[SPACING, SPACING],
            SliceThickness=THICKNESS,
            WindowCenter=127.5,
            WindowWidth=256,
        )
    return study


def write_volume(path, slices):
    """Slices as an RAS volume whose axial display is the images themselves."""
    vol = np.stack([img[::-1, ::-1].T for img in slices], axis=-1).astype(np.int16)
    return write_nifti(path, vol, np.diag([SPACING, SPACING, THICKNESS, 1.0]))


@pytest.fixture(scope="module")
def kidney_studies(radbench_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("kidney")
    archive, queries, expect = root / "archive", root / "queries", {}
    slices = {g: group_slices(radbench_dir, g) for g in GROUPS}
    expect["dicom"] = write_series(archive / "series", slices[GROUPS[0]][0::2])
    write_series(queries / "series", slices[GROUPS[0]][1::2])
    for n, g in enumerate(GROUPS[1:]):
        write_volume(archive / f"volume{n}.nii.gz", slices[g][0::2])
        write_volume(queries / f"volume{n}.nii.gz", slices[g][1::2])
    expect["nifti"] = "volume0.nii.gz"
    return archive, queries, expect


def test_series_and_volume_indexed_as_one_study_each_and_found(
    kidney_studies, tmp_path, capsys, one_torch_thread
):
    archive, queries, expect = kidney_studies
    out = tmp_path / "idx"
    assert main(["index", str(archive), "--out", str(out), "--no-progress", "--workers", "0"]) == 0
    capsys.readouterr()
    index = Index.open(out)
    studies = index.items.column(STUDY_COLUMN).to_pylist()
    assert index.count == len(GROUPS) * SLICES // 2
    assert len(set(studies)) == len(GROUPS)
    rows = [r for r in index.rows(range(index.count)) if r[STUDY_COLUMN] == expect["dicom"]]
    assert len(rows) == SLICES // 2 and len({r["series_uid"] for r in rows}) == 1
    assert sorted(int(r["instance_number"]) for r in rows) == list(range(1, SLICES // 2 + 1))
    assert rows[0]["pixel_spacing"] == f"{SPACING}\\{SPACING}"
    assert rows[0]["series_description"] == "kidney axial" and rows[0]["modality"] == "CT"
    assert studies.count("volume0.nii.gz") == SLICES // 2

    for query, wanted in (
        (queries / "series", expect["dicom"]),
        (queries / "volume0.nii.gz", expect["nifti"]),
    ):
        code = main(["search", str(out), "--study", str(query), "-k", "4", "--json"])
        doc = json.loads(capsys.readouterr().out)
        top = doc["queries"][0]["studies"][0]
        assert code == 0 and top["study_id"] == wanted, doc
        assert top["items"] == SLICES // 2 and len(top["pairs"]) == 3
        assert [s["rank"] for s in doc["queries"][0]["studies"]] == [1, 2, 3, 4]
