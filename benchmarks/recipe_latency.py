"""Query latency with and without retrieval recipes on the RadBench train index.

Vectors come from an ``.npz`` (arrays ``emb`` and ``filepath``, e.g. the test suite's
cached EfficientNet-Lite0 embeddings of RadBench or ``recipe_radbench.py export``);
the index is the ``train`` rows, the queries ``test`` rows, one query at a time
through ``radsearch.search.knn_rows`` (the path search/serve/evaluate share).
Encoding the query image is not timed (flip TTA doubles that part: a second forward
pass). Prints median and p95 milliseconds per query and the one-off fit/build time.

``--model NAME`` takes the vectors of a registered name (a recommended one such as
``radsearch-default`` brings its shipped recipe; a fusion is built from its members'
cached vectors, ``benchmarks/radbench_vectors.py``) and also times the whole query
(read the file + embed it with that model, one image at a time, as ``radsearch search``
does) next to plain ``efficientnet-lite0`` in the same run.

    python benchmarks/recipe_latency.py EMB.npz [--recipe best.json] [--queries 300]
    python benchmarks/recipe_latency.py --model radsearch-default [--encode-queries 40]
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
    ap.add_argument("--model", help="a registered name: its cached vectors and shipped recipe")
    ap.add_argument("--encode-queries", type=int, default=40, help="images timed end to end")
    args = ap.parse_args(argv)
    if args.model:
        return model_latency(args)

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


def time_queries(index, queries, k: int) -> tuple[float, float]:
    """Median and p95 ms of one-at-a-time ``knn_rows`` (after one warm-up)."""
    from radsearch.search import knn_rows

    knn_rows(index, queries[:1], k)
    times = []
    for q in queries:
        t = time.perf_counter()
        knn_rows(index, q[None], k)
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times)), float(np.percentile(times, 95))


def time_encoding(model: str, files: list[Path], steps: dict | None) -> tuple[float, float]:
    """Median and p95 ms to read one query file and embed it (flip TTA if the recipe
    has it), through the product's query path."""
    from radsearch.encoders.registry import create_encoder
    from radsearch.io.items import read_image
    from radsearch.recipe import Recipe

    encoder = create_encoder(model)
    recipe = Recipe(steps) if steps else None
    encode = recipe.encode_queries if recipe is not None else (lambda e, ims: e.encode_images(ims))
    encode(encoder, [read_image(files[0])])
    times = []
    for f in files:
        t = time.perf_counter()
        encode(encoder, [read_image(f)])
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times)), float(np.percentile(times, 95))


def model_latency(args) -> int:
    """``--model``: vector part and whole query of ``args.model`` vs plain Lite0."""
    from radbench_vectors import load_table, load_vectors

    from radsearch.encoders.recommended import shipped
    from radsearch.evaluate.analyses import scratch_index
    from radsearch.recipe import Recipe

    spec = shipped().get(args.model)
    encoder = spec["encoder"] if spec else args.model
    steps = (spec or {}).get("steps") or {}
    table = load_table()
    fusion = [encoder.removeprefix("fusion:")] if encoder.startswith("fusion:") else []
    vectors = load_vectors(table, fusions=fusion)
    split = table["split"].astype(str)
    test_files = [RADBENCH / p for p in table["filepath"][split == "test"][: args.encode_queries]]
    print(
        f"{args.model}: encoder {encoder}, recipe {Recipe(steps).describe() if steps else 'none'}"
    )
    print(
        f"{'configuration':<28} {'dim':>5} {'vector median ms':>17} {'p95':>6} "
        f"{'whole query median ms':>22} {'p95':>6}"
    )
    for name, enc, st in (
        ("efficientnet-lite0", "efficientnet-lite0", {}),
        (args.model, encoder, steps),
    ):
        x = vectors[enc]
        index = scratch_index(x[split == "train"])
        index.set_recipe(Recipe(st) if st else None)
        vmed, vp95 = time_queries(index, x[split == "test"][: args.queries], args.k)
        emed, ep95 = time_encoding(name, test_files, st)
        print(f"{name:<28} {x.shape[1]:>5} {vmed:>17.2f} {vp95:>6.2f} {emed:>22.1f} {ep95:>6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
