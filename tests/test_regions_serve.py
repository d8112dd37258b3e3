"""Region routes over a real HTTP server: ``/api/search/region`` and ``/api/explain``."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from serve_helpers import LiveServer
from test_regions import PATCH, QUERY_PATCH, inside, plant, save, texture


@pytest.fixture(scope="module")
def server(tmp_path_factory, one_torch_thread):
    from radsearch.io.sources import iter_source
    from radsearch.pipeline import build_index
    from radsearch.serve import create_app

    root = tmp_path_factory.mktemp("serve-regions")
    src = root / "images"
    src.mkdir()
    for n in range(3):
        save(texture("stripes", n), src / f"decoy{n}.png")
    save(plant(texture("rings", 5), PATCH), src / "right.png")
    save(plant(texture("stripes", 7), QUERY_PATCH), root / "query.png")
    build_index(list(iter_source(src)), root / "index", progress=False, workers=0)
    with LiveServer(create_app(root / "index")) as url:
        yield url, (root / "query.png").read_bytes()


def post(url: str, path: str, png: bytes, **data) -> httpx.Response:
    return httpx.post(f"{url}{path}", files={"file": ("q.png", png)}, data=data, timeout=60)


def test_region_search_over_http(server):
    url, png = server
    roi = ",".join(map(str, QUERY_PATCH))
    r = post(url, "/api/search/region", png, **{"roi": roi, "k": "2"})
    assert r.status_code == 200, r.text
    top = r.json()["hits"][0]
    assert top["id"] == "right.png" and inside(top["match_box"], PATCH)
    r = post(
        url,
        "/api/search/region",
        png,
        **{"relevant": "right.png", "irrelevant": "decoy0.png", "k": "4"},
    )
    assert r.status_code == 200 and "source" not in r.json()["hits"][0]
    bad = post(url, "/api/search/region", png, **{"roi": "0,0,999,10"})
    assert bad.status_code == 400 and "outside the image" in bad.json()["error"]


def test_explain_over_http(server):
    url, png = server
    roi = ",".join(map(str, QUERY_PATCH))
    r = post(url, "/api/explain", png, **{"hit_id": "right.png", "roi": roi})
    assert r.status_code == 200 and inside(r.json()["match_box"], PATCH)
    r = post(url, "/api/explain", png, **{"hit_id": "right.png", "format": "png"})
    assert r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).format == "PNG"
    r = post(url, "/api/explain", png, **{"hit_id": "nope.png"})
    assert r.status_code == 404
