"""Where a region hit matched, from an earlier Lite0 block (docs/regions.md, "finer maps").

The ranking is the product's default (block-10 store, contrastive cells, w 0.25,
shortlist 1,024), so region P@1 does not move; only the point each hit is localised at
changes. For every top-10 hit the hit-side map is computed four ways:

- ``coarse``: the default (block-10 cells' cosine with the ROI vector, parabolic peak);
- ``fine``: the same map from an earlier block's grid (``b4``: 28x28, ``b2`` pooled to
  28x28, ``b7``: 14x14), its own ROI vector from the query's grid of that block;
- ``refine``: the block-10 peak picks a 3x3-cell neighbourhood, the finer map the
  point inside it;
- ``blend``: the fine map plus the block-10 map upsampled to its grid.

Fine grids come from a second cache (``--fine DIR``: ``chunk-*.npz`` with ``ids`` and
one fp16 map per block for the brain MRI rows: the ROI images and the brain train
rows; ``--extract`` writes it, about 4 minutes here). ``--codecs`` adds PCA + int8 stores of the fine map (what storing it would
cost), ``--time`` the query-time alternative: one forward pass up to the block on the
top-10 hits' images. Selection on val and train leave-one-out, as
``regions_radbench.py``; test printed for every variant (read it once, for the chosen).

    python benchmarks/regions_fine.py --grids /work/cache/regions/radbench-lite0 \
        --fine /work/cache/regions/radbench-lite0-fine
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import regions_radbench as rb  # noqa: E402

from radsearch.evaluate.protocol import encode_labels  # noqa: E402
from radsearch.io.sources import iter_source  # noqa: E402
from radsearch.regions import evaluate as ev  # noqa: E402
from radsearch.regions import geometry  # noqa: E402
from radsearch.regions.features import Codec, store_of  # noqa: E402
from radsearch.regions.query import (  # noqa: E402
    cell_similarity,
    rank_region,
    refined_peak,
    roi_span,
    roi_vector,
)

W = 0.25


def fine_cells(fine_dir: Path, layer: str, dim: int | None, codec: str):
    """``{id: contrastive H x W x D float32 cells}`` of one block (PCA + int8 when dim)."""
    raw = {}
    for f in sorted(fine_dir.glob("chunk-*.npz")):
        with np.load(f) as z:
            for i, v in enumerate(z["ids"].tolist()):
                raw[v] = z[layer][i]
    if dim:
        ids = sorted(raw)
        rng = np.random.default_rng(0)
        pick = rng.choice(len(ids), min(1500, len(ids)), replace=False)
        sample = np.stack([raw[ids[i]] for i in pick]).astype(np.float32)
        cod = Codec.fit(sample.reshape(-1, sample.shape[-1]), dim, codec)
        raw = {k: cod.decode(cod.encode(v.astype(np.float32)[None]))[0] for k, v in raw.items()}
    out = {}
    for k, v in raw.items():
        v = np.asarray(v, np.float32)
        out[k] = v - v.mean(axis=(0, 1), keepdims=True)
    return out


def fine_roi(cells: np.ndarray, roi, size, spec) -> np.ndarray:
    g = cells.shape[:2]
    cbox = geometry.image_to_cells(roi, *size, spec["input_size"], spec["resize"], g)
    w = geometry.cell_weights(cbox, g)
    v = (cells * w[..., None]).sum(axis=(0, 1)) / w.sum()
    return v / max(float(np.linalg.norm(v)), 1e-12)


def fine_map(cells: np.ndarray, qf: np.ndarray) -> np.ndarray:
    n = cells / np.maximum(np.linalg.norm(cells, axis=-1, keepdims=True), 1e-12)
    return n @ qf


def point(kind: str, coarse: np.ndarray, fine: np.ndarray | None) -> tuple[float, float]:
    """``(row, col)`` in block-10 cell units."""
    if kind == "coarse":
        return refined_peak(coarse)
    s = fine.shape[0] / coarse.shape[0]
    if kind == "fine":
        r, c = refined_peak(fine)
        return r / s, c / s
    up = np.kron(coarse, np.ones((int(s), int(s)), np.float32))
    if kind.startswith("blend"):  # blend:A = coarse upsampled + A * fine (A 1 by default)
        r, c = refined_peak(up + float(kind.partition(":")[2] or 1) * fine)
        return r / s, c / s
    # refine: 3x3 block-10 cells around the coarse peak's cell, finer point inside
    gh, gw = coarse.shape
    i, j = np.unravel_index(int(np.argmax(coarse)), coarse.shape)
    r0, c0 = max(0, i - 1), max(0, j - 1)
    r1, c1 = min(gh, i + 2), min(gw, j + 2)
    win = (int(r0 * s), int(c0 * s), int((r1 - r0) * s), int((c1 - c0) * s))
    r, c = refined_peak(fine, win)
    return r / s, c / s


def box_at(store, row: int, cy: float, cx: float, span) -> list[int]:
    """``query.match_box``'s box (ROI-sized, shrunk at edges) centred at ``(cy, cx)``."""
    gh, gw = store.grid
    hy, hx = min(span[0] / 2, cy, gh - cy), min(span[1] / 2, cx, gw - cx)
    w, h = (int(v) for v in store.sizes[row])
    sp = store.spec
    return geometry.cells_to_image(
        (cx - hx, cy - hy, cx + hx, cy + hy), w, h, sp["input_size"], sp["resize"], store.grid
    )


