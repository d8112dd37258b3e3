"""Region queries: "cases like *this* part of the image", with where each hit matched.

The query image's feature grid (the index's encoder and region layer, projected into
the store's scoring space: PCA, and with ``spec["contrast"]`` minus the image's mean
cell) is averaged over the cells under the ROI, weighted by how much of each cell the
box covers. Candidates are the whole-image search's top ``spec["shortlist"]`` (1,024;
0 scans every item): on RadBench val their top 10 are the full scan's, and a query
then touches a fixed number of items however large the archive. Each candidate is
scored by its best window of cells no larger than the ROI (cosine of the ROI vector
with the window's summed cells; window norms are cached per process). The hit's
``match_box`` is a box of the ROI's size centred on the sub-cell peak of the hit-side
map (``cell_similarity``, the map ``explain`` draws). The final score mixes in the
whole-image cosine: ``(1 - w) * region + w * global`` with
``w = spec["global_weight"]`` (chosen on RadBench val and train leave-one-out,
docs/regions.md). Filters, one-per-patient and the vote are ``radsearch.search``'s own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from radsearch.errors import RadsearchError
from radsearch.regions import geometry
from radsearch.regions.features import require
from radsearch.search import DEFAULT_SUGGEST, PATIENT_COLUMN, QueryResult, _collect, filter_rows

WINDOWS = (1, 2, 3)
GLOBAL_WEIGHT = 0.25  # chosen on RadBench val and train leave-one-out (docs/regions.md)
SHORTLIST = 1024  # whole-image candidates the region score runs on (chosen on RadBench val)
CACHE_ITEMS = 250_000  # up to this many items, decoded cells and window norms stay in memory


def window_shapes(store) -> list[tuple[int, int]]:
    """Window shapes (rows x columns of cells) scored per item: ``spec["windows"]``."""
    sizes = store.spec.get("windows") or WINDOWS
    gh, gw = store.grid
    return [(a, b) for a in sizes for b in sizes if a <= gh and b <= gw]


def _integral(x: np.ndarray) -> np.ndarray:
    """Summed-area table of ``N x H x W (x D)``, zero-padded: ``N x (H+1) x (W+1) (x D)``."""
    c = np.cumsum(np.cumsum(x, axis=1), axis=2)
    return np.pad(c, [(0, 0), (1, 0), (1, 0)] + [(0, 0)] * (x.ndim - 3))


def _window_sums(c: np.ndarray, a: int, b: int) -> np.ndarray:
    """Sums over every ``a x b`` window from a summed-area table."""
    return c[:, a:, b:] - c[:, :-a, b:] - c[:, a:, :-b] + c[:, :-a, :-b]


def _norms(grids: np.ndarray, shapes) -> dict:
    """Per window shape, ``N x P`` norms of the windows' summed cells of ``N x H x W x D``."""
    tab = _integral(grids)
    return {
        (a, b): np.linalg.norm(_window_sums(tab, a, b), axis=-1).reshape(len(grids), -1)
        for a, b in shapes
    }


def window_norms(store) -> dict:
    """Per window shape, ``N x P`` norms of every item's windows (cached)."""
    cache = store._cache
    if "norms" not in cache:
        gh, gw = store.grid
        cells = store.cells()
        shapes = window_shapes(store)
        parts = [
            _norms(cells[i : i + 512].reshape(-1, gh, gw, cells.shape[-1]), shapes)
            for i in range(0, len(cells), 512)
        ]
        cache["norms"] = {
            s: np.concatenate([p[s] for p in parts]) if parts else np.zeros((0, 0), np.float32)
            for s in shapes
        }
    return cache["norms"]


def _cells_and_norms(store, rows, shapes):
    """Cells (``N x H*W x D``) and window norms of ``rows`` (all when None).

    Up to ``CACHE_ITEMS`` items every cell and window norm stays in memory; a larger
    store (a paper-scale archive) decodes only the shortlisted rows from its
    memory-mapped codes, so a query touches ``shortlist`` items, not the archive."""
    gh, gw = store.grid
    if rows is not None and len(store) > CACHE_ITEMS:
        cells = store.cells(np.sort(rows))[np.argsort(np.argsort(rows))]
        return cells, _norms(cells.reshape(-1, gh, gw, cells.shape[-1]), shapes)
    cells, norms = store.cells(), window_norms(store)
    if rows is None:
        return cells, norms
    return cells[rows], {s: norms[s][rows] for s in shapes}


