"""Region metrics for ``radsearch evaluate --roi-csv`` (RadBench: docs/regions.md).

Every ROI row of the query split is a region query (label = the row's label) against
the evaluation index; the same query images without a box give the whole-image
baseline; both are scored with the protocol's modified P@k. Localisation@k: of the
top-k hits sharing the query's label that have a box in the table, the fraction whose
``match_box`` centre lies inside one of their boxes; pointing game: the same over the
top-5 with the hit-side heat-map peak. Feedback: P@10 of every query of the split
after 0, 1, 2 rounds of Rocchio with the top 10 marked by their labels.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from radsearch.errors import RadsearchError
from radsearch.evaluate import protocol
from radsearch.regions.explain import peak
from radsearch.regions.feedback import rocchio
from radsearch.regions.query import cell_similarity, match_boxes, rank_region, roi_vector

ROI_COLUMNS = ("filepath", "x0", "y0", "x1", "y1", "label", "split")
KS = (1, 3, 5, 10)
GALLERY = 8  # region queries the report shows (at most ``--gallery``)


def read_roi_csv(path) -> list[dict]:
    """Rows of a box table (``filepath, x0, y0, x1, y1, label, split``), validated."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise RadsearchError(f"{path}: cannot read ROI table ({exc.strerror or exc})") from None
    missing = [c for c in ROI_COLUMNS if not rows or c not in rows[0]]
    if missing:
        raise RadsearchError(f"{path}: ROI table lacks column(s) {', '.join(missing)}")
    out = []
    for n, r in enumerate(rows, start=2):
        try:
            box = tuple(int(float(r[c])) for c in ("x0", "y0", "x1", "y1"))
        except ValueError:
            raise RadsearchError(f"{path}: line {n}: box coordinates are not numbers") from None
        if box[2] <= box[0] or box[3] <= box[1]:
            raise RadsearchError(f"{path}: line {n}: empty or inverted box {box}")
        out.append(
            {"filepath": r["filepath"], "box": box, "label": r["label"], "split": r["split"]}
        )
    return out


def boxes_by_row(index, table: list[dict]) -> dict[int, list[tuple]]:
    out: dict[int, list[tuple]] = defaultdict(list)
    for r in table:
        row = index.row_of(r["filepath"])
        if row is not None:
            out[row].append(r["box"])
    return out


def _inside(x: float, y: float, boxes) -> bool:
    return any(b[0] <= x < b[2] and b[1] <= y < b[3] for b in boxes)


def region_runs(index, store, queries, k: int, global_weight: float):
    """Per query (``qgrid, roi, size, qvec``): top-k rows, their match boxes and scores."""
    rows_out, boxes_out, scores_out = [], [], []
    for qgrid, roi, size, qvec in queries:
        scores, rows, _, _ = rank_region(index, store, qgrid, roi, size, qvec, None, global_weight)
        rows_out.append(rows[:k])
        scores_out.append(scores[:k])
        qr = roi_vector(store, qgrid, roi, *size)
        boxes_out.append(match_boxes(store, qr, roi, size, rows[:k]))
    return np.asarray(rows_out), boxes_out, np.asarray(scores_out)


