"""Region scoring: the whole-image shortlist, the paper-scale decode path, contrastive cells."""

from __future__ import annotations

import numpy as np
import pytest

from radsearch.regions import query
from radsearch.regions.features import Codec, RegionStore, require
from test_regions import PATCH, QUERY_PATCH, inside, planted  # noqa: F401  (fixture)


def _store(codes: np.ndarray, contrast: bool, windows=(1, 2, 3)) -> RegionStore:
    """An fp16 store with an identity "PCA" over ``N x H x W x D`` cells."""
    d = codes.shape[-1]
    spec = {
        "layer": "b10",
        "dim": d,
        "codec": "fp16",
        "input_size": 224,
        "resize": "squash",
        "grid": list(codes.shape[1:3]),
        "channels": d,
        "windows": list(windows),
        "fit_roi": True,
        "contrast": contrast,
    }
    codec = Codec(np.zeros(d), np.eye(d))
    sizes = np.full((len(codes), 2), 224, np.int32)
    return RegionStore(spec, codec, codes.astype(np.float16), sizes)


def test_shortlist_gives_the_full_scans_top_hits(planted):  # noqa: F811
    root, index = planted
    store = require(index)
    full = index.search(str(root / "query.png"), k=3, roi=QUERY_PATCH)[0].hits
    store.spec["shortlist"] = 6  # fewer candidates than items: the region part sees 6 of 10
    try:
        short = index.search(str(root / "query.png"), k=3, roi=QUERY_PATCH)[0].hits
    finally:
        store.spec.pop("shortlist")
    assert [h.id for h in short] == [h.id for h in full]
    assert [h.match_box for h in short] == [h.match_box for h in full]
    assert short[0].id == "right.png" and inside(short[0].match_box, PATCH)


def test_shortlist_scores_only_the_whole_image_candidates(planted):  # noqa: F811
    from radsearch.search import knn_rows

    root, index = planted
    store = require(index)
    image = str(root / "query.png")
    qvec = index.encoder().encode_images(query.load_query_images(image)[1])[0]
    grid = query.query_grid(index, store, query.load_query_images(image)[1][0])
    size = (224, 224)
    scores, rows, _, _ = query.rank_region(
        index, store, grid, QUERY_PATCH, size, qvec, None, 0.3, shortlist=4
    )
    _, top4 = knn_rows(index, qvec[None], 4)
    assert sorted(rows.tolist()) == sorted(top4[0].tolist())
    all_scores, all_rows, _, _ = query.rank_region(
        index, store, grid, QUERY_PATCH, size, qvec, None, 0.3, shortlist=0
    )
    assert len(all_rows) == index.count
    at = {int(r): s for r, s in zip(all_rows, all_scores, strict=True)}
    assert np.allclose(scores, [at[int(r)] for r in rows], atol=1e-6)  # same scores as the scan


def test_large_store_decodes_only_the_shortlist(monkeypatch):
    rng = np.random.default_rng(3)
    store = _store(rng.standard_normal((40, 7, 7, 8)), contrast=True)
    qr = rng.standard_normal(8).astype(np.float32)
    qr /= np.linalg.norm(qr)
    rows = np.asarray([31, 2, 17, 5, 11])
    cached = query.best_windows(store, qr, rows, (2, 2))
    monkeypatch.setattr(query, "CACHE_ITEMS", 0)  # as for a paper-scale, memory-mapped store
    store._cache.clear()
    direct = query.best_windows(store, qr, rows, (2, 2))
    assert "cells" not in store._cache and "norms" not in store._cache
    assert np.allclose(cached[0], direct[0], atol=1e-5)
    assert (cached[1] == direct[1]).all() and (cached[2] == direct[2]).all()


@pytest.mark.parametrize("contrast", [False, True])
def test_contrastive_map_peaks_on_the_planted_cell(contrast):
    """The hit's left half looks like the query's background, its right half is other
    tissue carrying a planted finding; the ROI (finding on query background) matches
    the left half better in plain cosine. Subtracting each image's mean cell removes
    what is generic, so the map and the match box land on the finding."""
    rng = np.random.default_rng(0)
    bg, other, finding = np.eye(16)[0] * 4, np.eye(16)[1] * 4, np.eye(16)[2] * 3
    hit = np.where(np.arange(14)[None, :, None] < 7, bg, other) * np.ones((14, 14, 1))
    hit[9, 11] += finding
    qgrid = np.ones((14, 14, 1)) * bg
    qgrid[3, 2] += finding
    hit += 0.05 * rng.standard_normal(hit.shape)
    store = _store(hit[None], contrast)
    proj = store.project(qgrid.astype(np.float32))
    roi = (32, 48, 48, 64)  # exactly query cell (3, 2) in pixels of the 224 px image
    qr = query.roi_vector(store, proj, roi, 224, 224)
    sim = query.cell_similarity(store, 0, qr)
    peak = np.unravel_index(int(np.argmax(sim)), sim.shape)
    box = query.match_boxes(store, qr, roi, (224, 224), [0])[0]
    on_finding = inside(box, (176, 144, 192, 160))  # hit cell (9, 11)
    if contrast:
        assert peak == (9, 11) and on_finding, (peak, box)
        assert 16 <= box[2] - box[0] <= 17 and 16 <= box[3] - box[1] <= 17  # the ROI's size
    else:  # plain cosine follows the shared background: what contrast is for
        assert peak[1] < 7 and not on_finding
