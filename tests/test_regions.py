"""Region features: the store in the index, region queries with match_box, bad ROIs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from radsearch.cli import main
from radsearch.errors import RadsearchError

SIZE = 224
PATCH = (128, 120, 200, 192)  # where the right item carries the planted patch
QUERY_PATCH = (16, 24, 88, 96)  # where the query carries it


def texture(kind: str, seed: int) -> np.ndarray:
    """Greyscale background textures a CNN tells apart (uint8, SIZE x SIZE)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    if kind == "stripes":
        img = 0.5 + 0.4 * np.sin(2 * np.pi * (9 + seed % 3) * yy)
    elif kind == "rings":
        img = 0.5 + 0.4 * np.sin(2 * np.pi * (7 + seed % 3) * np.hypot(xx - 0.5, yy - 0.5))
    else:
        img = 0.3 + 0.2 * np.cos(2 * np.pi * 2 * xx) * np.cos(2 * np.pi * 3 * yy)
    return np.clip(img + 0.05 * rng.standard_normal(img.shape), 0, 1)


def plant(img: np.ndarray, box) -> np.ndarray:
    """A bright ring with a dark core (a 'lesion'): what only the region query sees."""
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    d = np.hypot(xx - (x0 + x1) / 2, yy - (y0 + y1) / 2)
    r = (x1 - x0) / 2
    out = img.copy()
    out[d < r] = 1.0
    out[d < r / 2] = 0.0
    return out


