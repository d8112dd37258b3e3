"""HTTP API of ``radsearch serve``: same hits as the CLI, and every security rule.

Each limit and the token rule has a test that fails if the rule is removed.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from conftest import make_pattern  # noqa: E402
from serve_helpers import KINDS, pattern_index  # noqa: E402


@pytest.fixture(scope="module")
def small_index(tmp_path_factory):
    """12 synthetic images, 3 labels, with PHI columns in the manifest; real encoder."""
    return pattern_index(
        tmp_path_factory.mktemp("serve"),
        lambda kind, n: {
            "label": kind,
            "modality": "XR" if n % 2 else "CT",
            "patient_id": f"P{n}",
            "patient_name": f"Doe^Jane{n}",
            "patient_birth_date": "19700101",
        },
    )


@pytest.fixture(scope="module")
def query_png(tmp_path_factory) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(make_pattern("rings", seed=7)).save(buf, format="PNG")
    return buf.getvalue()


def _client(index, **kw) -> TestClient:
    from radsearch.serve import create_app

    return TestClient(
        create_app(index, **kw), base_url="http://127.0.0.1", raise_server_exceptions=False
    )


@pytest.fixture(scope="module")
def client(small_index):
    return _client(small_index)


def _search(client, png, name="q.png", headers=None, **fields):
    data = {"k": "5", **{k: str(v) for k, v in fields.items()}}
    return client.post(
        "/api/search", files={"file": (name, png, "image/png")}, data=data, headers=headers or {}
    )


def test_health_info_docs(client):
    assert client.get("/api/health").json() == {"status": "ok", "count": 12}
    info = client.get("/api/info").json()
    assert info["encoder"] == "efficientnet-lite0" and info["count"] == 12 and info["dim"] == 1280
    assert info["index_type"] == "flat"
    assert info["filters"]["label"] == sorted(KINDS)
    assert "patient_id" not in info["metadata_columns"] and "patient_id" not in info["filters"]
    assert client.get("/openapi.json").json()["paths"]["/api/search"]
    assert client.get("/docs").status_code == 200


def test_search_hits_identical_to_cli(small_index, query_png, tmp_path, capsys):
    from radsearch.cli import main

    qpath = tmp_path / "q.png"
    qpath.write_bytes(query_png)
    assert main(["search", str(small_index), str(qpath), "-k", "5", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)["queries"][0]

    api = _search(_client(small_index, show_phi=True, show_paths=True), query_png).json()
    assert api["hits"] == cli["hits"]
    assert api["suggestion"] == cli["suggestion"]
    assert api["hits"][0]["label"] == "rings"
    assert api["suggestion"]["value"] == "rings"


def test_search_options(client, query_png):
    r = _search(client, query_png, k=3, where="modality=XR", one_per_patient="true")
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert len(hits) == 2  # XR rows are patients P1 and P3 only
    assert {h["modality"] for h in hits} == {"XR"}
    r = _search(client, query_png, preview="true")
    assert r.json()["query_image"].startswith("data:image/png;base64,")


def test_phi_stripped_unless_show_phi(small_index, client, query_png):
    body = _search(client, query_png).text
    for secret in ("Doe^Jane", "19700101", "patient_id", "patient_name", "patient_birth_date"):
        assert secret not in body
    item = client.get("/api/items/img/rings-1.png").json()
    assert item["label"] == "rings" and "patient_name" not in item and "patient_id" not in item
    # PHI cannot be probed through filters or the vote either
    assert _search(client, query_png, where="patient_id=P1").status_code == 400
    assert _search(client, query_png, suggest="patient_name").status_code == 400

    phi = _client(small_index, show_phi=True)
    hit = _search(phi, query_png).json()["hits"][0]
    assert hit["patient_name"].startswith("Doe^Jane") and hit["patient_birth_date"] == "19700101"
    assert phi.get("/api/items/img/rings-1.png").json()["patient_id"] == "P1"


def test_item_image_and_thumbnail(client):
    r = client.get("/api/items/img/blob-2.png/image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (96, 96)
    r = client.get("/api/items/img%2Fblob-2.png/image", params={"size": 32})
    assert Image.open(io.BytesIO(r.content)).size == (32, 32)
    assert client.get("/api/items/img/blob-2.png/image", params={"size": 5}).status_code == 422


@pytest.mark.parametrize(
    "item_id",
    [
        "img/nope.png",
        "../manifest.csv",
        "%2E%2E/manifest.csv",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
    ],
)
def test_only_indexed_ids_are_served(client, small_index, item_id):
    for suffix in ("/image", ""):
        r = client.get(f"/api/items/{item_id}{suffix}")
        assert r.status_code == 404, (item_id, r.status_code)
        assert set(r.json()) == {"error"}  # ("../" may be folded by the client: route 404)


def test_token_required_on_every_api_call(small_index, query_png):
    c = _client(small_index, token="s3cret")
    for method, url in [
        ("get", "/api/health"),
        ("get", "/api/info"),
        ("get", "/api/items/img/blob-2.png"),
        ("get", "/api/items/img/blob-2.png/image"),
    ]:
        assert getattr(c, method)(url).status_code == 401, url
        assert getattr(c, method)(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert getattr(c, method)(url, headers={"Authorization": "Basic s3cret"}).status_code == 401
        assert (
            getattr(c, method)(url, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        )
    r = _search(c, query_png)
    assert r.status_code == 401 and "token" in r.json()["error"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert _search(c, query_png, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/").status_code == 200  # the page itself holds no data


def test_upload_cap_413(small_index, query_png):
    c = _client(small_index, max_upload_bytes=2000)
    assert len(query_png) > 2000
    big = query_png + b"\0" * 200_000
    r = _search(c, big)
    assert r.status_code == 413 and "too large" in r.json()["error"]

    # a chunked body (no Content-Length) is cut off while streaming
    boundary = "xyzzy"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="q.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def body():
        yield head
        for _ in range(50):
            yield b"\0" * 8192
        yield f"\r\n--{boundary}--\r\n".encode()

    r = c.post(
        "/api/search",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 413 and "too large" in r.json()["error"]
    # the file part alone is also checked against the cap (body slack does not leak through)
    assert _search(c, query_png).status_code == 413


def test_pixel_cap_422(small_index, query_png):
    c = _client(small_index, max_pixels=64 * 64)
    r = _search(c, query_png)  # 96 x 96
    assert r.status_code == 422
    assert (
        r.json()["error"]
        == "q.png: image too large: 96x96 pixels > limit 4096 (radsearch serve --max-pixels)"
    )


def test_pixel_cap_checked_before_decoding(small_index):
    c = _client(small_index)  # default cap 50 Mpx
    buf = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buf, format="PNG")  # 81 Mpx, ~80 KB compressed
    r = _search(c, buf.getvalue(), name="bomb.png")
    assert r.status_code == 422 and "9000x9000" in r.json()["error"]


def test_unreadable_image_422_with_reason(client):
    r = _search(client, b"this is not an image at all", name="broken.png")
    assert r.status_code == 422
    err = r.json()["error"]
    assert err.startswith("broken.png: ") and "/tmp" not in err
    r = _search(client, b"", name="empty.png")
    assert r.status_code == 422 and "empty" in r.json()["error"]


def test_k_limit_and_validation_errors_are_json(small_index, query_png):
    c = _client(small_index, max_k=4)
    r = _search(c, query_png, k=5)
    assert r.status_code == 422 and "limit 4" in r.json()["error"]
    r = _search(c, query_png, k="many")
    assert r.status_code == 422 and r.json()["error"].startswith("k: ")
    r = c.post("/api/search", data={"k": "3"})
    assert r.status_code == 422 and "file" in r.json()["error"]
    r = _search(c, query_png, k=3, where="nosuchcolumn=1")
    assert r.status_code == 400 and "nosuchcolumn" in r.json()["error"]
    r = c.get("/api/nothing-here")
    assert r.status_code == 404 and set(r.json()) == {"error"}


def test_internal_errors_hide_the_traceback(small_index, query_png, monkeypatch):
    import radsearch.serve.routes_api as routes_api

    c = _client(small_index)

    def boom(*a, **k):
        raise ValueError("secret internal detail /home/x")

    monkeypatch.setattr(routes_api, "encode_png", boom)
    r = c.get("/api/items/img/stripes-0.png/image", params={"size": 17})
    assert r.status_code == 500
    assert r.json() == {"error": "internal server error (ValueError)"}
    assert "Traceback" not in r.text and "secret" not in r.text


def test_cors_off_by_default(small_index, client):
    r = client.get("/api/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    c = _client(small_index, cors_origins=["http://ris.local"])
    r = c.get("/api/health", headers={"Origin": "http://ris.local"})
    assert r.headers["access-control-allow-origin"] == "http://ris.local"


def test_ui_is_local_and_has_security_headers(client):
    r = client.get("/")
    assert r.status_code == 200 and 'id="drop"' in r.text
    assert "content-security-policy" in r.headers
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/app.css"):
        text = client.get(asset).text
        assert "http://" not in text and "https://" not in text.replace("https?", "")
    assert "//cdn" not in r.text and "http" not in r.text


def test_serve_cli_binds_loopback_by_default():
    from radsearch.cli import build_parser

    args = build_parser().parse_args(["serve", "some/index"])
    assert args.host == "127.0.0.1" and args.port == 8000
    assert not args.show_phi and args.cors_origin == []


def test_multiframe_dicom_query_uses_slice_field(small_index, client, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("emri_small.dcm")  # 10 frames
    if path is None:
        pytest.skip("pydicom test file emri_small.dcm not available")
    data = open(path, "rb").read()
    first = _search(client, data, name="emri.dcm", slice=0).json()
    last = _search(client, data, name="emri.dcm", slice=9).json()
    assert first["hits"] and last["hits"]
    assert first["hits"][0]["score"] != last["hits"][0]["score"]
    r = _search(client, data, name="emri.dcm", slice=10)
    assert r.status_code == 422 and "out of range" in r.json()["error"]
    assert pydicom


def test_nifti_query_with_slice(client, tmp_path):
    nib = pytest.importorskip("nibabel")
    vol = np.stack([make_pattern("stripes", seed=s).astype(np.int16) for s in range(5)], axis=2)
    p = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), p)
    r = _search(client, p.read_bytes(), name="vol.nii.gz", slice=2)
    assert r.status_code == 200, r.text
    assert r.json()["hits"][0]["label"] == "stripes"
    r = _search(client, p.read_bytes(), name="vol.nii.gz")  # middle slice by default
    assert r.status_code == 200


def test_nifti_indexed_with_lung_window_is_served_with_it(tmp_path, capsys):
    """The item image of a NIfTI slice is rendered with the window used at indexing
    (``--nifti-window lung``), not the automatic one."""
    nib = pytest.importorskip("nibabel")
    from radsearch.cli import main
    from radsearch.index import Index
    from radsearch.io.nifti import parse_window, read_nifti_slice

    rng = np.random.default_rng(0)
    vol = (rng.normal(0, 1, (64, 64, 3)) * 300 - 400).astype(np.int16)  # HU-like
    path = tmp_path / "chest.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    out = tmp_path / "idx"
    assert (
        main(
            [
                "index",
                str(path),
                "--out",
                str(out),
                "--nifti-window",
                "lung",
                "--no-progress",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    capsys.readouterr()
    index = Index.open(out)
    c = _client(out)
    for row, item_id in enumerate(index.items.column("id").to_pylist()):
        n = index.ref(row).frame
        r = c.get(f"/api/items/{item_id.replace('#', '%23')}/image")
        assert r.status_code == 200, r.text
        served = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
        lung = read_nifti_slice(path, n, window=parse_window("lung"))
        assert np.array_equal(served, lung), item_id
        assert not np.array_equal(served, read_nifti_slice(path, n))  # automatic window
