"""Region store: bytes per item, region-query latency, and a 1.6M-item compressed store.

Prints (1) storage per item of the default setting (14x14 block-10 grid, PCA 64, int8)
and of the compressed one for large archives (7x7 head, PCA 48, int8 ``sq8``); (2) the
p50/p95 of the vector part of a region query on an index of RadBench's train size
(6,859 items, real Lite0 grids from the grid cache when given, else random codes of the
same shape): the full scan (best window of every item -> top 10) and the default
shortlisted query (whole-image top ``SHORTLIST`` from a flat index, windows on those
only), next to a whole-image flat search of the same index as the baseline; (3) a
synthetic 1.6M-item store in the compressed setting: file size on disk, resident
memory of a memory-mapped scan, and the region part of a shortlisted query on it.

    python benchmarks/regions.py [--grids /work/cache/regions/radbench-lite0] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from radsearch.regions.features import Codec, RegionStore
from radsearch.regions.query import SHORTLIST, best_windows, window_norms

TRAIN_SIZE = 6859
PAPER_SIZE = 1_600_000


# (name, layer, grid shape, PCA dim, codec): the default, and two head-map settings
SETTINGS = [
    ("default", "b10", (14, 14, 112), 64, "sq8"),
    ("head fp16", "head", (7, 7, 1280), 128, "fp16"),
    ("compressed", "head", (7, 7, 1280), 48, "sq8"),
]


def make_store(n: int, setting, grids: np.ndarray | None, rng) -> RegionStore:
    _, layer, shape, dim, codec = setting
    spec = {
        "layer": layer,
        "dim": dim,
        "codec": codec,
        "input_size": 224,
        "resize": "squash",
        "grid": list(shape[:2]),
        "channels": shape[2],
        "windows": [1, 2, 3, 4, 6] if shape[0] > 7 else [1, 2, 3],
        "fit_roi": True,
        "contrast": True,
    }

    def batch(i, m):
        if grids is not None:
            return np.asarray(grids[i : i + m], np.float32)
        return rng.standard_normal((m, *shape), np.float32)

    store = RegionStore(spec, None, np.zeros((0,)), np.zeros((0, 2), np.int32))
    store.fit(batch(0, 256))
    codes = [store.encode(batch(i, min(512, n - i))) for i in range(0, n, 512)]
    store.append_codes(np.concatenate(codes)[:n], np.full((n, 2), 256, np.int32))
    return store


def _ms(v) -> dict:
    return {
        "p50_ms": round(1000 * float(np.median(v)), 2),
        "p95_ms": round(1000 * float(np.percentile(v, 95)), 2),
    }


def latency(store: RegionStore, emb: np.ndarray, reps: int, rng) -> dict:
    """p50/p95 of the full scan, of the shortlisted query (whole-image top ``SHORTLIST``
    from the flat index, then windows on those), and of the whole-image search alone."""
    import faiss

    window_norms(store)  # built once per process (as in the server)
    store.cells()
    flat = faiss.IndexFlatIP(emb.shape[1])
    flat.add(emb)
    limit = (2, 2) if store.grid[0] > 7 else None
    full, short, base = [], [], []
    for i in range(reps):
        q = rng.standard_normal(store.codec.dim).astype(np.float32)
        q /= np.linalg.norm(q)
        g = emb[i % len(emb)][None]
        t = time.perf_counter()
        score, _, _ = best_windows(store, q, None, limit)
        np.argpartition(-score, 10)[:10]
        full.append(time.perf_counter() - t)
        t = time.perf_counter()
        gs, rows = flat.search(g, SHORTLIST)
        score, _, _ = best_windows(store, q, rows[0], limit)
        score = 0.7 * score + 0.3 * gs[0]
        np.argpartition(-score, 10)[:10]
        short.append(time.perf_counter() - t)
        t = time.perf_counter()
        flat.search(g, 10)
        base.append(time.perf_counter() - t)
    return {"full_scan": _ms(full), f"shortlist_{SHORTLIST}": _ms(short), "whole_image": _ms(base)}


def _paper_shortlisted(codes: np.ndarray, q: np.ndarray, rng, reps: int = 20) -> dict:
    """The region part of a shortlisted query on the memory-mapped 1.6M store: decode
    ``SHORTLIST`` random rows and score their 1-3 cell windows (the whole-image
    shortlist itself comes from the ANN index, measured by its own benchmark)."""
    d = codes.shape[-1]
    spec = {"grid": [7, 7], "windows": [1, 2, 3], "codec": "sq8", "fit_roi": True}
    codec = Codec(np.zeros(d), np.eye(d), np.zeros(d, np.float32), np.ones(d, np.float32), "sq8")
    store = RegionStore(spec, codec, codes, np.full((len(codes), 2), 256, np.int32))
    times = []
    for _ in range(reps):
        rows = rng.choice(len(codes), SHORTLIST, replace=False)
        t = time.perf_counter()
        best_windows(store, q / np.linalg.norm(q), rows, (2, 2))
        times.append(time.perf_counter() - t)
    return _ms(times)


def paper_scale(tmp: Path, rng) -> dict:
    """1.6M items x 7x7x48 int8 written in chunks, then scanned memory-mapped."""
    path = tmp / "regions.npy"
    shape = (PAPER_SIZE, 7, 7, 48)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    block = rng.integers(0, 256, (100_000, 7, 7, 48), np.uint8)  # one block, written 16x
    for i in range(0, PAPER_SIZE, 100_000):
        mm[i : i + 100_000] = block[: min(100_000, PAPER_SIZE - i)]
    mm.flush()
    del mm
    codes = np.load(path, mmap_mode="r")
    q = rng.standard_normal(48).astype(np.float32)
    shortlisted = _paper_shortlisted(codes, q, rng)
    t = time.perf_counter()
    best = np.empty(PAPER_SIZE, np.float32)
    for i in range(0, PAPER_SIZE, 50_000):  # chunked scan: memory stays at one chunk
        best[i : i + 50_000] = (
            (codes[i : i + 50_000].astype(np.float32) @ q).reshape(-1, 49).max(axis=1)
        )
    scan = time.perf_counter() - t
    status = dict(
        line.split(":", 1)
        for line in Path("/proc/self/status").read_text().splitlines()
        if ":" in line
    )
    anon = (
        int(status["RssAnon"].split()[0]) / 1024
    )  # process memory; RssFile = reclaimable page cache
    mapped = int(status["RssFile"].split()[0]) / 1024
    return {
        "items": PAPER_SIZE,
        "bytes_per_item": int(np.prod(shape[1:])) + 8,
        "disk_gb": round((os.path.getsize(path) + PAPER_SIZE * 8) / 1e9, 3),
        "scan_seconds_1_cell_windows": round(scan, 2),
        f"shortlisted_query_{SHORTLIST}": shortlisted,
        "anon_rss_mb_after_scan": round(anon),
        "mapped_file_rss_mb": round(mapped),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grids", type=Path, help="grid cache (chunk-*.npz with 'head' and 'glob')")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--no-paper-scale", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((TRAIN_SIZE, 1280)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    for setting in SETTINGS:
        grids = None
        if args.grids:
            grids = np.concatenate(
                [
                    np.load(f)[setting[1]]
                    for f in sorted(args.grids.glob("chunk-*.npz"))[: TRAIN_SIZE // 256 + 1]
                ]
            )[:TRAIN_SIZE]
        store = make_store(TRAIN_SIZE, setting, grids, rng)
        times = latency(store, emb, args.reps, rng)
        b = store.nbytes_per_item()
        print(
            f"regions {setting[0]} ({setting[1]} {store.grid[0]}x{store.grid[1]}, PCA {setting[3]}, {setting[4]}): "
            f"{b} bytes/item ({b / 1024:.2f} KiB; budget 16 KiB); region query vector part on "
            f"{TRAIN_SIZE} items (target p50 < 50 ms): {times} "
            f"({'RadBench Lite0 grids' if args.grids else 'random codes'})",
            flush=True,
        )
    if not args.no_paper_scale:
        with tempfile.TemporaryDirectory() as tmp:
            print(
                f"paper scale, compressed (sq8, PCA 48): {paper_scale(Path(tmp), rng)} (target < 4 GB)"
            )


if __name__ == "__main__":
    main()