def inside(box, target) -> bool:
    """Does the centre of ``box`` lie in ``target`` (the localisation rule)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return target[0] <= cx < target[2] and target[1] <= cy < target[3]


def save(img: np.ndarray, path) -> None:
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).convert("RGB").save(path)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, one_torch_thread):
    """An index where the query's background matches decoys, and only its planted
    patch matches the one right item (carrying it elsewhere, on another background)."""
    from radsearch.io.sources import iter_source
    from radsearch.pipeline import build_index

    root = tmp_path_factory.mktemp("planted")
    src = root / "images"
    src.mkdir()
    for n in range(4):
        save(texture("stripes", n), src / f"decoy{n}.png")
        save(texture("plain", 10 + n), src / f"other{n}.png")
    save(plant(texture("rings", 5), PATCH), src / "right.png")
    save(texture("rings", 6), src / "rings.png")
    save(plant(texture("stripes", 7), QUERY_PATCH), root / "query.png")
    report = build_index(list(iter_source(src)), root / "index", progress=False, workers=0)
    return root, report.index


def test_index_keeps_compact_region_features(planted):
    from radsearch.index import Index
    from radsearch.regions.features import require

    root, _ = planted
    index = Index.open(root / "index")
    spec = index.manifest["regions"]
    assert spec["grid"] == [14, 14] and spec["layer"] == "b10" and spec["codec"] == "sq8"
    store = require(index)
    assert len(store) == index.count == 10
    assert store.nbytes_per_item() <= 16 * 1024
    assert (root / "index" / "regions.npy").exists()


def test_only_the_region_finds_the_planted_item(planted):
    root, index = planted
    whole = index.search(str(root / "query.png"), k=3)[0]
    assert whole.hits[0].id != "right.png"  # the background dominates the whole image
    assert all(h.match_box is None for h in whole.hits)
    res = index.search(str(root / "query.png"), k=3, roi=QUERY_PATCH)[0]
    top = res.hits[0]
    assert top.id == "right.png", [(h.id, h.score) for h in res.hits]
    assert inside(top.match_box, PATCH), top.match_box


def test_region_query_on_the_cli_prints_match_box(planted, capsys):
    root, _ = planted
    rc = main(
        [
            "search",
            str(root / "index"),
            str(root / "query.png"),
            "--roi",
            ",".join(map(str, QUERY_PATCH)),
            "-k",
            "2",
            "--json",
        ]
    )
    assert rc == 0
    hits = json.loads(capsys.readouterr().out)["queries"][0]["hits"]
    assert hits[0]["id"] == "right.png" and len(hits[0]["match_box"]) == 4


def test_region_query_keeps_filters(planted):
    root, index = planted
    res = index.search(
        str(root / "query.png"), k=5, roi=QUERY_PATCH, where={"id": "decoy1.png,decoy2.png"}
    )
    assert sorted(h.id for h in res[0].hits) == ["decoy1.png", "decoy2.png"]


@pytest.mark.parametrize(
    ("roi", "reason"),
    [
        ("0,0,300,40", "outside the image"),
        ("-5,0,40,40", "outside the image"),
        ("10,10,10,40", "empty box"),
        ("50,10,20,40", "inverted box"),
        ("1,2,3", "expected four numbers"),
        ("a,b,c,d", "expected four numbers"),
    ],
)
def test_bad_roi_is_a_one_line_error(planted, capsys, roi, reason):
    root, index = planted
    before = (root / "index" / "regions.npy").read_bytes()
    rc = main(["search", str(root / "index"), str(root / "query.png"), f"--roi={roi}"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("radsearch: error: ") and reason in err
    assert len(err.strip().splitlines()) == 1
    assert (root / "index" / "regions.npy").read_bytes() == before


def test_roi_on_an_index_without_region_features(
    tmp_path, pattern_folder, capsys, one_torch_thread
):
    from radsearch.io.sources import iter_source
    from radsearch.pipeline import build_index

    refs = list(iter_source(pattern_folder))[:3]
    index = build_index(refs, tmp_path / "plain", progress=False, workers=0, regions=False).index
    assert "regions" not in index.manifest
    with pytest.raises(RadsearchError, match="no region features"):
        index.search(refs[0].source, roi=(0, 0, 10, 10))
    rc = main(["search", str(tmp_path / "plain"), refs[0].source, "--roi", "0,0,10,10"])
    assert rc == 1 and "no region features" in capsys.readouterr().err


def test_region_features_follow_add_and_remove(planted, tmp_path, one_torch_thread):
    import shutil

    from radsearch.index import Index
    from radsearch.io.sources import iter_source
    from radsearch.pipeline import build_index
    from radsearch.regions.features import require

    root, _ = planted
    path = tmp_path / "copy"
    shutil.copytree(root / "index", path)
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(root / "query.png", extra / "query-copy.png")
    report = build_index(list(iter_source(extra)), path, progress=False, workers=0)
    assert report.added == 1
    index = Index.open(path)
    assert index.remove(["decoy0.png", "other1.png"]) == 2
    index.save()
    index = Index.open(path)
    assert len(require(index)) == index.count == 9
    hits = index.search(str(root / "query.png"), k=2, roi=QUERY_PATCH)[0].hits
    assert [h.id for h in hits] == ["query-copy.png", "right.png"]
    assert inside(hits[0].match_box, QUERY_PATCH) and inside(hits[1].match_box, PATCH)


def test_fusion_region_grid_joins_its_members(one_torch_thread):
    from radsearch.encoders import create_encoder

    enc = create_encoder("lite0+lite2")
    assert enc.has_spatial
    img = (texture("rings", 1) * 255).astype(np.uint8)
    grid = enc.feature_grid(enc.collate([enc.preprocess(np.stack([img] * 3, -1))]), "b10")
    # Lite0 b10: 14x14x112 at 224 px; Lite2 b10 (260 px, 88 ch) resampled onto it
    assert grid.shape == (1, 14, 14, 112 + 88)
    assert np.allclose(np.linalg.norm(grid[0, 3, 4, :112]), 1, atol=1e-4)


def test_encoder_without_spatial_output_says_so():
    import torch

    from radsearch.encoders import Encoder, get_config
    from radsearch.errors import EncoderError

    enc = Encoder(get_config("efficientnet-lite0").replace(name="pooled-only"), torch.nn.Identity())
    assert not enc.has_spatial
    with pytest.raises(EncoderError, match="'pooled-only' has no spatial output"):
        enc.feature_grid(np.zeros((1, 3, 8, 8), np.float32))
