"""Text-to-image search with a tiny random-weight open_clip model saved locally."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("open_clip")

from radsearch.errors import RadsearchError  # noqa: E402


@pytest.fixture(scope="module")
def clip_index(tmp_path_factory):
    from PIL import Image

    from conftest import make_pattern
    from radsearch.io.sources import iter_source
    from radsearch.pipeline import build_index
    from tiny_models import save_tiny_open_clip

    tmp_path = tmp_path_factory.mktemp("text")
    folder = tmp_path / "images"
    for kind in ("stripes", "rings", "blob"):
        (folder / kind).mkdir(parents=True)
        for n in range(3):
            Image.fromarray(make_pattern(kind, seed=n)).save(folder / kind / f"{n}.png")
    model_dir = save_tiny_open_clip(tmp_path / "oc")
    refs = list(iter_source(folder, label_from_folder=True))
    build_index(refs, tmp_path / "ix", model=f"open_clip:{model_dir}", workers=0, progress=False)
    return tmp_path / "ix"


def test_text_search_matches_knn_rows(clip_index):
    from radsearch.index import Index
    from radsearch.search import knn_rows, search_index

    index = Index.open(clip_index)
    texts = ["pleural effusion", "axial brain MRI"]
    results = search_index(index, None, k=4, text=texts)
    assert [r.query for r in results] == [f"text:{t}" for t in texts]
    vec = index.encoder().encode_text(texts)
    scores, rows = knn_rows(index, vec, 4)
    ids = index.items.column("id").to_pylist()
    for r, srow, rrow in zip(results, scores, rows, strict=True):
        assert [h.id for h in r.hits] == [ids[i] for i in rrow]
        assert np.allclose([h.score for h in r.hits], srow, atol=1e-5)
    assert [h.id for h in index.search(None, k=4, text="pleural effusion")[0].hits] == [
        h.id for h in results[0].hits
    ]


def test_text_search_applies_the_recipe(clip_index):
    from radsearch.index import Index
    from radsearch.recipe import Recipe
    from radsearch.search import knn_rows, search_index

    index = Index.open(clip_index)
    index.set_recipe(Recipe({"whiten": {"dim": 6}, "qe": {"k": 2}}))  # in memory only
    res = search_index(index, None, k=3, text="pleural effusion")[0]
    _, rows = knn_rows(index, index.encoder().encode_text(["pleural effusion"]), 3)
    ids = index.items.column("id").to_pylist()
    assert [h.id for h in res.hits] == [ids[i] for i in rows[0]]


def test_cli_search_text(clip_index, capsys):
    from radsearch.cli import main

    assert main(["search", str(clip_index), "--text", "pleural effusion", "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["queries"][0]["query"] == "text:pleural effusion"
    assert len(out["queries"][0]["hits"]) == 3
    assert main(["search", str(clip_index)]) == 1
    assert "not both" in capsys.readouterr().err


def test_text_search_needs_a_clip_encoder(tmp_path):
    from radsearch.encoders import EncoderConfig
    from radsearch.index import Index
    from radsearch.io.items import ItemRef
    from radsearch.search import search_index

    cfg = EncoderConfig(
        name="efficientnet-lite0", family="efficientnet-lite", model_id="efficientnet-lite0", dim=4
    )
    index = Index.create(tmp_path / "ix", cfg)
    index.add([ItemRef("a", "a")], np.eye(1, 4, dtype=np.float32))
    try:
        search_index(index, None, text="effusion")
    except RadsearchError as exc:  # no text tower (or no weights here): a clear user error
        assert "text" in str(exc) or "weights" in str(exc) or "model" in str(exc)
    else:
        pytest.fail("text search on an image-only encoder must fail")
    with pytest.raises(RadsearchError, match="empty"):
        search_index(index, None, text="  ")