def localisation(rows, boxes, qcodes, icodes, table_boxes, ks=(1, 5, 10)) -> dict:
    out = {}
    for k in ks:
        good = total = 0
        for q in range(len(rows)):
            for j in range(min(k, rows.shape[1])):
                r = int(rows[q, j])
                if icodes[r] == qcodes[q] and r in table_boxes:
                    b = boxes[q][j]
                    total += 1
                    good += _inside((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, table_boxes[r])
        out[str(k)] = round(good / total, 4) if total else None
    return out


def pointing_game(store, queries, rows, qcodes, icodes, table_boxes, top: int = 5) -> float | None:
    """Hit-side heat-map peak (cosine of hit cells with the ROI vector) inside a box."""
    good = total = 0
    for q, (qgrid, roi, size, _) in enumerate(queries):
        qr = roi_vector(store, qgrid, roi, *size)
        for r in rows[q, :top]:
            r = int(r)
            if icodes[r] != qcodes[q] or r not in table_boxes:
                continue
            w, h = (int(v) for v in store.sizes[r])
            x, y = peak(store, cell_similarity(store, r, qr), w, h)
            total += 1
            good += _inside(x, y, table_boxes[r])
    return round(good / total, 4) if total else None


def precision(rows, qcodes, icodes, ks=KS) -> dict:
    res = protocol.modified_precision(rows, qcodes, icodes, max_k=max(ks))
    return {
        "micro": {str(k): round(float(res.micro[k - 1]), 4) for k in ks if k <= len(res.micro)},
        "macro": {str(k): round(float(res.macro[k - 1]), 4) for k in ks if k <= len(res.macro)},
    }


def feedback_precision(
    index, qvecs, qcodes, icodes, rounds: int = 2, k: int = 10, **weights
) -> dict:
    """P@k after 0..rounds rounds of simulated feedback (top k marked by label)."""
    from radsearch.search import knn_rows

    k = min(k, index.count)
    q = np.asarray(qvecs, np.float32)
    emb = np.asarray(index.embeddings)
    out = {}
    for rnd in range(rounds + 1):
        _, rows = knn_rows(index, q, k)
        out[str(rnd)] = precision(rows, qcodes, icodes, ks=(k,))
        if rnd == rounds:
            break
        marked = icodes[rows] == qcodes[:, None]
        q = np.stack(
            [
                rocchio(q[i][None], emb[rows[i][marked[i]]], emb[rows[i][~marked[i]]], **weights)[0]
                for i in range(len(q))
            ]
        )
    return {
        "micro": {r: v["micro"][str(k)] for r, v in out.items()},
        "macro": {r: v["macro"][str(k)] for r, v in out.items()},
    }


def grids_from_cache(grid_dir, layer: str, ids: list[str]) -> dict:
    """``{id: raw grid}`` from a chunk cache (``chunk-*.npz``: ``ids`` + one map per layer)."""
    want, out = set(ids), {}
    for f in sorted(Path(grid_dir).glob("chunk-*.npz")):
        with np.load(f) as z:
            names = z["ids"].tolist()
            keep = [i for i, v in enumerate(names) if v in want]
            if keep:
                maps = z[layer]
                out.update({names[i]: maps[i] for i in keep})
    missing = want - set(out)
    if missing:
        raise RadsearchError(
            f"{grid_dir}: grid cache lacks {len(missing)} item(s), e.g. {min(missing)}"
        )
    return out


def attach_store(index, refs, encoder, grid_dir=None, progress: bool = False):
    """Give an evaluation index (``refs`` row-aligned) region features; returns the store."""
    from radsearch.io.items import load_pixels
    from radsearch.regions.extract import extract_codes, new_spec
    from radsearch.regions.features import store_of

    index.manifest["regions"] = new_spec(encoder)
    store = store_of(index)
    if grid_dir is None:
        codes, sizes = extract_codes(store, refs, encoder, progress=progress)
    else:
        grids = grids_from_cache(grid_dir, store.spec["layer"], [r.id for r in refs])
        sample = np.random.default_rng(0).choice(len(refs), min(1500, len(refs)), replace=False)
        store.fit(np.stack([grids[refs[i].id] for i in sample]).astype(np.float32))
        codes = np.concatenate(
            [
                store.encode(np.stack([grids[r.id] for r in refs[i : i + 256]]).astype(np.float32))
                for i in range(0, len(refs), 256)
            ]
        )
        sizes = np.asarray([load_pixels(r).shape[1::-1] for r in refs], np.int32)
    store.append_codes(codes, sizes)
    return store


def gallery_order(rois: list[dict], n: int) -> list[int]:
    """Which region queries the report shows: the first box of each label (labels in
    the order they first occur), then the second of each, ... up to ``n``."""
    per_label: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rois):
        per_label[r["label"]].append(i)
    order, depth = [], 0
    while len(order) < n and any(depth < len(v) for v in per_label.values()):
        order += [v[depth] for v in per_label.values() if depth < len(v)]
        depth += 1
    return order[:n]


