"""Relevance feedback and why-similar maps, on planted synthetic images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from radsearch.cli import main
from radsearch.errors import RadsearchError
from test_regions import PATCH, QUERY_PATCH, inside, plant, save, texture


@pytest.fixture(scope="module")
def shared(tmp_path_factory, one_torch_thread):
    """Query and hit share only a planted patch, at different places."""
    from radsearch.io.sources import iter_source
    from radsearch.pipeline import build_index

    root = tmp_path_factory.mktemp("shared")
    src = root / "images"
    src.mkdir()
    save(plant(texture("rings", 5), PATCH), src / "hit.png")
    for n in range(3):
        save(texture("stripes", n), src / f"stripes{n}.png")
        save(texture("rings", 20 + n), src / f"rings{n}.png")
    save(plant(texture("plain", 7), QUERY_PATCH), root / "query.png")
    index = build_index(list(iter_source(src)), root / "index", progress=False, workers=0).index
    return root, index


def test_feedback_moves_a_planted_relevant_item_up(shared):
    root, index = shared
    query = np.asarray(Image.open(root / "images" / "stripes0.png").convert("RGB"))
    before = [h.id for h in index.search(query, k=7)[0].hits]
    # mark one rings image relevant and the stripes look-alikes irrelevant: the other
    # rings images (never marked) must climb
    after = [
        h.id
        for h in index.search(
            query, k=7, relevant=["rings0.png"], irrelevant=["stripes1.png", "stripes2.png"]
        )[0].hits
    ]
    assert after.index("rings1.png") < before.index("rings1.png"), (before, after)
    assert after.index("rings2.png") < before.index("rings2.png"), (before, after)
    assert after.index("stripes1.png") > before.index("stripes1.png")


def test_feedback_on_the_cli_and_unknown_ids(shared, capsys):
    root, _ = shared
    q = str(root / "images" / "stripes0.png")
    ranks = []
    for extra in ([], ["--relevant", "rings0.png", "--irrelevant", "stripes1.png"]):
        assert main(["search", str(root / "index"), q, "--json", "-k", "7", *extra]) == 0
        hits = json.loads(capsys.readouterr().out)["queries"][0]["hits"]
        ranks.append([h["id"] for h in hits].index("rings1.png"))
    assert ranks[1] < ranks[0]
    rc = main(["search", str(root / "index"), q, "--irrelevant", "nope.png"])
    err = capsys.readouterr().err
    assert rc == 1 and "irrelevant id 'nope.png': not in the index" in err


def test_explain_map_peaks_on_the_planted_shared_patch(shared):
    from radsearch.regions.explain import similarity_maps

    root, index = shared
    query = np.asarray(Image.open(root / "query.png").convert("RGB"))
    maps = similarity_maps(index, query, "hit.png")
    assert np.asarray(maps["hit"]["map"]).shape == (14, 14)
    qx, qy = maps["query"]["peak"]
    hx, hy = maps["hit"]["peak"]
    assert QUERY_PATCH[0] <= qx < QUERY_PATCH[2] and QUERY_PATCH[1] <= qy < QUERY_PATCH[3], maps
    assert PATCH[0] <= hx < PATCH[2] and PATCH[1] <= hy < PATCH[3], maps
    with_roi = similarity_maps(index, query, "hit.png", roi=QUERY_PATCH)
    assert inside(with_roi["match_box"], PATCH)
    hx, hy = with_roi["hit"]["peak"]
    assert PATCH[0] <= hx < PATCH[2] and PATCH[1] <= hy < PATCH[3]


def test_explain_cli_writes_png_and_json(shared, tmp_path, capsys):
    root, _ = shared
    out = tmp_path / "pair.png"
    rc = main(
        [
            "explain",
            str(root / "index"),
            str(root / "query.png"),
            "hit.png",
            "--out",
            str(out),
            "--json",
            f"--roi={','.join(map(str, QUERY_PATCH))}",
        ]
    )
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["hit_id"] == "hit.png" and len(data["query"]["peak"]) == 2
    png = Image.open(out)
    assert png.format == "PNG" and png.width > 2 * png.height - 20
    # the overlay is not the plain images: the heat map is blended in colour
    arr = np.asarray(png.convert("RGB")).astype(int)
    assert np.abs(arr[..., 0] - arr[..., 2]).mean() > 5
    rc = main(["explain", str(root / "index"), str(root / "query.png"), "missing.png", "--json"])
    assert rc == 1 and "hit id 'missing.png': not in the index" in capsys.readouterr().err


def test_explain_needs_region_features(tmp_path, pattern_folder, one_torch_thread):
    from radsearch.io.sources import iter_source
    from radsearch.pipeline import build_index
    from radsearch.regions.explain import similarity_maps

    refs = list(iter_source(pattern_folder))[:2]
    index = build_index(refs, tmp_path / "plain", progress=False, workers=0, regions=False).index
    with pytest.raises(RadsearchError, match="no region features"):
        similarity_maps(index, np.zeros((32, 32, 3), np.uint8), refs[0].id)