def default_hits(index, table, grids, split: str):
    """Per ROI row of ``split``: the product's top 10 (w 0.25) and its ROI vector."""
    store = store_of(index)
    rows, qs = rb.roi_queries(index, table, grids, split)
    everything = np.arange(index.count)
    out = []
    for (qgrid, roi, size, qvec), r in zip(qs, rows, strict=True):
        own = index.row_of(r["filepath"]) if split == "train" else None
        allowed = None if own is None else np.delete(everything, own)
        _, cand, _, _ = rank_region(index, store, qgrid, roi, size, qvec, allowed, W)
        out.append((r, roi, size, roi_vector(store, qgrid, roi, *size), cand[:10]))
    return out


def score(index, hits, fine, kind: str, icodes, lookup, tb) -> dict:
    store = store_of(index)
    spec = store.spec
    qcodes = np.asarray([lookup.get(h[0]["label"], -1) for h in hits])
    nb = np.asarray([h[4] for h in hits])
    ids = index.items.column("id").to_pylist()
    boxes, good, total = [], 0, 0
    for q, (r, roi, size, qr, top) in enumerate(hits):
        qf = None if fine is None else fine_roi(fine[r["filepath"]], roi, size, spec)
        span = roi_span(store, roi, size)
        row_boxes = []
        for j, h in enumerate(top):
            h = int(h)
            if icodes[h] != qcodes[q] or h not in tb:
                row_boxes.append([0, 0, 1, 1])  # not counted by the metrics
                continue
            coarse = cell_similarity(store, h, qr)
            fm = None if qf is None else fine_map(fine[ids[h]], qf)
            cy, cx = point(kind, coarse, fm)
            row_boxes.append(box_at(store, h, cy, cx, span))
            if j < 5:
                w, hh = (int(v) for v in store.sizes[h])
                x, y, _, _ = geometry.cells_to_image(
                    (cx, cy, cx, cy), w, hh, spec["input_size"], spec["resize"], store.grid
                )
                total += 1
                good += ev._inside(x, y, tb[h])
        boxes.append(row_boxes)
    loc = ev.localisation(nb, boxes, qcodes, icodes, tb)
    return {"loc": loc, "pointing": round(good / max(total, 1), 4)}


def time_partial(refs, layers: list[str], reps: int) -> None:
    """ms for the query-time fine map on 10 hits: decode + preprocess, then one forward
    pass up to each block, next to the pass up to block 10 (the stored layer, what a
    query's own grid costs) in the same run; eager torch, 2 threads."""
    import torch

    from radsearch.encoders import create_encoder
    from radsearch.io.items import load_pixels

    enc = create_encoder("efficientnet-lite0")
    torch.set_num_threads(2)
    ts: dict[str, list[float]] = {k: [] for k in ["decode", *layers, "b10"]}
    for _ in range(reps):
        t = time.perf_counter()
        batch = torch.from_numpy(enc.collate([enc.preprocess(load_pixels(r)) for r in refs]))
        ts["decode"].append(time.perf_counter() - t)
        for layer in [*layers, "b10"]:
            t = time.perf_counter()
            with torch.inference_mode():
                enc.module.maps(batch, {layer})
            ts[layer].append(time.perf_counter() - t)
    for k, v in ts.items():
        what = "decode + preprocess" if k == "decode" else f"forward to {k}"
        print(f"query-time, {len(refs)} hits, {what}: p50 {1e3 * np.median(v[1:]):.1f} ms")