def best_windows(store, qr: np.ndarray, rows: np.ndarray | None = None, limit=None):
    """Best window per item: ``(score N, shape index N, position N)``.

    ``limit`` ``(rows, cols)``: only windows no larger than this (the ROI's extent in
    cells, with ``spec["fit_roi"]``: keeps the match box near the finding's size)."""
    gh, gw = store.grid
    shapes = window_shapes(store)
    use = [s for s in shapes if limit is None or (s[0] <= limit[0] and s[1] <= limit[1])]
    cells, norms = _cells_and_norms(store, rows, use)
    dots = (cells @ qr).reshape(-1, gh, gw)
    table = _integral(dots)
    best = np.full(len(dots), -np.inf, np.float32)
    shape_i = np.zeros(len(dots), np.int64)
    pos = np.zeros(len(dots), np.int64)
    for a, b in use:
        s = _window_sums(table, a, b).reshape(len(dots), -1) / np.maximum(norms[(a, b)], 1e-6)
        j = s.argmax(axis=1)
        v = s[np.arange(len(s)), j]
        better = v > best
        best[better], shape_i[better], pos[better] = v[better], shapes.index((a, b)), j[better]
    return best, shape_i, pos


def _vertex(left: float, mid: float, right: float) -> float:
    """Offset (-0.5..0.5) of the top of the parabola through three samples."""
    den = left - 2 * mid + right
    return 0.0 if den >= 0 else float(np.clip(0.5 * (left - right) / den, -0.5, 0.5))


def refined_peak(sim: np.ndarray, window=None) -> tuple[float, float]:
    """Sub-cell peak ``(row, col)`` in cell units (cell centres at +0.5) of an ``H x W``
    map, restricted to ``window`` ``(r0, c0, rows, cols)``: parabolic fit around the
    best cell, so the point is finer than the grid."""
    gh, gw = sim.shape
    r0, c0, a, b = window or (0, 0, gh, gw)
    i, j = np.unravel_index(int(np.argmax(sim[r0 : r0 + a, c0 : c0 + b])), (a, b))
    r, c = r0 + i, c0 + j
    dy = _vertex(sim[r - 1, c], sim[r, c], sim[r + 1, c]) if 0 < r < gh - 1 else 0.0
    dx = _vertex(sim[r, c - 1], sim[r, c], sim[r, c + 1]) if 0 < c < gw - 1 else 0.0
    return r + 0.5 + dy, c + 0.5 + dx


def cell_similarity(store, row: int, qr: np.ndarray) -> np.ndarray:
    """The hit-side map: ``H x W`` cosine of item ``row``'s cells with the ROI vector.

    The one place it is computed: ``match_box`` centres on its peak and ``explain``
    draws it, so the box and the heat map never disagree."""
    cells = store.cells([row])[0]
    sim = (cells / np.maximum(np.linalg.norm(cells, axis=1, keepdims=True), 1e-12)) @ qr
    return sim.reshape(store.grid)


def match_box(store, row: int, qr: np.ndarray, span) -> list[int]:
    """Where item ``row`` matched: a box of the ROI's size (``span``: rows, cols in cell
    units, the same fraction of the hit as the ROI is of the query) centred on the
    sub-cell peak of the hit-side map; near an edge it shrinks, keeping that centre."""
    gh, gw = store.grid
    cy, cx = refined_peak(cell_similarity(store, row, qr))
    hy, hx = min(span[0] / 2, cy, gh - cy), min(span[1] / 2, cx, gw - cx)
    width, height = (int(v) for v in store.sizes[row])
    spec = store.spec
    return geometry.cells_to_image(
        (cx - hx, cy - hy, cx + hx, cy + hy),
        width,
        height,
        spec["input_size"],
        spec["resize"],
        store.grid,
    )


def roi_span(store, roi, size) -> tuple[float, float]:
    """The ROI's height and width in cell units (``size``: the query's width, height)."""
    spec = store.spec
    c0, r0, c1, r1 = geometry.image_to_cells(
        roi, *size, spec["input_size"], spec["resize"], store.grid
    )
    return r1 - r0, c1 - c0


def match_boxes(store, qr: np.ndarray, roi, size, rows) -> list[list[int]]:
    """``match_box`` of each of ``rows`` for this ROI."""
    span = roi_span(store, roi, size)
    return [match_box(store, int(r), qr, span) for r in rows]


def query_grid(index, store, image: np.ndarray) -> np.ndarray:
    """The query image's grid in the store's space (``H x W x D``)."""
    enc = index.encoder()
    grid = enc.feature_grid(enc.collate([enc.preprocess(image)]), store.spec["layer"])[0]
    return store.project(grid)


def roi_vector(store, qgrid: np.ndarray, roi, width: int, height: int) -> np.ndarray:
    """Mean of the query cells under ``roi`` (weighted by cover), L2-normalised."""
    spec = store.spec
    cbox = geometry.image_to_cells(
        roi, width, height, spec["input_size"], spec["resize"], store.grid
    )
    w = geometry.cell_weights(cbox, store.grid)
    v = (qgrid * w[..., None]).sum(axis=(0, 1)) / w.sum()
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def roi_extent(store, roi, size) -> tuple[int, int] | None:
    """Largest window (rows, cols) for this ROI when ``spec["fit_roi"]``, else None."""
    if not store.spec.get("fit_roi"):
        return None
    rows, cols = roi_span(store, roi, size)
    return max(1, int(np.ceil(rows - 0.25))), max(1, int(np.ceil(cols - 0.25)))


