"""Study search latency on the RadBench train index, encoding excluded.

A 20-item query study (items of one RadBench test group, as vectors) is searched
against an index of RadBench's train rows (efficientnet-lite0 vectors from the tests'
cache; study = ``group_id``), next to single-image search in the same run:

- study search, every allowed study scored exactly (the default up to
  ``EXACT_LIMIT`` rows);
- study search through the candidate path (each query item's nearest rows; what
  larger indexes use);
- single-image search of one item, and of the 20 items as one batch.

Prints p50 / p95 in milliseconds (target for study search: p50 < 200 ms on 2 cores).

    OMP_NUM_THREADS=2 python benchmarks/study_search.py [--repeats 50] [--items 20]
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from radsearch.index import Index
from radsearch.io.sources import iter_source
from radsearch.search import search_vectors
from radsearch.studies import search as study_search
from radsearch.studies.identity import STUDY_COLUMN

RADBENCH = Path(__file__).resolve().parents[2] / "shared" / "radbench"
CACHE = os.environ.get("RADSEARCH_TEST_CACHE", "/work/cache/tests")


def build(tmp: Path):
    """(index of train rows with group_id as study, test refs, test vectors)."""
    with np.load(sorted(glob.glob(f"{CACHE}/radbench-*-lite0-*.npz"))[-1]) as z:
        emb, paths = z["emb"], z["filepath"].tolist()
    refs = {r.id: r for r in iter_source(RADBENCH / "radbench.csv")}
    refs = [
        replace(r, metadata={**r.metadata, STUDY_COLUMN: r.metadata["group_id"]})
        for r in (refs[p] for p in paths)
    ]
    train = [i for i, r in enumerate(refs) if r.metadata["split"] == "train"]
    index = Index.create(tmp / "index", "efficientnet-lite0")
    index.add([refs[i] for i in train], emb[train])
    index.save()
    test = [i for i, r in enumerate(refs) if r.metadata["split"] == "test"]
    return Index.open(tmp / "index"), [refs[i] for i in test], emb[test]


def query_study(refs, vecs, n_items: int) -> tuple[str, np.ndarray]:
    """The first test group with at least ``n_items`` items, cut to ``n_items``."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(refs):
        groups.setdefault(r.metadata["group_id"], []).append(i)
    name, rows = next((g, rows) for g, rows in groups.items() if len(rows) >= n_items)
    return name, vecs[rows[:n_items]]


def timed(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm caches (study table, FAISS)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--items", type=int, default=20)
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        index, refs, vecs = build(Path(tmp))
        group, q = query_study(refs, vecs, args.items)
        names = [f"item{i}" for i in range(len(q))]
        table = study_search.study_table(index)
        print(
            f"index: {index.count} train rows, {len(table)} studies; query study {group} "
            f"({len(q)} items); k={args.k}; OMP threads {os.environ.get('OMP_NUM_THREADS')}; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
        )

        def study():
            return study_search.rank_studies(index, q, args.k, names=names)

        def candidates():
            saved = study_search.EXACT_LIMIT
            study_search.EXACT_LIMIT = 0
            try:
                return study_search.rank_studies(index, q, args.k, names=names)
            finally:
                study_search.EXACT_LIMIT = saved

        runs = {
            "study search (exact, default)": study,
            "study search (candidate path)": candidates,
            "single-image search, 1 item": lambda: search_vectors(index, q[:1], args.k),
            f"single-image search, {len(q)} items": lambda: search_vectors(index, q, args.k),
        }
        print(f"{'what':<36} {'p50 ms':>8} {'p95 ms':>8}")
        for name, fn in runs.items():
            p50, p95 = timed(fn, args.repeats)
            print(f"{name:<36} {p50:8.1f} {p95:8.1f}")
        top = study()
        print(
            f"top study: {top.studies[0].study_id} (score {top.studies[0].score:.4f}; "
            f"query group {group})"
        )


if __name__ == "__main__":
    main()
