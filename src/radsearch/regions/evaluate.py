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
from radsearch.regions.query import rank_region, window_box

ROI_COLUMNS = ("filepath", "x0", "y0", "x1", "y1", "label", "split")
KS = (1, 3, 5, 10)


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
        out.append({"filepath": r["filepath"], "box": box, "label": r["label"], "split": r["split"]})
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
    """Per query (``qgrid, roi, size, qvec``): top-k rows and their match boxes."""
    rows_out, boxes_out = [], []
    for qgrid, roi, size, qvec in queries:
        _, rows, shape_i, pos = rank_region(index, store, qgrid, roi, size, qvec, None, global_weight)
        rows_out.append(rows[:k])
        boxes_out.append([window_box(store, int(r), int(s), int(p))
                          for r, s, p in zip(rows[:k], shape_i[:k], pos[:k], strict=True)])
    return np.asarray(rows_out), boxes_out


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
    from radsearch.regions.query import roi_vector

    gh, gw = store.grid
    good = total = 0
    for q, (qgrid, roi, size, _) in enumerate(queries):
        qr = roi_vector(store, qgrid, roi, *size)
        for r in rows[q, :top]:
            r = int(r)
            if icodes[r] != qcodes[q] or r not in table_boxes:
                continue
            cells = store.cells([r])[0]
            sim = (cells / np.maximum(np.linalg.norm(cells, axis=1, keepdims=True), 1e-12)) @ qr
            w, h = (int(v) for v in store.sizes[r])
            x, y = peak(store, sim.reshape(gh, gw), w, h)
            total += 1
            good += _inside(x, y, table_boxes[r])
    return round(good / total, 4) if total else None


def precision(rows, qcodes, icodes, ks=KS) -> dict:
    res = protocol.modified_precision(rows, qcodes, icodes, max_k=max(ks))
    return {
        "micro": {str(k): round(float(res.micro[k - 1]), 4) for k in ks if k <= len(res.micro)},
        "macro": {str(k): round(float(res.macro[k - 1]), 4) for k in ks if k <= len(res.macro)},
    }


def feedback_precision(index, qvecs, qcodes, icodes, rounds: int = 2, k: int = 10, **weights) -> dict:
    """P@k after 0..rounds rounds of simulated feedback (top k marked by label)."""
    from radsearch.search import knn_rows

    q = np.asarray(qvecs, np.float32)
    emb = np.asarray(index.embeddings)
    out = {}
    for rnd in range(rounds + 1):
        _, rows = knn_rows(index, q, k)
        out[str(rnd)] = precision(rows, qcodes, icodes, ks=(k,))
        if rnd == rounds:
            break
        marked = icodes[rows] == qcodes[:, None]
        q = np.stack([
            rocchio(q[i][None], emb[rows[i][marked[i]]], emb[rows[i][~marked[i]]], **weights)[0]
            for i in range(len(q))
        ])
    return {
        "micro": {r: v["micro"][str(k)] for r, v in out.items()},
        "macro": {r: v["macro"][str(k)] for r, v in out.items()},
    }
