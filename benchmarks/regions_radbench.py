"""Region queries, localisation, pointing game and feedback on RadBench (docs/regions.md).

Reads a grid cache (``--grids DIR``: ``chunk-*.npz`` with ``ids``, ``glob`` = the
L2-normalised average-pooled Lite0 head vector, and one fp16 ``B x H x W x C`` map per
layer: ``head``, ``b14``, ``b10``), builds the full RadBench train index with region
features for each layer, chooses settings on the val ROI rows, and prints test figures
next to the whole-image baseline of the same queries, micro and macro.

    python benchmarks/regions_radbench.py --grids /work/cache/regions/radbench-lite0
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from radsearch.evaluate.protocol import encode_labels
from radsearch.index import Index
from radsearch.io.sources import iter_source
from radsearch.regions import evaluate as ev
from radsearch.regions.features import region_spec, store_of
from radsearch.search import knn_rows

RADBENCH = Path(__file__).resolve().parents[2] / "shared" / "radbench"


class _Cfg:  # what region_spec reads from an encoder
    def __init__(self, index):
        self.config = index.encoder_config


def load_grids(grid_dir: Path, layer: str, ids: set[str]):
    """``{id: (glob vector, raw fp16 grid)}`` for ``ids`` from the chunk cache."""
    out = {}
    for f in sorted(grid_dir.glob("chunk-*.npz")):
        with np.load(f) as z:
            keep = [i for i, v in enumerate(z["ids"].tolist()) if v in ids]
            if keep:
                g, m = z["glob"], z[layer]
                for i in keep:
                    out[str(z["ids"][i])] = (g[i], m[i])
    return out


def build(refs, grids, layer: str, dim: int, codec: str, windows, tmp: Path) -> Index:
    index = Index.create(tmp / f"{layer}-{dim}-{codec}", "efficientnet-lite0")
    index.manifest["regions"] = dict(region_spec(_Cfg(index), layer, dim, codec), windows=windows)
    store = store_of(index)
    rng = np.random.default_rng(0)
    sample = rng.choice(len(refs), min(1500, len(refs)), replace=False)
    store.fit(np.stack([grids[refs[i].id][1] for i in sample]).astype(np.float32))
    codes = np.concatenate(
        [
            store.encode(np.stack([grids[r.id][1] for r in refs[i : i + 256]]).astype(np.float32))
            for i in range(0, len(refs), 256)
        ]
    )
    sizes = np.asarray([(int(r.metadata["width"]), int(r.metadata["height"])) for r in refs])
    index.add(refs, np.stack([grids[r.id][0] for r in refs]), regions=(codes, sizes))
    return index


def roi_queries(index, table, grids, split: str):
    store = store_of(index)
    rows = [r for r in table if r["split"] == split]
    size = {r.id: (int(r.metadata["width"]), int(r.metadata["height"])) for r in REFS}
    qs = [
        (
            store.project(grids[r["filepath"]][1].astype(np.float32)),
            r["box"],
            size[r["filepath"]],
            grids[r["filepath"]][0],
        )
        for r in rows
    ]
    return rows, qs


def score(
    index, table, grids, split: str, weight: float, icodes, vocab, full: bool = False
) -> dict:
    store = store_of(index)
    rows, qs = roi_queries(index, table, grids, split)
    lookup = {v: i for i, v in enumerate(vocab)}
    qcodes = np.asarray([lookup.get(r["label"], -1) for r in rows])
    nb, boxes, _ = ev.region_runs(index, store, qs, 10, weight)
    tb = ev.boxes_by_row(index, table)
    out = {
        "roi": ev.precision(nb, qcodes, icodes),
        "localisation_at_k": ev.localisation(nb, boxes, qcodes, icodes, tb),
    }
    if full:
        _, wnb = knn_rows(index, np.stack([q[3] for q in qs]), 10)
        out["whole_image"] = ev.precision(wnb, qcodes, icodes)
        out["pointing_game"] = ev.pointing_game(store, qs, nb, qcodes, icodes, tb)
    return out


def main() -> int:
    global REFS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grids", type=Path, required=True)
    ap.add_argument("--layers", default="head,b14,b10")
    ap.add_argument("--weights", default="0,0.2,0.3,0.5")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--codec", default="fp16", choices=["fp16", "sq8"])
    ap.add_argument("--dataset", help="index only this dataset's train rows (the issue's probe)")
    args = ap.parse_args()
    REFS = list(iter_source(RADBENCH / "radbench.csv"))
    table = ev.read_roi_csv(RADBENCH / "radbench_roi.csv")
    train = [r for r in REFS if r.metadata["split"] == "train"]
    if args.dataset:
        train = [r for r in train if r.metadata["dataset"] == args.dataset]
    need = {r.id for r in train} | {r["filepath"] for r in table if r["split"] != "train"}
    tmp = Path(tempfile.mkdtemp())
    results, best = {}, None
    for layer in args.layers.split(","):
        grids = load_grids(args.grids, layer, need)
        missing = need - set(grids)
        if missing:
            print(
                f"grid cache lacks {len(missing)} item(s), e.g. {sorted(missing)[:2]}",
                file=sys.stderr,
            )
            return 1
        windows = [1, 2, 3] if layer != "b10" else [1, 2, 3, 4, 6]
        index = build(train, grids, layer, args.dim, args.codec, windows, tmp)
        (icodes,), vocab = encode_labels([r.metadata["label"] for r in train])
        for w, fit in itertools.product((float(x) for x in args.weights.split(",")), (False, True)):
            store_of(index).spec["fit_roi"] = fit
            t = time.perf_counter()
            s = score(index, table, grids, "val", w, icodes, vocab, full=True)
            s.pop("pointing_game")
            name = f"{layer} w={w} fit_roi={fit}"
            results[name] = s
            ok = all(s["roi"][a]["1"] >= s["whole_image"][a]["1"] for a in ("micro", "macro"))
            key = (
                ok,
                s["localisation_at_k"]["5"]
                if ok
                else s["roi"]["micro"]["1"] + s["roi"]["macro"]["1"],
            )
            print(f"val {name}: {json.dumps(s)} ({time.perf_counter() - t:.1f}s)", flush=True)
            if best is None or key > best[0]:
                best = (key, layer, w, fit)
        del grids
    _, layer, w, fit = best
    print(f"chosen on val: layer {layer}, global weight {w}, fit_roi {fit}")
    grids = load_grids(args.grids, layer, need)
    windows = [1, 2, 3] if layer != "b10" else [1, 2, 3, 4, 6]
    index = build(train, grids, layer, args.dim, args.codec, windows, tmp)
    store_of(index).spec["fit_roi"] = fit
    (icodes,), vocab = encode_labels([r.metadata["label"] for r in train])
    test = score(index, table, grids, "test", w, icodes, vocab, full=True)
    print("test:", json.dumps(test, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