def region_gallery(data, rois, queries, runs, icodes, rcodes, table_boxes, col, n, hits=5):
    """What the report's region gallery draws, from the searches already run: per shown
    query its ref, label, box and image size, and per top hit its ref, label, score,
    ``match_box``, image size, whether its label matches, and its own boxes."""
    rows, boxes, scores = runs
    out = []
    for q in gallery_order(rois, n):
        shown = []
        for j in range(min(hits, rows.shape[1])):
            r = int(rows[q, j])
            ref = data.index_refs[r]
            shown.append(
                {
                    "ref": ref,
                    "label": ref.metadata.get(col, ""),
                    "score": float(scores[q, j]),
                    "match_box": [int(v) for v in boxes[q][j]],
                    "size": tuple(int(v) for v in queries.store.sizes[r]),
                    "same": bool(icodes[r] == rcodes[q]),
                    "boxes": [list(b) for b in table_boxes.get(r, [])],
                }
            )
        _, box, size, _ = queries.items[q]
        out.append(
            {
                "ref": queries.refs[q],
                "label": rois[q]["label"],
                "box": list(box),
                "size": tuple(int(v) for v in size),
                "hits": shown,
            }
        )
    return out


class RegionQueries:
    """The region queries of an evaluation: ``items`` as :func:`region_runs` takes them
    (``qgrid, roi, size, qvec``), their query refs, and the store they search."""

    def __init__(self, opts, data, store, encoder, rois):
        from radsearch.io.items import load_pixels

        qrow = {r.id: i for i, r in enumerate(data.query_refs)}
        cache = (
            grids_from_cache(
                opts.region_grids, store.spec["layer"], sorted({r["filepath"] for r in rois})
            )
            if opts.region_grids
            else {}
        )
        self.store, self.items, self.refs = store, [], []
        for r in rois:
            ref = data.query_refs[qrow[r["filepath"]]]
            rgb = load_pixels(ref)
            raw = cache.get(ref.id)
            if raw is None:
                raw = encoder.feature_grid(
                    encoder.collate([encoder.preprocess(rgb)]), store.spec["layer"]
                )[0]
            self.refs.append(ref)
            self.items.append(
                (
                    store.project(np.asarray(raw, np.float32)),
                    r["box"],
                    rgb.shape[1::-1],
                    data.qvecs[qrow[r["filepath"]]],
                )
            )


def roi_step(opts, data, metrics: dict, index) -> list[dict]:
    """``evaluate --roi-csv``: the region, localisation, explain and feedback metrics
    into ``metrics``; returns the report's region gallery (:func:`region_gallery`)."""
    from radsearch.encoders import create_encoder
    from radsearch.regions.query import GLOBAL_WEIGHT
    from radsearch.search import knn_rows

    table = read_roi_csv(opts.roi_csv)
    encoder = create_encoder(data.config)
    store = attach_store(index, data.index_refs, encoder, opts.region_grids, opts.progress)
    qids = {r.id for r in data.query_refs}
    rois = [r for r in table if r["split"] == opts.query_split and r["filepath"] in qids]
    if not rois:
        raise RadsearchError(
            f"{opts.roi_csv}: no box of the {opts.query_split!r} split is a query row"
        )
    queries = RegionQueries(opts, data, store, encoder, rois)
    col = opts.label_columns[0]
    qv, iv = data.column(col)
    (qcodes, icodes, rcodes), _ = protocol.encode_labels(qv, iv, [r["label"] for r in rois])
    runs = region_runs(index, store, queries.items, 10, GLOBAL_WEIGHT)
    nb, boxes, _ = runs
    _, whole = knn_rows(index, np.stack([q[3] for q in queries.items]), 10)
    tb = boxes_by_row(index, table)
    metrics["roi"] = {
        "queries": len(rois),
        "settings": {k: store.spec.get(k) for k in ("layer", "grid", "dim", "codec", "contrast")}
        | {"global_weight": GLOBAL_WEIGHT},
        "precision_at_k": precision(nb, rcodes, icodes),
        "whole_image_precision_at_k": precision(whole, rcodes, icodes),
        "localisation_at_k": localisation(nb, boxes, rcodes, icodes, tb),
    }
    metrics["explain"] = {
        "pointing_game": pointing_game(store, queries.items, nb, rcodes, icodes, tb)
    }
    metrics["feedback"] = {"precision_at_10": feedback_precision(index, data.qvecs, qcodes, icodes)}
    n = min(opts.gallery, GALLERY) if opts.report else 0
    return region_gallery(data, rois, queries, runs, icodes, rcodes, tb, col, n)
