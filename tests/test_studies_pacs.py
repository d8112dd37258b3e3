"""Study search over a real PACS (Orthanc with DICOMweb): items indexed from the PACS
carry their StudyInstanceUID as study_id, and a study hit's links open the study
itself, in Orthanc's REST/viewer and over DICOMweb."""

from __future__ import annotations

import pydicom
import pytest

from test_pacs_orthanc import PASSWORD, USER, _index, _upload, orthanc, pacs_files  # noqa: F401

requests = pytest.importorskip("requests")


def test_study_hits_link_to_the_pacs_study(orthanc, pacs_files, tmp_path):  # noqa: F811
    from radsearch.index import Index
    from radsearch.studies import STUDY_COLUMN, search_study_id

    stock, _ = pacs_files
    for path in stock:
        _upload(orthanc, path)
    out = tmp_path / "pacs-studies"
    _index(f"{orthanc}/dicom-web", out)
    index = Index.open(out)
    ct, mr = (pydicom.dcmread(p, stop_before_pixels=True) for p in stock[:2])
    studies = set(index.items.column(STUDY_COLUMN).to_pylist())
    assert {ct.StudyInstanceUID, mr.StudyInstanceUID} <= studies

    result = search_study_id(index, ct.StudyInstanceUID, k=3)
    hit = next(s for s in result.studies if s.study_id == mr.StudyInstanceUID)
    meta = hit.metadata
    assert meta["pacs_url"] == f"{orthanc}/dicom-web/studies/{mr.StudyInstanceUID}"
    r = requests.get(meta["pacs_url"] + "/metadata", auth=(USER, PASSWORD), timeout=30)
    assert r.status_code == 200 and r.json()[0]["0020000D"]["Value"] == [mr.StudyInstanceUID]
    uuid = meta["viewer_url"].split("#study?uuid=")[1]
    r = requests.get(f"{orthanc}/studies/{uuid}", auth=(USER, PASSWORD), timeout=30)
    assert r.status_code == 200
    assert r.json()["MainDicomTags"]["StudyInstanceUID"] == mr.StudyInstanceUID
