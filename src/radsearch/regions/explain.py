"""Why similar: patch-level similarity maps between a query and one hit.

Both grids live in the index's region space (cosine of L2-normalised cells). Without
an ROI each cell's value is its best match among the other image's cells (shared
structures light up on both sides); with an ROI the hit map is each hit cell's cosine
with the ROI vector (``query.cell_similarity``, whose peak the ``match_box`` is centred
on) and the query map each query cell's cosine with the hit's cells under that box. Peaks are the centres of the
maximal cells, in the stored images' pixel coordinates.
"""

from __future__ import annotations

import numpy as np

from radsearch.errors import RadsearchError
from radsearch.regions import geometry
from radsearch.regions.features import require
from radsearch.regions.query import (
    best_windows,
    cell_similarity,
    match_boxes,
    query_grid,
    refined_peak,
    roi_extent,
    roi_vector,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def peak(store, sim: np.ndarray, width: int, height: int) -> list[int]:
    """Sub-cell peak of an ``H x W`` map (``refined_peak``), in image pixels."""
    r, c = refined_peak(sim)
    spec = store.spec
    x0, y0, x1, y1 = geometry.cells_to_image(
        (c, r, c, r), width, height, spec["input_size"], spec["resize"], store.grid
    )
    return [int(x0), int(y0)]


def hit_ref(index, row: int):
    """The hit's ``ItemRef`` (pixels come through the one decode path)."""
    if hasattr(index, "ref"):
        return index.ref(row)
    from radsearch.io.items import ItemRef

    meta = index.rows([row])[0]
    item_id, frame = meta["id"], None
    for tag in ("#frame=", "#slice="):
        if tag in item_id:
            frame = int(item_id.rsplit(tag, 1)[1])
    return ItemRef(id=item_id, source=meta["source"], frame=frame)


def similarity_maps(index, image: np.ndarray, hit_id: str, roi=None) -> dict:
    """The two maps, their peaks and the hit's match box (``roi`` given)."""
    store = require(index)
    row = index.row_of(str(hit_id))
    if row is None:
        raise RadsearchError(f"hit id {hit_id!r}: not in the index {index.path}")
    qh, qw = image.shape[:2]
    hw_, hh_ = (int(v) for v in store.sizes[row])
    gh, gw = store.grid
    qgrid = query_grid(index, store, image)
    hgrid = store.cells([row])[0].reshape(gh, gw, -1)
    qn, hn = _unit(qgrid.reshape(-1, qgrid.shape[-1])), _unit(hgrid.reshape(-1, hgrid.shape[-1]))
    out = {"hit_id": str(hit_id), "grid": [gh, gw]}
    if roi is not None:
        roi = geometry.check_box(roi, qw, qh, "roi")
        qr = roi_vector(store, qgrid, roi, qw, qh)
        hit_map = cell_similarity(store, row, qr).ravel()
        score, _, _ = best_windows(store, qr, np.asarray([row]), roi_extent(store, roi, (qw, qh)))
        box = match_boxes(store, qr, roi, (qw, qh), [row])[0]
        a, b = box_cells(store, row, box)
        win = _unit(hgrid[a[0] : a[1], b[0] : b[1]].reshape(-1, hgrid.shape[-1]).sum(axis=0))
        query_map = qn @ win
        out.update(roi=list(roi), match_box=box, region_score=round(float(score[0]), 6))
    else:
        sim = qn @ hn.T
        query_map, hit_map = sim.max(axis=1), sim.max(axis=0)
    qm, hm = query_map.reshape(gh, gw), hit_map.reshape(gh, gw)
    out["query"] = {
        "size": [qw, qh],
        "map": np.round(qm, 4).tolist(),
        "peak": peak(store, qm, qw, qh),
    }
    out["hit"] = {
        "size": [hw_, hh_],
        "map": np.round(hm, 4).tolist(),
        "peak": peak(store, hm, hw_, hh_),
    }
    return out


def box_cells(store, row: int, box) -> tuple[tuple[int, int], tuple[int, int]]:
    """Rows and columns of the grid a pixel box of item ``row`` covers."""
    spec = store.spec
    w, h = (int(v) for v in store.sizes[row])
    c0, r0, c1, r1 = geometry.image_to_cells(
        box, w, h, spec["input_size"], spec["resize"], store.grid
    )
    gh, gw = store.grid
    r0, c0 = int(np.clip(round(r0), 0, gh - 1)), int(np.clip(round(c0), 0, gw - 1))
    r1, c1 = int(np.clip(round(r1), r0 + 1, gh)), int(np.clip(round(c1), c0 + 1, gw))
    return (r0, r1), (c0, c1)


def _heat(rgb: np.ndarray, sim: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a map (upsampled to the image) onto it, blue (low) to red (high)."""
    from PIL import Image

    lo, hi = float(sim.min()), float(sim.max())
    m = (sim - lo) / max(hi - lo, 1e-6)
    up = (
        np.asarray(
            Image.fromarray((m * 255).astype(np.uint8)).resize(
                (rgb.shape[1], rgb.shape[0]), Image.Resampling.BILINEAR
            ),
            np.float32,
        )
        / 255.0
    )
    colour = np.stack(
        [
            np.clip(1.5 - abs(4 * up - 3), 0, 1),
            np.clip(1.5 - abs(4 * up - 2), 0, 1),
            np.clip(1.5 - abs(4 * up - 1), 0, 1),
        ],
        axis=-1,
    )
    return (rgb.astype(np.float32) * (1 - alpha) + colour * 255 * alpha).astype(np.uint8)


def overlay_png(query: np.ndarray, hit: np.ndarray, maps: dict, height: int = 320) -> bytes:
    """Query | hit, each with its map overlaid; ROI and match box outlined, peaks marked."""
    import io

    from PIL import Image, ImageDraw

    panels = []
    for rgb, side, box in ((query, "query", maps.get("roi")), (hit, "hit", maps.get("match_box"))):
        im = Image.fromarray(_heat(rgb, np.asarray(maps[side]["map"], np.float32)))
        d = ImageDraw.Draw(im)
        if box:
            d.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(255, 255, 255), width=2)
        px, py = maps[side]["peak"]
        d.ellipse([px - 4, py - 4, px + 4, py + 4], outline=(255, 255, 0), width=2)
        scale = height / im.height
        panels.append(
            im.resize((max(1, round(im.width * scale)), height), Image.Resampling.BILINEAR)
        )
    canvas = Image.new("RGB", (sum(p.width for p in panels) + 8, height), (0, 0, 0))
    canvas.paste(panels[0], (0, 0))
    canvas.paste(panels[1], (panels[0].width + 8, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def explain(index, image: np.ndarray, hit_id: str, roi=None) -> tuple[dict, bytes]:
    """Maps (JSON-able) and the side-by-side PNG for one query/hit pair."""
    from radsearch.io.items import load_pixels

    maps = similarity_maps(index, image, hit_id, roi)
    hit = load_pixels(hit_ref(index, index.row_of(str(hit_id))))
    return maps, overlay_png(image, hit, maps)
