"""Single-query search latency on a RadBench index (efficientnet-lite0, train rows).

Prints p50/p95 of (a) the vector search alone and (b) a whole image query as a user
sees it: read the file, preprocess, encode, search, build hits + suggestion.

    python benchmarks/search_latency.py [--index DIR] [--queries 200]

Without --index it builds one in a temp dir from the cached RadBench embeddings that
the test suite writes (.cache/tests/radbench-*-lite0-*.npz), or embeds RadBench.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def percentiles(ms: list[float]) -> str:
    a = np.asarray(ms)
    return f"p50 {np.percentile(a, 50):7.2f} ms   p95 {np.percentile(a, 95):7.2f} ms   mean {a.mean():7.2f} ms"


def radbench_index(tmp: Path):
    from conftest import CACHE, RADBENCH
    from radsearch.index import Index
    from radsearch.io.sources import iter_source

    refs = {r.id: r for r in iter_source(RADBENCH / "radbench.csv")}
    npz = sorted(CACHE.glob("radbench-*-lite0-*.npz"))
    if npz:
        with np.load(npz[-1]) as z:
            emb, ids = z["emb"], z["filepath"].tolist()
    else:
        from radsearch.embed import embed_refs
        from radsearch.encoders import create_encoder

        res = embed_refs(list(refs.values()), create_encoder("efficientnet-lite0"), tmp / "work")
        emb, ids = res.vectors, [r.id for r in res.refs]
    rows = [i for i, x in enumerate(ids) if refs[x].metadata["split"] == "train"]
    index = Index.create(tmp / "index", "efficientnet-lite0")
    index.add([refs[ids[i]] for i in rows], emb[rows])
    index.save()
    queries = [refs[x] for x in ids if refs[x].metadata["split"] == "test"]
    qvecs = np.stack([emb[i] for i, x in enumerate(ids) if refs[x].metadata["split"] == "test"])
    return Index.open(tmp / "index"), queries, qvecs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", help="existing index dir (queries: its own items)")
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    from radsearch.index import Index
    from radsearch.search import search_vectors

    with tempfile.TemporaryDirectory() as tmp:
        if args.index:
            index = Index.open(args.index)
            rows = np.arange(min(args.queries, index.count))
            qvecs = np.asarray(index.embeddings)[rows]
            sources = [r["source"] for r in index.rows(rows)]
        else:
            index, queries, qvecs = radbench_index(Path(tmp))
            sources = [q.source for q in queries]
        n = min(args.queries, len(qvecs))
        print(f"index: {index.count} vectors x {index.dim}, store {index.manifest['store']}")
        search_vectors(index, qvecs[:5], k=10)  # warm up
        vec_ms = []
        for i in range(n):
            t = time.perf_counter()
            search_vectors(index, qvecs[i : i + 1], k=10)
            vec_ms.append(1e3 * (time.perf_counter() - t))
        print(f"vector search, k=10, one query at a time:   {percentiles(vec_ms)}")
        index.search(sources[:2], k=10)  # loads the encoder
        img_ms = []
        for src in sources[: min(n, 100)]:
            t = time.perf_counter()
            index.search([src], k=10)
            img_ms.append(1e3 * (time.perf_counter() - t))
        print(f"image query (read+encode+search), k=10:    {percentiles(img_ms)}")


if __name__ == "__main__":
    main()