def extract(out: Path) -> None:
    """The fine cache: Lite0 ``b2`` (2x2-pooled to 28x28), ``b4``, ``b7`` maps (fp16) of
    the brain MRI rows this benchmark reads (ROI images + brain train rows)."""
    import csv
    import os

    import torch

    from radsearch.embed import _Decode
    from radsearch.encoders import create_encoder

    with open(rb.RADBENCH / "radbench_roi.csv", newline="") as fh:
        roi = {r["filepath"] for r in csv.DictReader(fh)}
    refs = [
        r
        for r in iter_source(rb.RADBENCH / "radbench.csv")
        if r.id in roi
        or (r.metadata["dataset"] == "brain_tumor_mri" and r.metadata["split"] == "train")
    ]
    enc, out = create_encoder("efficientnet-lite0"), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dec = _Decode(refs, enc.preprocess_fn())
    for start in range(0, len(refs), 128):
        f = out / f"chunk-{start:05d}.npz"
        if f.exists():
            continue
        items = [dec[i] for i in range(start, min(len(refs), start + 128))]
        x = torch.from_numpy(np.stack([a for _, a, _ in items]))
        with torch.inference_mode():
            m = enc.module.maps(x, {"b2", "b4", "b7"})
        m["b2"] = torch.nn.functional.avg_pool2d(m["b2"], 2)
        maps = {k: v.permute(0, 2, 3, 1).numpy().astype(np.float16) for k, v in m.items()}
        tmp = f.with_suffix(".tmp.npz")
        np.savez(tmp, ids=np.asarray([refs[i].id for i, _, _ in items]), **maps)
        os.replace(tmp, f)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grids", type=Path, required=True)
    ap.add_argument("--fine", type=Path, required=True)
    ap.add_argument("--variants", default="b4,b2,b7", help="blocks of the fine cache")
    ap.add_argument("--codecs", default="", help="e.g. b4:8:sq8,b4:16:sq8")
    ap.add_argument("--splits", default="val,train", help="add test once, for the chosen")
    ap.add_argument("--kinds", default="fine,refine,blend", help="fine, refine, blend[:A]")
    ap.add_argument("--time", type=int, default=0, help="only time the query-time pass (reps)")
    ap.add_argument("--extract", action="store_true", help="first write the --fine cache")
    args = ap.parse_args()
    if args.extract:
        extract(args.fine)
    if args.time:
        brain = [r for r in iter_source(rb.RADBENCH / "radbench.csv") if "brain" in r.id]
        time_partial(brain[:10], args.variants.split(","), args.time + 1)
        return 0
    rb.REFS = list(iter_source(rb.RADBENCH / "radbench.csv"))
    table = ev.read_roi_csv(rb.RADBENCH / "radbench_roi.csv")
    train = [r for r in rb.REFS if r.metadata["split"] == "train"]
    need = {r.id for r in train} | {r["filepath"] for r in table if r["split"] != "train"}
    (icodes,), vocab = encode_labels([r.metadata["label"] for r in train])
    lookup = {v: i for i, v in enumerate(vocab)}
    grids = rb.load_grids(args.grids, "b10", need)
    index = rb.build(train, grids, "b10", 64, "sq8", [1, 2, 3, 4, 6], Path(tempfile.mkdtemp()))
    tb = ev.boxes_by_row(index, table)
    hits = {s: default_hits(index, table, grids, s) for s in args.splits.split(",")}
    del grids
    stores = [(v, None, "fp16") for v in args.variants.split(",") if v]
    stores += [
        (c.split(":")[0], int(c.split(":")[1]), c.split(":")[2])
        for c in args.codecs.split(",")
        if c
    ]
    for split, hs in hits.items():
        f = score(index, hs, None, "coarse", icodes, lookup, tb)
        print(
            f"{split} coarse (default): loc@1/5/10 {f['loc']} pointing {f['pointing']}", flush=True
        )
    for layer, dim, codec in stores:
        fine = fine_cells(args.fine, layer, dim, codec)
        name = f"{layer}" + (f" PCA {dim} {codec}" if dim else " raw")
        for kind in args.kinds.split(","):
            for split, hs in hits.items():
                f = score(index, hs, fine, kind, icodes, lookup, tb)
                print(
                    f"{split} {name} {kind}: loc@1/5/10 {f['loc']} pointing {f['pointing']}",
                    flush=True,
                )
        del fine
    return 0


if __name__ == "__main__":
    sys.exit(main())
