"""``POST /api/search/study``: several files, a zip of a DICOM series, a NIfTI volume;
unreadable files named; the same studies as the Python API; no PHI."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from conftest import make_pattern  # noqa: E402
from io_fixtures import write_dicom, write_nifti  # noqa: E402
from serve_helpers import pattern_index  # noqa: E402


@pytest.fixture(scope="module")
def index_path(tmp_path_factory):
    """12 pattern images; two images per study (``group``), a patient id on each."""
    return pattern_index(
        tmp_path_factory.mktemp("serve_studies"),
        lambda kind, n: {"label": kind, "study_id": f"{kind}-{n // 2}", "patient_id": f"P{n}"},
    )


@pytest.fixture(scope="module")
def client(index_path):
    from radsearch.serve import create_app

    app = create_app(index_path)
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)


def png(kind: str, seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(make_pattern(kind, seed=seed)).save(buf, format="PNG")
    return buf.getvalue()


def post(client, files, **fields):
    data = {"k": "3", **{k: str(v) for k, v in fields.items()}}
    return client.post("/api/search/study", files=[("files", f) for f in files], data=data)


def test_several_files_and_an_unreadable_one(client, index_path):
    files = [(f"r{n}.png", png("rings", 10 + n), "image/png") for n in range(2)]
    files.append(("broken.png", b"not an image", "image/png"))
    r = post(client, files)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert [s["file"] for s in doc["skipped"]] == ["broken.png"]
    top = doc["studies"][0]
    assert top["label"] == "rings" and top["study_id"].startswith("rings-") and top["items"] == 2
    assert {p["query_item"] for p in top["pairs"]} <= {"r0.png", "r1.png"}
    assert "patient_id" not in top and "source" not in top
    assert doc["suggestion"]["value"] == "rings"

    from radsearch.index import Index
    from radsearch.studies import search_study

    pixels = [np.asarray(Image.open(io.BytesIO(f[1])).convert("RGB")) for f in files[:2]]
    same = search_study(Index.open(index_path), pixels, k=3, names=["r0.png", "r1.png"])
    assert [s["study_id"] for s in doc["studies"]] == [s.study_id for s in same.studies]
    assert [s["score"] for s in doc["studies"]] == pytest.approx(
        [s.score for s in same.studies], abs=1e-6
    )


def test_zip_of_a_dicom_series(client, tmp_path):
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for n in range(3):
            path = write_dicom(
                tmp_path / f"IM{n}.dcm",
                make_pattern("stripes", seed=20 + n),
                StudyInstanceUID=study,
                SeriesInstanceUID=series,
                InstanceNumber=n + 1,
            )
            zf.write(path, f"series/IM{n}.dcm")
        zf.writestr("series/.DS_Store", b"junk")
    r = post(client, [("series.zip", buf.getvalue(), "application/zip")])
    assert r.status_code == 200, r.text
    top = r.json()["studies"][0]
    assert top["label"] == "stripes"
    names = {f"series.zip/series/IM{n}.dcm" for n in range(3)}
    assert {p["query_item"] for p in top["pairs"]} == names and r.json()["skipped"] == []


def test_nifti_volume_every_slice(client, tmp_path):
    vol = np.stack([make_pattern("blob", seed=30 + n) for n in range(4)], axis=-1).astype(np.int16)
    path = write_nifti(tmp_path / "vol.nii.gz", vol)
    r = post(client, [("vol.nii.gz", path.read_bytes(), "application/gzip")])
    assert r.status_code == 200, r.text
    top = r.json()["studies"][0]
    assert top["label"] == "blob"
    assert {p["query_item"] for p in top["pairs"]} <= {f"vol.nii.gz#{n}" for n in range(4)}
    assert len(top["pairs"]) == 3  # one pair per query slice, the best three


def test_errors(client):
    r = post(client, [("a.png", b"junk", "image/png")])
    assert (
        r.status_code == 422
        and "the query study has no readable image (a.png:" in r.json()["error"]
    )
    r = post(client, [("r.png", png("rings", 3), "image/png")], where="label=none")
    assert r.status_code == 400 and r.json()["error"] == "no indexed study matches label=none"
    r = post(client, [("r.png", png("rings", 3), "image/png")], where="patient_id=P1")
    assert r.status_code == 400 and "protected health information" in r.json()["error"]
