"""A real PACS: Orthanc + its DICOMweb plugin on a free loopback port.

pydicom's test files and a few RadBench images (wrapped as Secondary Capture DICOM)
are uploaded; ``radsearch index dicomweb:...`` indexes them over QIDO-RS/WADO-RS with
efficientnet-lite0, searches, re-runs incrementally, and the server links hits back to
the PACS. Skipped when Orthanc is not installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import RADBENCH, make_pattern, radbench_available

pytest.importorskip("dicomweb_client")
requests = pytest.importorskip("requests")
pydicom = pytest.importorskip("pydicom")

ORTHANC = shutil.which("Orthanc") or next(
    (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if os.path.exists(p)), None
)
PLUGINS = Path("/usr/share/orthanc/plugins")
DICOMWEB_PLUGIN = PLUGINS / "libOrthancDicomWeb.so"
USER, PASSWORD = "ci", "pw"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        ORTHANC is None, reason="Orthanc not installed (apt-get install orthanc orthanc-dicomweb)"
    ),
    pytest.mark.skipif(
        not DICOMWEB_PLUGIN.exists(), reason="orthanc-dicomweb plugin not installed"
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A running Orthanc; yields its base URL. Stopped by PID at the end."""
    work = tmp_path_factory.mktemp("orthanc")
    port = _free_port()
    plugins = [str(DICOMWEB_PLUGIN)]
    if (PLUGINS / "libOrthancGdcm.so").exists():
        plugins.append(str(PLUGINS / "libOrthancGdcm.so"))
    config = {
        "Name": "radsearch-test",
        "StorageDirectory": str(work / "db"),
        "IndexDirectory": str(work / "db"),
        "HttpPort": port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "DicomServerEnabled": False,
        "DicomPort": _free_port(),
        "SaveJobs": False,
        "Plugins": plugins,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    cfg = work / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log = open(work / "orthanc.log", "wb")
    proc = subprocess.Popen([ORTHANC, str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=work)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{base}/system", auth=(USER, PASSWORD), timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"Orthanc did not start: {(work / 'orthanc.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def wrap_as_dicom(
    rgb_or_grey: np.ndarray, path: Path, *, modality: str, body_part: str, patient: str
) -> str:
    """An 8-bit Secondary Capture instance holding the image; returns its SOP UID."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    grey = rgb_or_grey if rgb_or_grey.ndim == 2 else rgb_or_grey[:, :, 0]
    grey = np.ascontiguousarray(grey, dtype=np.uint8)
    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.PatientBirthDate = patient, "Test^Patient", "19800101"
    ds.Modality, ds.BodyPartExamined, ds.ConversionType = modality, body_part, "WSD"
    ds.Rows, ds.Columns = grey.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.WindowCenter, ds.WindowWidth = 127.5, 256
    ds.PixelData = grey.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return sop


@pytest.fixture(scope="module")
def pacs_files(tmp_path_factory):
    """(pydicom test files, [(query image path, wrapped .dcm, sop uid, label)])."""
    from pydicom.data import get_testdata_file

    from radsearch.io import read_image

    out = tmp_path_factory.mktemp("pacs-files")
    stock = [get_testdata_file(n) for n in ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm")]
    stock = [Path(p) for p in stock if p]
    wrapped = []
    if radbench_available():
        with open(RADBENCH / "radbench.csv", newline="") as fh:
            rows, seen = [], set()
            for row in csv.DictReader(fh):
                if row["split"] == "test" and row["dataset"] not in seen:
                    seen.add(row["dataset"])
                    rows.append(row)
                if len(rows) == 5:
                    break
        for n, row in enumerate(rows):
            src = RADBENCH / row["filepath"]
            grey = read_image(src)[:, :, 0]
            q = out / f"query-{n}.png"
            from PIL import Image

            Image.fromarray(grey).save(q)
            dcm = out / f"radbench-{n}.dcm"
            sop = wrap_as_dicom(
                grey,
                dcm,
                modality=row["modality"] or "OT",
                body_part=(row["anatomy"] or "").upper(),
                patient=f"RB{n}",
            )
            wrapped.append((q, dcm, sop, row["label"]))
    else:
        from PIL import Image

        for n, kind in enumerate(("stripes", "rings", "blob", "stripes", "rings")):
            grey = make_pattern(kind, size=128, seed=n)
            q = out / f"query-{n}.png"
            Image.fromarray(grey).save(q)
            dcm = out / f"pattern-{n}.dcm"
            sop = wrap_as_dicom(grey, dcm, modality="OT", body_part="PHANTOM", patient=f"PT{n}")
            wrapped.append((q, dcm, sop, kind))
    return stock, wrapped


def _upload(base: str, path: Path) -> dict:
    r = requests.post(
        f"{base}/instances", data=path.read_bytes(), auth=(USER, PASSWORD), timeout=30
    )
    r.raise_for_status()
    return r.json()


def _index(url, out, *extra) -> str:
    import contextlib
    import io

    from radsearch.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(
            [
                "index",
                f"dicomweb:{url}",
                "--out",
                str(out),
                "--no-progress",
                "--workers",
                "0",
                "--dicomweb-user",
                USER,
                "--dicomweb-password",
                PASSWORD,
                *extra,
            ]
        )
    assert rc == 0
    return buf.getvalue()


def test_index_search_and_link_back(orthanc, pacs_files, tmp_path, monkeypatch):
    from radsearch.index import Index

    stock, wrapped = pacs_files
    for p in stock:
        _upload(orthanc, p)
    for _, dcm, _, _ in wrapped[:-1]:  # the last one arrives later (incremental run)
        _upload(orthanc, dcm)
    url = f"{orthanc}/dicom-web"
    out = tmp_path / "pacs-index"
    frames = sum(
        int(pydicom.dcmread(p, stop_before_pixels=True).get("NumberOfFrames") or 1) for p in stock
    )
    expected = frames + len(wrapped) - 1

    text = _index(url, out)
    assert f"indexed {expected} new item(s)" in text, text
    index = Index.open(out)
    assert index.count == expected
    cols = index.items.column_names
    for col in (
        "study_uid",
        "series_uid",
        "sop_uid",
        "modality",
        "body_part",
        "pacs_url",
        "viewer_url",
    ):
        assert col in cols
    assert "patient_name" not in cols and "patient_birth_date" not in cols
    mods = set(index.items.column("modality").to_pylist())
    assert {"CT", "MR"} <= mods
    ct = pydicom.dcmread(stock[0], stop_before_pixels=True)
    row = index.item(ct.SOPInstanceUID)
    assert (
        row
        and row["study_uid"] == ct.StudyInstanceUID
        and row["series_uid"] == ct.SeriesInstanceUID
    )
    assert row["body_part"] == str(ct.get("BodyPartExamined", "")).strip()
    emri = pydicom.dcmread(stock[2], stop_before_pixels=True)
    assert index.item(f"{emri.SOPInstanceUID}#frame=9") is not None  # one item per frame
    q, dcm, sop, _ = wrapped[0]
    meta = index.item(sop)
    assert meta["body_part"] == pydicom.dcmread(dcm).BodyPartExamined

    # search: the RadBench image finds its own DICOM twin first, with links back to the PACS
    hit = index.search(q, k=3)[0].hits[0]
    assert hit.id == sop and hit.score > 0.95
    orthanc_instance = hit.metadata["viewer_url"].rsplit("uuid=", 1)[1]
    r = requests.get(f"{orthanc}/instances/{orthanc_instance}", auth=(USER, PASSWORD), timeout=10)
    assert r.ok and r.json()["MainDicomTags"]["SOPInstanceUID"] == sop
    r = requests.get(hit.metadata["pacs_url"], auth=(USER, PASSWORD), timeout=30)
    assert r.ok and r.headers["content-type"].startswith("image/")

    # incremental: nothing new, then exactly the one new instance; nothing re-fetched
    cache_files = sorted((out / "dicomweb").rglob("*.dcm"))
    assert len(cache_files) == len(stock) + len(wrapped) - 1
    stamps = {p: p.stat().st_mtime_ns for p in cache_files}
    assert "indexed 0 new item(s)" in _index(url, out)
    _upload(orthanc, wrapped[-1][1])
    assert "indexed 1 new item(s)" in _index(url, out)
    assert Index.open(out).count == expected + 1
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())

    # the server renders PACS items from the cache and shows the links; PHI stays out
    from fastapi.testclient import TestClient

    from radsearch.serve import create_app

    client = TestClient(create_app(out), base_url="http://127.0.0.1")  # a Host it serves
    res = client.post(
        "/api/search", files={"file": ("q.png", q.read_bytes(), "image/png")}, data={"k": "3"}
    ).json()
    top = res["hits"][0]
    assert top["id"] == sop and top["viewer_url"].startswith(orthanc) and "patient_id" not in top
    assert client.get("/api/info").json()["pacs_links"] is True
    img = client.get(f"/api/items/{emri.SOPInstanceUID}%23frame=3/image", params={"size": 64})
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"

    # filters are applied client side (no percent-encoded QIDO wildcards are ever sent)
    from radsearch.io.sources import iter_source

    monkeypatch.setenv("RADSEARCH_DICOMWEB_USER", USER)
    monkeypatch.setenv("RADSEARCH_DICOMWEB_PASSWORD", PASSWORD)
    monkeypatch.setenv("RADSEARCH_DICOMWEB_CACHE", str(tmp_path / "cache2"))
    refs = list(iter_source(f"dicomweb:{url}", where={"modality": "CT"}))
    assert ct.SOPInstanceUID in [r.id for r in refs]
    assert {r.metadata["modality"] for r in refs} == {"CT"} and len(refs) < expected
    assert all(Path(r.source).exists() for r in refs)


def test_wrong_credentials_fail_with_a_hint(orthanc, tmp_path):
    from radsearch.errors import SourceError
    from radsearch.io.dicomweb import iter_dicomweb

    with pytest.raises(SourceError, match="dicomweb-password"):
        iter_dicomweb(
            f"dicomweb:{orthanc}/dicom-web", user=USER, password="nope", cache_dir=tmp_path
        )
    from radsearch.cli import main

    out = tmp_path / "never"
    assert (
        main(
            [
                "index",
                f"dicomweb:{orthanc}/dicom-web",
                "--out",
                str(out),
                "--dicomweb-user",
                USER,
                "--dicomweb-password",
                "nope",
            ]
        )
        == 1
    )
    assert not out.exists()  # no empty index left behind
    with pytest.raises(SourceError, match="expected dicomweb:http"):
        iter_dicomweb("dicomweb:ftp://x", cache_dir=tmp_path)
