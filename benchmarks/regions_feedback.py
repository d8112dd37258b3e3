"""Rocchio weights for relevance feedback, chosen on RadBench val, scored on test.

Uses the cached whole-image Lite0 embedding (``--embeddings``: ``.npz`` with ``emb``
and ``filepath``, the layout ``evaluate`` reads). Simulated feedback: the top 10 are
marked by their labels, for 0, 1 and 2 rounds; P@10 (modified protocol) micro/macro.

    python benchmarks/regions_feedback.py --embeddings /work/cache/tests/radbench-*.npz
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from radsearch.evaluate.analyses import scratch_index
from radsearch.evaluate.protocol import encode_labels
from radsearch.io.sources import iter_source
from radsearch.regions.evaluate import feedback_precision

RADBENCH = Path(__file__).resolve().parents[2] / "shared" / "radbench"
GRID = [(1.0, b, g) for b in (0.5, 0.8, 1.0, 1.5) for g in (0.0, 0.3, 0.6)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--embeddings", type=Path, required=True)
    args = ap.parse_args()
    refs = {r.id: r for r in iter_source(RADBENCH / "radbench.csv")}
    with np.load(args.embeddings) as z:
        emb, ids = z["emb"], z["filepath"].tolist()
    split = {
        s: [i for i, p in enumerate(ids) if refs[p].metadata["split"] == s]
        for s in ("train", "val", "test")
    }
    train = split["train"]
    index = scratch_index(emb[train], [refs[ids[i]] for i in train], "efficientnet-lite0")
    label = [refs[p].metadata["label"] for p in ids]

    def run(s, a, b, g):
        (q, i), _ = encode_labels([label[j] for j in split[s]], [label[j] for j in train])
        return feedback_precision(index, emb[split[s]], q, i, alpha=a, beta=b, gamma=g)

    best = None
    for a, b, g in GRID:
        r = run("val", a, b, g)
        gain = r["micro"]["1"] - r["micro"]["0"]
        print(f"val alpha={a} beta={b} gamma={g}: {json.dumps(r)}")
        if best is None or gain > best[0]:
            best = (gain, a, b, g)
    _, a, b, g = best
    print(f"chosen on val: alpha={a} beta={b} gamma={g}")
    print(f"test: {json.dumps(run('test', a, b, g))}")


if __name__ == "__main__":
    main()