def load_query_images(queries) -> tuple[list[str], list[np.ndarray]]:
    if isinstance(queries, np.ndarray) and queries.ndim == 2 and queries.dtype.kind == "f":
        raise RadsearchError("a region query needs the query image, not a vector")
    if isinstance(queries, (str, Path, np.ndarray)):
        queries = [queries]
    from radsearch.io.items import read_image

    names, images = [], []
    for i, q in enumerate(queries or []):
        names.append(str(q) if isinstance(q, (str, Path)) else f"image[{i}]")
        images.append(read_image(q) if isinstance(q, (str, Path)) else np.asarray(q))
    if not images:
        raise RadsearchError("a region query needs a query image")
    return names, images


def shortlist_rows(index, qvec: np.ndarray, rows_allowed, size: int):
    """The whole-image search's top ``size`` rows (within the filter), or ``rows_allowed``
    itself (None: every row) when ``size`` is 0 or covers them all."""
    pool = index.count if rows_allowed is None else len(rows_allowed)
    if not size or size >= pool:
        return rows_allowed
    from radsearch.search import knn_rows

    _, rows = knn_rows(index, np.asarray(qvec, np.float32)[None], size, rows_allowed)
    return rows[0][rows[0] >= 0]


def rank_region(
    index, store, qgrid, roi, size, qvec, rows_allowed, global_weight: float, shortlist=None
):
    """``(scores, rows, shape index, position)`` of the candidates, best first.

    ``qgrid``: the query's projected grid; ``size``: its image's (width, height).
    Candidates: the whole-image search's top ``shortlist`` (default
    ``spec["shortlist"]``; 0 scans every row), then the windowed region score on
    those only (docs/regions.md: on RadBench val the top 10 equal the full scan's)."""
    if shortlist is None:
        shortlist = store.spec.get("shortlist", SHORTLIST)
    rows_allowed = shortlist_rows(index, qvec, rows_allowed, shortlist)
    qr = roi_vector(store, qgrid, roi, *size)
    score, shape_i, pos = best_windows(store, qr, rows_allowed, roi_extent(store, roi, size))
    rows = np.arange(index.count) if rows_allowed is None else rows_allowed
    if global_weight:
        emb = index.embeddings if rows_allowed is None else np.asarray(index.embeddings)[rows]
        score = (1 - global_weight) * score + global_weight * (np.asarray(emb) @ qvec)
    order = np.argsort(-score, kind="stable")
    return score[order], rows[order], shape_i[order], pos[order]


def search_regions(
    index,
    queries,
    k: int = 10,
    *,
    roi,
    where: dict | None = None,
    one_per_patient: bool = False,
    suggest: str | None = DEFAULT_SUGGEST,
    names: list[str] | None = None,
    relevant=None,
    irrelevant=None,
    global_weight: float | None = None,
    text=None,
) -> list[QueryResult]:
    """Region search (see module docstring); feedback ids refine the global part."""
    from radsearch.search import majority_vote

    if text:
        raise RadsearchError("a region query needs a query image, not text")
    if k < 1:
        raise RadsearchError(f"k must be at least 1 (got {k})")
    store = require(index)
    labels, images = load_query_images(queries)
    for name, im in zip(labels, images, strict=True):  # every ROI checked before any work
        roi = geometry.check_box(roi, im.shape[1], im.shape[0], f"roi for {name}")
    gw = store.spec.get("global_weight", GLOBAL_WEIGHT) if global_weight is None else global_weight
    qvecs = index.encoder().encode_images(images)
    if relevant or irrelevant:
        from radsearch.regions.feedback import refine_vectors

        qvecs = refine_vectors(index, qvecs, relevant, irrelevant)
    rows_allowed = filter_rows(index, where)
    has_patient = one_per_patient and PATIENT_COLUMN in index.items.column_names
    results = []
    for name, im, qv in zip(names or labels, images, qvecs, strict=True):
        if rows_allowed is not None and len(rows_allowed) == 0:
            results.append(QueryResult(name, []))
            continue
        size = (im.shape[1], im.shape[0])
        qgrid = query_grid(index, store, im)
        qr = roi_vector(store, qgrid, roi, *size)
        short = store.spec.get("shortlist", SHORTLIST)
        scores, rows, _, _ = rank_region(
            index, store, qgrid, roi, size, qv, rows_allowed, gw, short and max(short, 10 * k)
        )
        fetch = min(len(rows), 10 * k if has_patient else k)
        while True:
            hits = _collect(index, scores[:fetch], rows[:fetch], k, has_patient)
            if len(hits) == k or fetch >= len(rows):
                break
            fetch = min(len(rows), fetch * 4)
        boxes = match_boxes(store, qr, roi, size, [index.row_of(h.id) for h in hits])
        for h, box in zip(hits, boxes, strict=True):
            h.match_box = box
        results.append(QueryResult(name, hits))
    if suggest:
        column = suggest if suggest in index.items.column_names else None
        for r in results:
            r.suggestion = majority_vote(r.hits, column) if column else None
    return results
