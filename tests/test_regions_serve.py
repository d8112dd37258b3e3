"""Region routes over a real HTTP server: ``roi`` / ``relevant`` / ``irrelevant`` on
``/api/search`` (and its older name ``/api/search/region``) and ``/api/explain``."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image

from serve_helpers import LiveServer
from test_regions import PATCH, QUERY_PATCH, inside, plant, save, texture


def planted_index(root):
    """``root/index``: stripes decoys, plain rings and one rings image carrying the
    planted patch (``right.png``); ``root/query.png``: stripes carrying it elsewhere."""
    from radsearch.io.sources import iter_source
    from radsearch.pipeline import build_index

    src = root / "images"
    src.mkdir()
    for n in range(3):
        save(texture("stripes", n), src / f"decoy{n}.png")
    save(plant(texture("rings", 5), PATCH), src / "right.png")
    for n in range(2):
        save(texture("rings", 20 + n), src / f"rings{n}.png")
    save(plant(texture("stripes", 7), QUERY_PATCH), root / "query.png")
    build_index(list(iter_source(src)), root / "index", progress=False, workers=0)
    return root / "index", root / "query.png"


@pytest.fixture(scope="module")
def server(tmp_path_factory, one_torch_thread):
    from radsearch.serve import create_app

    index, query = planted_index(tmp_path_factory.mktemp("serve-regions"))
    with LiveServer(create_app(index)) as url:
        yield url, query.read_bytes()


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
    assert bad.status_code == 422 and "outside the image" in bad.json()["error"]


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


def ids(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["hits"]]


def test_search_with_roi_gives_match_boxes(server):
    url, png = server
    plain = post(url, "/api/search", png, k="6")
    assert ids(plain)[0].startswith("decoy")  # the whole image follows the stripes
    assert all("match_box" not in h for h in plain.json()["hits"])
    assert plain.json()["query_size"] == [224, 224]
    r = post(url, "/api/search", png, k="6", roi=",".join(map(str, QUERY_PATCH)), preview="1")
    body = r.json()
    assert ids(r)[0] == "right.png" and inside(body["hits"][0]["match_box"], PATCH)
    assert body["query_size"] == [224, 224] and body["query_image"].startswith("data:image/png")
    for hit in body["hits"]:
        x0, y0, x1, y1 = hit["match_box"]
        assert hit["image_size"] == [224, 224] and 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224
        assert 0 < hit["score"] <= 1 and "source" not in hit
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    # the older route answers the same
    old = post(url, "/api/search/region", png, k="6", roi=",".join(map(str, QUERY_PATCH)))
    assert old.json()["hits"] == body["hits"]


@pytest.mark.parametrize(
    ("roi", "reason"),
    [
        ("0,0,999,10", "outside the image (224x224 pixels)"),
        ("-5,0,40,40", "outside the image"),
        ("10,10,10,40", "empty box"),
        ("50,10,20,40", "inverted box"),
        ("1,2,3", "expected four numbers"),
        ("a,b,c,d", "expected four numbers"),
    ],
)
def test_bad_roi_on_search_is_422(server, roi, reason):
    url, png = server
    for path in ("/api/search", "/api/explain"):
        r = post(url, path, png, roi=roi, hit_id="right.png")
        assert r.status_code == 422, (path, r.text)
        error = r.json()["error"]
        assert error.startswith("roi ") and reason in error and "\n" not in error


def test_relevant_moves_a_planted_item_up(server):
    url, png = server
    before = ids(post(url, "/api/search", png, k="7"))
    # rings0 marked relevant, two stripes look-alikes not: rings1 (never marked) climbs
    marked = {"relevant": "rings0.png", "irrelevant": ["decoy0.png", "decoy1.png"]}
    after = ids(post(url, "/api/search", png, k="7", **marked))
    assert after.index("rings1.png") < before.index("rings1.png"), (before, after)
    assert after.index("decoy1.png") > before.index("decoy1.png"), (before, after)
    # ids may also come comma-separated in one field
    same = ids(
        post(
            url,
            "/api/search",
            png,
            k="7",
            relevant="rings0.png",
            irrelevant="decoy0.png,decoy1.png",
        )
    )
    assert same == after
    unknown = post(url, "/api/search", png, relevant="rings0.png,nope.png")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "relevant id 'nope.png': not in the index"


def test_roi_on_an_index_without_regions_is_422(tmp_path, one_torch_thread):
    from radsearch.io.sources import iter_source
    from radsearch.pipeline import build_index
    from radsearch.serve import create_app

    src = tmp_path / "images"
    src.mkdir()
    for kind, name in (("stripes", "s0.png"), ("rings", "s, 1.png"), ("plain", "s2.png")):
        save(texture(kind, 0), src / name)
    build_index(
        list(iter_source(src)), tmp_path / "plain", progress=False, workers=0, regions=False
    )
    png = (src / "s0.png").read_bytes()
    with LiveServer(create_app(tmp_path / "plain")) as url:
        assert ids(post(url, "/api/search", png, k="2"))[0] == "s0.png"
        # feedback needs no region features; an id holding a comma is taken whole
        marked = post(url, "/api/search", png, relevant="s, 1.png", irrelevant="s0.png,s2.png")
        assert ids(marked)[0] == "s, 1.png"
        r = post(url, "/api/search", png, roi="0,0,10,10")
        assert r.status_code == 422 and "no region features" in r.json()["error"]
        assert str(tmp_path) not in r.json()["error"]  # no server path
