"""Query latency with and without retrieval recipes on the RadBench train index.

Vectors come from an ``.npz`` (arrays ``emb`` and ``filepath``, e.g. the test suite's
cached EfficientNet-Lite0 embeddings of RadBench or ``recipe_radbench.py export``);
the index is the ``train`` rows, the queries ``test`` rows, one query at a time
through ``radsearch.search.knn_rows`` (the path search/serve/evaluate share).
Encoding the query image is not timed (flip TTA doubles that part: a second forward
pass). Prints median and p95 milliseconds per query and the one-off fit/build time.

    python benchmarks/recipe_latency.py EMB.npz [--recipe best.json] [--queries 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RADBENCH = REPO.parent / "shared" / "radbench"

STANDARD = {
    "plain": None,
    "whiten": {"whiten": {}},
    "whiten+dba": {"whiten": {}, "dba": {"k": 3}},
    "whiten+qe": {"whiten": {}, "qe": {"k": 3}},
    "whiten+rerank": {"whiten": {}, "rerank": {}},
    "cluster": {"cluster": {"n": 8}},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("npz", nargs="?", help="embeddings .npz (default: the test cache's Lite0 file)")
    ap.add_argument("--recipe", action="append", default=[], help="recipe JSON file(s) to time too")
    ap.add_argument("--queries", type=int, default=300, help="test queries timed, one at a time")
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args(argv)

    import pandas as pd

    from radsearch.evaluate.analyses import scratch_index
    from radsearch.recipe import Recipe, load_recipe
    from radsearch.search import knn_rows

    npz = args.npz or next(
        iter(sorted((REPO / ".cache" / "tests").glob("radbench-*-lite0-*.npz"))), None
    )
    if not npz or not (RADBENCH / "radbench.csv").exists():
        print("need RadBench and an embeddings .npz (see --help)", file=sys.stderr)
        return 2
    with np.load(npz) as z:
        emb, paths = z["emb"].astype(np.float32), z["filepath"].tolist()
    split = (
        pd.read_csv(RADBENCH / "radbench.csv").set_index("filepath").loc[paths, "split"].to_numpy()
    )
    train, test = emb[split == "train"], emb[split == "test"][: args.queries]
    recipes = dict(STANDARD)
    for f in args.recipe:
        recipes[Path(f).stem] = load_recipe(f).settings()["steps"]
    print(
        f"index: {len(train)} train rows, dim {emb.shape[1]}; {len(test)} test queries, k={args.k}, one at a time"
    )
    print(f"{'recipe':<16} {'fit+build s':>11} {'median ms':>10} {'p95 ms':>8}  steps")
    index = scratch_index(train)
    rows = []
    for name, steps in recipes.items():
        recipe = Recipe(steps) if steps else None
        t0 = time.perf_counter()
        index.set_recipe(recipe)
        if recipe is not None:
            recipe.db_matrix(index)  # what the first re-ranked query would build
        build = time.perf_counter() - t0
        knn_rows(index, test[:1], args.k)  # warm-up
        times = []
        for q in test:
            t = time.perf_counter()
            knn_rows(index, q[None], args.k)
            times.append((time.perf_counter() - t) * 1000)
        med, p95 = float(np.median(times)), float(np.percentile(times, 95))
        rows.append(
            {
                "recipe": name,
                "fit_build_s": round(build, 2),
                "median_ms": round(med, 2),
                "p95_ms": round(p95, 2),
            }
        )
        print(f"{name:<16} {build:>11.2f} {med:>10.2f} {p95:>8.2f}  {json.dumps(steps)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
